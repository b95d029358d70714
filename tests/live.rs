//! Live feeds over Server-Sent Events, end to end with a real client on the whole
//! pipeline: a listener on one API instance gets the posts and deletions written through
//! another, those of followed celebrities (merged on read) too, heartbeats when nothing
//! happens, resumes after `Last-Event-ID` without a gap, gets `reset` when what it
//! missed is gone, and the bounds, per user over every instance and per instance, refuse
//! one listener too many.

mod common;

use std::time::Duration;

use anyhow::{bail, Context};
use common::{Client, Deployment, Engines};
use feedstream_core::ids::PostId;
use feedstream_harness::{eventually, token};
use reqwest::StatusCode;

const DEADLINE: Duration = Duration::from_secs(60);

/// One server-sent event, or a comment.
#[derive(Debug, Default, Clone)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
    comment: bool,
}

/// A text/event-stream client, as a browser's EventSource parses it.
struct Listener {
    response: reqwest::Response,
    buffer: String,
}

impl Listener {
    async fn open(base: &str, user: u64, last_event_id: Option<&str>) -> anyhow::Result<Self> {
        let response = Self::request(base, user, user, last_event_id).await?;
        if response.status() != StatusCode::OK {
            bail!("GET /feeds/{user}/stream: {}", response.status());
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Ok(Self {
            response,
            buffer: String::new(),
        })
    }

    async fn request(
        base: &str,
        caller: u64,
        user: u64,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = reqwest::Client::new()
            .get(format!("{base}/feeds/{user}/stream"))
            .bearer_auth(token(caller)?);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        Ok(request.send().await?)
    }

    /// The next event or comment, within the deadline.
    async fn next(&mut self) -> anyhow::Result<SseEvent> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    return Ok(parse(&block));
                }
                let chunk = self.response.chunk().await?.context("the stream ended")?;
                self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .context("no event within the deadline")?
    }

    /// The next event named `name`, skipping others and comments.
    async fn next_named(&mut self, name: &str) -> anyhow::Result<SseEvent> {
        loop {
            let event = self.next().await?;
            if !event.comment && event.event == name {
                return Ok(event);
            }
        }
    }

    /// The first `added` (or `removed`) event of `post_id`.
    async fn change_of(&mut self, name: &str, post_id: PostId) -> anyhow::Result<SseEvent> {
        loop {
            let event = self.next_named(name).await?;
            let data: serde_json::Value = serde_json::from_str(&event.data)?;
            if data["id"] == post_id.to_string() {
                return Ok(event);
            }
        }
    }
}

fn parse(block: &str) -> SseEvent {
    let mut event = SseEvent::default();
    for line in block.lines() {
        if line.starts_with(':') {
            event.comment = true;
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event.event = value.to_string(),
            "id" => event.id = Some(value.to_string()),
            "data" => {
                if !event.data.is_empty() {
                    event.data.push('\n');
                }
                event.data.push_str(value);
            }
            _ => {}
        }
    }
    event
}

/// Closes `listener`, has `author` post while it is away, and reopens it on `base`
/// with `last_seen` as its Last-Event-ID: it must resume there and get the missed post.
async fn resume_after_a_missed_post(
    listener: Listener,
    client: &mut Client,
    base: &str,
    owner: u64,
    author: u64,
    last_seen: &str,
) -> anyhow::Result<Listener> {
    drop(listener);
    let missed = client.post(author, "while away").await?;
    eventually(DEADLINE, "the post reaches the owner's feed", || async {
        Ok(client.feed(owner).await?.contains(&missed))
    })
    .await?;
    let mut listener = Listener::open(base, owner, Some(last_seen)).await?;
    let ready = listener.next_named("ready").await?;
    assert_eq!(ready.data, r#"{"resumed":true}"#);
    assert_eq!(ready.id.as_deref(), Some(last_seen));
    listener.change_of("added", missed).await?;
    Ok(listener)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_feed_streams_changes_across_instances_and_resumes_without_a_gap(
) -> anyhow::Result<()> {
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    deployment.create_topics(1).await?;
    let (_writer, writes) = deployment.spawn_api(&["--node-id", "1"]).await?;
    let (_reader, reads) = deployment
        .spawn_api(&["--node-id", "2", "--sse-heartbeat-ms", "300"])
        .await?;
    let _processor = deployment.spawn_processor("processor")?;
    let _sink = deployment.spawn(&["sink"])?;
    let mut client = Client::new(writes.clone());
    client.follow(2, 1).await?;

    // A listener of user 2 on the other instance gets 1's post, and its deletion.
    let mut listener = Listener::open(&reads, 2, None).await?;
    let ready = listener.next_named("ready").await?;
    assert_eq!(ready.data, r#"{"resumed":false}"#);
    assert!(ready.id.is_some(), "{ready:?}");
    let post = client.post(1, "live").await?;
    let added = listener.change_of("added", post).await?;
    let body: serde_json::Value = serde_json::from_str(&added.data)?;
    assert_eq!(
        (body["author_id"].as_str(), body["content"].as_str()),
        (Some("1"), Some("live")),
        "{body}"
    );
    assert!(body["created_at"].is_string(), "{body}");
    client.delete_post(1, post, DEADLINE).await?;
    let removed = listener.change_of("removed", post).await?;
    let last_seen = removed.id.context("a removal has an id")?;
    // Nothing happens now: heartbeats keep the stream open.
    loop {
        if listener.next().await?.comment {
            break;
        }
    }

    // Away, a post arrives; back with Last-Event-ID, the listener gets it.
    let _resumed =
        resume_after_a_missed_post(listener, &mut client, &reads, 2, 1, &last_seen).await?;

    // What the stream no longer holds (an id before it began) is a reset.
    let mut stale = Listener::open(&writes, 2, Some("1-0")).await?;
    let reset = stale.next().await?;
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert!(reset.id.is_some(), "{reset:?}");

    // Another user's feed is not streamed.
    let foreign = Listener::request(&reads, 3, 2, None).await?;
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_feed_streams_the_posts_of_followed_celebrities_merged_on_read() -> anyhow::Result<()>
{
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    deployment.create_topics(1).await?;
    let (_api, base) = deployment
        .spawn_api(&[
            "--sse-heartbeat-ms",
            "300",
            "--sse-follows-refresh-ms",
            "300",
        ])
        .await?;
    // Authors with more than one follower are celebrities: their posts are merged on read.
    let _processor =
        deployment.spawn_processor_with("processor", &["--celebrity-threshold", "1"])?;
    let _sink = deployment.spawn(&["sink"])?;
    let database = sqlx::PgPool::connect(&deployment.database_url).await?;
    let merged_posts_of = |author: i64| {
        let database = database.clone();
        async move {
            let count: i64 =
                sqlx::query_scalar("SELECT count(*) FROM merged_posts WHERE author_id = $1")
                    .bind(author)
                    .fetch_one(&database)
                    .await?;
            anyhow::Ok(count)
        }
    };
    let mut client = Client::new(base.clone());
    for (follower, celebrity) in [(2, 1), (3, 1), (3, 5), (4, 5)] {
        client.follow(follower, celebrity).await?;
    }
    for celebrity in [1, 5] {
        let first = client.post(celebrity, "before anyone listens").await?;
        eventually(
            DEADLINE,
            "the celebrity's post is merged on read",
            || async {
                Ok(merged_posts_of(celebrity as i64).await? == 1
                    && client.feed(3).await?.contains(&first))
            },
        )
        .await?;
    }

    // User 2 follows celebrity 1: its posts and their deletions stream.
    let mut listener = Listener::open(&base, 2, None).await?;
    listener.next_named("ready").await?;
    let post = client.post(1, "to millions").await?;
    let added = listener.change_of("added", post).await?;
    let body: serde_json::Value = serde_json::from_str(&added.data)?;
    assert_eq!(body["content"], "to millions", "{body}");
    assert_eq!(
        merged_posts_of(1).await?,
        2,
        "the post is merged on read, not fanned out"
    );
    client.delete_post(1, post, DEADLINE).await?;
    let removed = listener.change_of("removed", post).await?;
    let last_seen = removed.id.context("a removal has an id")?;

    // Away, the celebrity posts; back with Last-Event-ID, the listener gets it.
    let mut listener =
        resume_after_a_missed_post(listener, &mut client, &base, 2, 1, &last_seen).await?;

    // A newly followed celebrity is a reset (the listener missed its posts before), then
    // its posts stream too.
    client.follow(2, 5).await?;
    let reset = listener.next_named("reset").await?;
    assert!(reset.data.contains("merged on read"), "{reset:?}");
    let later = client.post(5, "to the new follower").await?;
    listener.change_of("added", later).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_feeds_are_bounded_per_user_over_every_instance_and_in_total() -> anyhow::Result<()> {
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    deployment.create_topics(1).await?;
    let bounds = [
        "--sse-max-per-user",
        "1",
        "--sse-max-connections",
        "2",
        "--sse-heartbeat-ms",
        "300",
    ];
    let (_api, base) = deployment.spawn_api(&bounds).await?;
    let (_other, other) = deployment.spawn_api(&bounds).await?;
    let mut first = Listener::open(&base, 5, None).await?;
    first.next_named("ready").await?;
    // User 5's one listener is on the first instance: the other refuses a second.
    let refused = Listener::request(&other, 5, 5, None).await?;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value = refused.json().await?;
    assert_eq!(body["error"], "too_many_streams", "{body}");
    let mut second = Listener::open(&base, 6, None).await?;
    second.next_named("ready").await?;
    let full = Listener::request(&base, 7, 7, None).await?;
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);

    // A listener that goes gives its places back, on its instance and for its user.
    drop(first);
    let metrics_of = |base: String| async move {
        reqwest::get(format!("{base}/metrics"))
            .await?
            .text()
            .await
            .map_err(anyhow::Error::from)
    };
    eventually(DEADLINE, "user 5's place is given back", || async {
        Ok(metrics_of(base.clone())
            .await?
            .contains("api_sse_connections 1\n"))
    })
    .await?;
    let mut again = Listener::open(&other, 5, None).await?;
    again.next_named("ready").await?;
    let mut elsewhere = Listener::open(&base, 7, None).await?;
    elsewhere.next_named("ready").await?;
    for (base, lines) in [
        (
            &base,
            [
                r#"api_sse_refused_total{reason="total"} 1"#,
                "api_sse_connections 2",
            ],
        ),
        (
            &other,
            [
                r#"api_sse_refused_total{reason="per_user"} 1"#,
                "api_sse_connections 1",
            ],
        ),
    ] {
        let metrics = metrics_of(base.clone()).await?;
        for line in lines {
            assert!(metrics.contains(line), "no `{line}` in {metrics}");
        }
    }
    Ok(())
}
