//! `GET /feeds/{user}/stream`: a feed's changes as Server-Sent Events, from the feed's
//! live stream in Redis (`feedstream_read::live`), so every API instance serves every
//! listener. Each listener has a task that reads the stream and sends events into a
//! small channel; a client that does not take an event within [`SLOW_CLIENT_TIMEOUT`]
//! is dropped (it resumes with `Last-Event-ID`), so a slow client never holds memory.
//!
//! Events: `ready` (the listener's starting point), `added` (a post, as feed pages give
//! it), `removed` (`{"id"}`), `reset` (changes were lost: read the feed again; the
//! stream goes on from here), and a comment every heartbeat.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use feedstream_core::ids::UserId;
use feedstream_read::live::{LiveChange, LiveFeed, LiveRead, Opening};
use feedstream_read::FeedReader;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use warp::sse::Event;
use warp::Reply;

use crate::metrics::{ApiMetrics, ReasonLabel};

/// How long an event may wait for a client to take it before the client is dropped.
pub const SLOW_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Events a listener's task sends ahead of its client.
const BUFFERED_EVENTS: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct LiveSettings {
    /// Listeners this instance serves at once.
    pub max_connections: usize,
    /// Listeners of one user this instance serves at once.
    pub max_per_user: usize,
    /// The longest silence on a stream: a comment is sent then.
    pub heartbeat: Duration,
}

/// Why a listener was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The user has `max_per_user` listeners already.
    PerUser,
    /// The instance has `max_connections` listeners.
    Full,
}

/// The listeners of this instance and their bounds.
#[derive(Clone)]
pub struct LiveStreams {
    settings: LiveSettings,
    total: Arc<Semaphore>,
    per_user: Arc<Mutex<HashMap<UserId, usize>>>,
    shutdown: watch::Receiver<bool>,
}

/// A listener's place within the bounds, given back when it ends.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    user: UserId,
    per_user: Arc<Mutex<HashMap<UserId, usize>>>,
    metrics: ApiMetrics,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Ok(mut per_user) = self.per_user.lock() {
            if let Some(count) = per_user.get_mut(&self.user) {
                *count -= 1;
                if *count == 0 {
                    per_user.remove(&self.user);
                }
            }
        }
        self.metrics.sse_connections.dec();
    }
}

impl LiveStreams {
    /// Listeners end when `shutdown` turns true, so a graceful shutdown is not held up.
    pub fn new(settings: LiveSettings, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            settings,
            total: Arc::new(Semaphore::new(settings.max_connections)),
            per_user: Arc::new(Mutex::new(HashMap::new())),
            shutdown,
        }
    }

    pub fn settings(&self) -> LiveSettings {
        self.settings
    }

    /// A place for one more listener of `user`, within both bounds.
    pub fn admit(&self, user: UserId, metrics: &ApiMetrics) -> Result<Admission, Refusal> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Full)?;
        let mut per_user = self.per_user.lock().map_err(|_| Refusal::Full)?;
        let count = per_user.entry(user).or_default();
        if *count >= self.settings.max_per_user {
            return Err(Refusal::PerUser);
        }
        *count += 1;
        metrics.sse_connections.inc();
        Ok(Admission {
            _permit: permit,
            user,
            per_user: self.per_user.clone(),
            metrics: metrics.clone(),
        })
    }

    /// Starts the task that feeds one listener; the answer streams its events, and
    /// ends when the task does.
    pub fn listen(
        &self,
        feed: LiveFeed,
        opening: Opening,
        reader: FeedReader,
        admission: Admission,
    ) -> warp::reply::Response {
        let (events, received) = mpsc::channel(BUFFERED_EVENTS);
        let listener = Listener {
            feed,
            reader,
            events,
            metrics: admission.metrics.clone(),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(async move {
            let _admission = admission;
            listener.run(opening).await;
        });
        let events = tokio_stream::StreamExt::map(ReceiverStream::new(received), |event| {
            Ok::<_, Infallible>(event)
        });
        warp::sse::reply(events).into_response()
    }
}

/// A listener's task stops: its client went or was too slow, the stream could not be
/// read, or the instance shuts down.
struct Stop;

struct Listener {
    feed: LiveFeed,
    reader: FeedReader,
    events: mpsc::Sender<Event>,
    metrics: ApiMetrics,
    shutdown: watch::Receiver<bool>,
}

impl Listener {
    async fn run(mut self, opening: Opening) {
        let first = match opening {
            Opening::Fresh | Opening::Resumed => Event::default()
                .event("ready")
                .id(self.feed.position())
                .data(format!(
                    "{{\"resumed\":{}}}",
                    matches!(opening, Opening::Resumed)
                )),
            Opening::Gap => Event::default()
                .event("reset")
                .id(self.feed.position())
                .data(r#"{"reason":"the changes after Last-Event-ID are no longer kept: read the feed again"}"#),
        };
        if self.send(first).await.is_err() {
            return;
        }
        while self.step().await.is_ok() {}
    }

    async fn step(&mut self) -> Result<(), Stop> {
        let read = tokio::select! {
            read = self.feed.read() => read,
            _ = self.shutdown.changed() => return Err(Stop),
        };
        match read {
            Ok(LiveRead::Idle) => self.send(Event::default().comment("heartbeat")).await,
            // The client comes back with its Last-Event-ID and gets a reset then.
            Ok(LiveRead::Gap) => {
                self.dropped("behind");
                Err(Stop)
            }
            Ok(LiveRead::Changes(changes)) => self.send_changes(changes).await,
            Err(error) => {
                tracing::warn!(%error, "a live feed could not be read; its client resumes with Last-Event-ID");
                Err(Stop)
            }
        }
    }

    async fn send_changes(&mut self, changes: Vec<(String, LiveChange)>) -> Result<(), Stop> {
        let added: Vec<i64> = changes
            .iter()
            .filter_map(|(_, change)| match change {
                LiveChange::Added(post_id) => Some(*post_id),
                LiveChange::Removed(_) => None,
            })
            .collect();
        let posts = match self.reader.posts(&added).await {
            Ok(posts) => posts,
            Err(error) => {
                tracing::warn!(%error, "posts of a live feed could not be read; its client resumes with Last-Event-ID");
                return Err(Stop);
            }
        };
        let mut posts: HashMap<i64, _> = posts
            .into_iter()
            .map(|post| (post.id.as_i64(), post))
            .collect();
        for (id, change) in changes {
            let event = match change {
                // A post deleted meanwhile is left out; its removal follows.
                LiveChange::Added(post_id) => match posts.remove(&post_id) {
                    Some(post) => Event::default().event("added").json_data(post),
                    None => continue,
                },
                LiveChange::Removed(post_id) => Event::default()
                    .event("removed")
                    .json_data(serde_json::json!({ "id": post_id.to_string() })),
            };
            match event {
                Ok(event) => self.send(event.id(id)).await?,
                Err(error) => tracing::warn!(%error, "a live feed event could not be encoded"),
            }
        }
        Ok(())
    }

    fn dropped(&self, reason: &'static str) {
        self.metrics
            .sse_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    async fn send(&self, event: Event) -> Result<(), Stop> {
        match self.events.send_timeout(event, SLOW_CLIENT_TIMEOUT).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                self.dropped("slow");
                Err(Stop)
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Stop),
        }
    }
}
