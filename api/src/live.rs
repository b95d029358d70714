//! `GET /feeds/{user}/stream`: a feed's changes as Server-Sent Events, from the feed's
//! live stream in Redis (`feedstream_read::live`), so every API instance serves every
//! listener. Each listener has a task that reads the stream and sends events into a
//! small channel; a client that does not take an event within [`SLOW_CLIENT_TIMEOUT`]
//! is dropped (it resumes with `Last-Event-ID`), so a slow client never holds memory.
//!
//! Events: `ready` (the listener's starting point), `added` (a post, as feed pages give
//! it), `removed` (`{"id"}`), `reset` (changes were lost, or the followed authors whose
//! posts are merged on read changed: read the feed again; the stream goes on from
//! here), and a comment every heartbeat.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use feedstream_core::ids::UserId;
use feedstream_read::live::{LiveChange, LiveFeed, LiveOptions, LiveRead, Opening};
use feedstream_read::FeedReader;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
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
    /// Listeners of one user served at once, over every instance.
    pub max_per_user: usize,
    /// The longest silence on a stream: a comment is sent then.
    pub heartbeat: Duration,
    /// How often a listener looks for newly followed (or unfollowed) authors whose
    /// posts are merged on read.
    pub follows_refresh: Duration,
}

/// The listeners of this instance and its bound on them; the bound per user is kept
/// in Redis, by `feedstream_read::live`.
#[derive(Clone)]
pub struct LiveStreams {
    settings: LiveSettings,
    total: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

/// A listener's place on this instance, given back when it ends.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    metrics: ApiMetrics,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.metrics.sse_connections.dec();
    }
}

impl LiveStreams {
    /// Listeners end when `shutdown` turns true, so a graceful shutdown is not held up.
    pub fn new(settings: LiveSettings, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            settings,
            total: Arc::new(Semaphore::new(settings.max_connections)),
            shutdown,
        }
    }

    pub fn settings(&self) -> LiveSettings {
        self.settings
    }

    /// How a listener of a feed opens, resuming after `resume` if given.
    pub fn options(&self, resume: Option<String>) -> LiveOptions {
        LiveOptions {
            resume,
            wait: self.settings.heartbeat,
            max_per_user: self.settings.max_per_user,
            follows_refresh: self.settings.follows_refresh,
        }
    }

    /// A place for one more listener on this instance, if it has one.
    pub fn admit(&self, metrics: &ApiMetrics) -> Option<Admission> {
        let permit = self.total.clone().try_acquire_owned().ok()?;
        metrics.sse_connections.inc();
        Some(Admission {
            _permit: permit,
            metrics: metrics.clone(),
        })
    }

    /// Starts the task that feeds one listener of `owner`'s feed; the answer streams its
    /// events, and ends when the task does.
    pub fn listen(
        &self,
        owner: UserId,
        feed: Box<LiveFeed>,
        opening: Opening,
        reader: FeedReader,
        admission: Admission,
    ) -> warp::reply::Response {
        let (events, received) = mpsc::channel(BUFFERED_EVENTS);
        let listener = Listener {
            owner,
            feed,
            reader,
            events,
            metrics: admission.metrics.clone(),
            shutdown: self.shutdown.clone(),
            follows_refresh: self.settings.follows_refresh,
            next_refresh: Instant::now() + self.settings.follows_refresh,
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
    owner: UserId,
    feed: Box<LiveFeed>,
    reader: FeedReader,
    events: mpsc::Sender<Event>,
    metrics: ApiMetrics,
    shutdown: watch::Receiver<bool>,
    follows_refresh: Duration,
    next_refresh: Instant,
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
        if self.send(first).await.is_ok() {
            while self.step().await.is_ok() {}
        }
        self.feed.close().await;
    }

    async fn step(&mut self) -> Result<(), Stop> {
        if Instant::now() >= self.next_refresh {
            self.refresh().await?;
        }
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

    /// Follows the owner's current authors of merged posts; a change is a reset, since
    /// the listener missed a newly followed author's posts before now, or still shows an
    /// unfollowed one's.
    async fn refresh(&mut self) -> Result<(), Stop> {
        self.next_refresh = Instant::now() + self.follows_refresh;
        match self
            .reader
            .follow_live_authors(self.owner, &mut self.feed)
            .await
        {
            Ok(false) => Ok(()),
            Ok(true) => {
                let reset = Event::default()
                    .event("reset")
                    .id(self.feed.position())
                    .data(r#"{"reason":"the followed authors whose posts are merged on read changed: read the feed again"}"#);
                self.send(reset).await
            }
            Err(error) => {
                tracing::warn!(%error, "a live feed's follows could not be read; its client resumes with Last-Event-ID");
                Err(Stop)
            }
        }
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
