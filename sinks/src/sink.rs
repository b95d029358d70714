//! The sink: consumes feed-events and post-events, writes each batch to PostgreSQL in one
//! transaction, mirrors it into Redis, then commits the offsets. Every write is an upsert
//! or a keyed delete, so replaying any part of either topic changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use feedstream_topology::dead_letter::{dead_letter, Stage};
use feedstream_topology::event::{Envelope, EventBody, FeedEvent, InputTopic};
use feedstream_topology::kafka::{
    self, GroupConsumer, InputRecord, KafkaSettings, MembershipChange, Outbox, TopicPartition,
};
use feedstream_topology::topics::{verify_layout, Topics};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::cache::FeedCache;
use crate::metrics::TargetLabel;
use crate::postgres::{redact, write_batch, PostWrite};
use crate::{SinkError, SinkMetrics};

#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub kafka: KafkaSettings,
    pub topics: Topics,
    /// Consumer group; defaults to `<application-id>-sink`. A new group replays both
    /// topics from the beginning.
    pub group_id: String,
    pub client_id: String,
    pub database_url: String,
    pub max_batch_records: usize,
    pub max_batch_wait: Duration,
}

/// Runs the sink until `shutdown` turns true; the batch in hand is finished first.
pub async fn run(
    settings: SinkSettings,
    pool: PgPool,
    cache: FeedCache,
    metrics: SinkMetrics,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SinkError> {
    verify_layout(&settings.kafka, &settings.topics, false)?;
    let topics = &settings.topics;
    let mut consumer = GroupConsumer::join(
        &settings.kafka,
        &settings.group_id,
        &settings.client_id,
        &[&topics.feed_events, &topics.post_events],
    )?;
    let producer = kafka::producer(&settings.kafka, &settings.client_id)?;
    let target = redact(&settings.database_url);
    tracing::info!(group = %settings.group_id, "sink started");

    while !*shutdown.borrow() {
        let mut batch = consumer
            .next_batch(
                settings.max_batch_records,
                settings.max_batch_wait,
                &mut shutdown,
            )
            .await;
        // Records read before a revocation now belong to another member, which reads
        // them again; writing them late could undo that member's newer changes.
        let revoked: BTreeSet<&TopicPartition> = batch
            .changes
            .iter()
            .filter_map(|change| match change {
                MembershipChange::Revoked(partitions) => Some(partitions),
                MembershipChange::Assigned(_) => None,
            })
            .flatten()
            .collect();
        if !revoked.is_empty() {
            let revoked: BTreeSet<TopicPartition> = revoked.into_iter().cloned().collect();
            batch
                .records
                .retain(|record| !revoked.contains(&(record.topic.clone(), record.partition)));
        }
        if batch.records.is_empty() {
            continue;
        }
        let started = Instant::now();
        let decoded = decode(topics, &batch.records);
        let posts = decoded.posts.len() as u64;
        let changes = decoded.changes.len() as u64;

        let ops = retry("postgres", &metrics, &shutdown, || {
            write_batch(&pool, &target, &decoded.posts, &decoded.changes)
        })
        .await?;
        retry("redis", &metrics, &shutdown, || cache.apply(&ops)).await?;
        if !decoded.dead_letters.is_empty() {
            let mut outbox = Outbox::new(&producer);
            for (record, reason) in &decoded.dead_letters {
                tracing::warn!(source = %record.source(), %reason, "dead-lettering feed event");
                outbox
                    .send(&dead_letter(
                        &topics.dead_letter,
                        record,
                        reason,
                        Stage::Sink,
                        1,
                    ))
                    .await?;
            }
            outbox.flush().await?;
        }
        if let Err(error) = consumer.commit(&next_offsets(&batch.records)) {
            // Usually a rebalance took the partitions meanwhile: the new owner rewrites
            // the same batch, harmlessly.
            tracing::warn!(%error, "offset commit failed; the batch will be replayed");
        }
        metrics.posts_written.inc_by(posts);
        metrics.feed_changes_applied.inc_by(changes);
        metrics
            .dead_letters
            .inc_by(decoded.dead_letters.len() as u64);
        metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    tracing::info!("sink stopped");
    Ok(())
}

#[derive(Default)]
struct Decoded<'r> {
    posts: Vec<PostWrite>,
    changes: Vec<feedstream_topology::event::FeedChange>,
    dead_letters: Vec<(&'r InputRecord, String)>,
}

fn decode<'r>(topics: &Topics, records: &'r [InputRecord]) -> Decoded<'r> {
    let mut decoded = Decoded::default();
    for record in records {
        let payload = record.payload.as_deref().unwrap_or_default();
        if record.topic == topics.post_events {
            // Invalid input events are the processor's to dead-letter; here they are
            // simply not posts.
            let Ok(event) =
                Envelope::decode(payload, record.key.as_deref(), InputTopic::PostEvents)
            else {
                continue;
            };
            let at = Utc
                .timestamp_millis_opt(event.timestamp)
                .single()
                .unwrap_or_default();
            decoded.posts.push(match event.body {
                EventBody::PostCreated { post_id, content } => PostWrite::Created {
                    post_id: post_id.as_i64(),
                    author_id: event.actor_id.as_i64(),
                    content,
                    created_at: at,
                },
                EventBody::PostDeleted { post_id } => PostWrite::Deleted {
                    post_id: post_id.as_i64(),
                    author_id: event.actor_id.as_i64(),
                    deleted_at: at,
                },
                EventBody::Followed { .. } | EventBody::Unfollowed { .. } => continue,
            });
        } else {
            match serde_json::from_slice::<FeedEvent>(payload) {
                Ok(event) => decoded.changes.push(event.change),
                Err(error) => decoded
                    .dead_letters
                    .push((record, format!("not a valid feed event: {error}"))),
            }
        }
    }
    decoded
}

fn next_offsets(records: &[InputRecord]) -> BTreeMap<TopicPartition, i64> {
    let mut offsets = BTreeMap::new();
    for record in records {
        let next = offsets
            .entry((record.topic.clone(), record.partition))
            .or_insert(0);
        *next = (*next).max(record.offset + 1);
    }
    offsets
}

/// Retries a write while its failures are transient, with capped exponential backoff
/// and full jitter. Consumption waits meanwhile: nothing after the batch is read, and
/// nothing is skipped.
async fn retry<T, F, Fut>(
    target: &'static str,
    metrics: &SinkMetrics,
    shutdown: &watch::Receiver<bool>,
    mut write: F,
) -> Result<T, SinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SinkError>>,
{
    let mut attempt: u32 = 0;
    loop {
        match write().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_retriable() && !*shutdown.borrow() => {
                attempt += 1;
                metrics
                    .write_retries
                    .get_or_create(&TargetLabel { target })
                    .inc();
                let ceiling = Duration::from_millis(100)
                    .saturating_mul(1 << attempt.min(7))
                    .min(Duration::from_secs(10));
                let delay = ceiling.mul_f64(fastrand::f64());
                tracing::warn!(%error, attempt, ?delay, "transient {target} failure; retrying the batch");
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(error),
        }
    }
}
