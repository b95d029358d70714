//! The sink: consumes feed-events and post-events, writes each batch to PostgreSQL in one
//! transaction, mirrors it into Redis, then commits the offsets. Every write is an upsert
//! or a keyed delete, so replaying any part of either topic changes nothing.
//!
//! Transient failures (PostgreSQL, Redis or the broker unreachable) are retried without
//! end while nothing further is read. A batch PostgreSQL rejects for its content is
//! written again record by record, so that only the record at fault, after
//! `max_attempts`, goes to the dead-letter topic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use feedstream_core::event::{Envelope, EventBody, FeedChange, FeedEvent, InputTopic};
use feedstream_core::retry::RetryPolicy;
use feedstream_kafka::dead_letter::{dead_letter, now_ms, Failure, Stage};
use feedstream_kafka::stage::{self, drive, Durable};
use feedstream_kafka::topics::{verify_layout, Topics};
use feedstream_kafka::{
    self as kafka, GroupConsumer, InputRecord, Intake, KafkaSettings, MemberIdentity,
    MembershipChange, TopicPartition,
};
use feedstream_kafka::{retry_transient, Batch, Retry};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::metrics::{SinkLabel, POSTGRES, REDIS};
use crate::postgres::{write_batch, PostWrite};
use crate::{SinkError, SinkMetrics};
use feedstream_read::{redact, CacheOp, FeedCache};

#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub kafka: KafkaSettings,
    pub topics: Topics,
    /// Consumer group; defaults to `<application-id>-sink`. A new group replays both
    /// topics from the beginning.
    pub group_id: String,
    pub client_id: String,
    /// Static membership in the sink group (see [`MemberIdentity::instance_id`]).
    pub instance_id: Option<String>,
    pub database_url: String,
    pub max_batch_records: usize,
    pub max_batch_wait: Duration,
    pub retry: RetryPolicy,
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
    let identity = MemberIdentity {
        group_id: settings.group_id.clone(),
        client_id: settings.client_id.clone(),
        instance_id: settings.instance_id.clone(),
    };
    let mut consumer = GroupConsumer::join(
        &settings.kafka,
        &identity,
        &[&topics.feed_events, &topics.post_events],
        metrics.stage.consumer_lag.clone(),
    )?;
    let writer = Writer {
        pool,
        cache,
        producer: kafka::batch_producer(&settings.kafka, &settings.client_id)?,
        target: redact(&settings.database_url),
        settings: &settings,
        metrics: &metrics,
        shutdown: shutdown.clone(),
    };
    tracing::info!(group = %settings.group_id, "sink started");
    let mut stage = SinkStage {
        writer,
        records: Vec::new(),
    };
    drive(&mut stage, &mut consumer, &metrics.stage, &mut shutdown).await?;
    tracing::info!("sink stopped");
    Ok(())
}

/// The sink as a stage: each cycle writes the records of one read.
struct SinkStage<'s> {
    writer: Writer<'s>,
    records: Vec<InputRecord>,
}

impl stage::Stage for SinkStage<'_> {
    const NAME: &'static str = "sink";
    type Error = SinkError;
    type Done = ();

    fn intake(&self) -> Intake {
        Intake {
            max_records: self.writer.settings.max_batch_records,
            max_wait: self.writer.settings.max_batch_wait,
            linger: Duration::ZERO,
        }
    }

    fn take(&mut self, _consumer: &GroupConsumer, batch: Batch) -> Result<(), SinkError> {
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
        self.records = batch
            .records
            .into_iter()
            .filter(|record| !revoked.contains(&(record.topic.clone(), record.partition)))
            .collect();
        Ok(())
    }

    /// Should a rebalance take the partitions before the commit succeeds, the new owner
    /// rewrites the same batch, harmlessly.
    async fn make_durable(
        &mut self,
        _consumer: &GroupConsumer,
        _shutdown: &watch::Receiver<bool>,
    ) -> Result<Option<Durable<()>>, SinkError> {
        if self.records.is_empty() {
            return Ok(None);
        }
        let records = std::mem::take(&mut self.records);
        self.writer.write(&records).await?;
        Ok(Some(Durable {
            offsets: next_offsets(&records),
            done: (),
        }))
    }

    fn after_commit(&mut self, _done: ()) -> Result<(), SinkError> {
        Ok(())
    }
}

/// What one input record asks of PostgreSQL.
#[derive(Clone)]
enum Write {
    Post(PostWrite),
    Change(FeedChange),
}

struct Writer<'s> {
    pool: PgPool,
    cache: FeedCache,
    producer: kafka::BatchProducer,
    target: String,
    settings: &'s SinkSettings,
    metrics: &'s SinkMetrics,
    shutdown: watch::Receiver<bool>,
}

impl Writer<'_> {
    /// Makes one batch durable: PostgreSQL in one transaction, then Redis, then the dead
    /// letters. Returns only when all of it is done (or at shutdown, with an error).
    async fn write(&self, records: &[InputRecord]) -> Result<(), SinkError> {
        let (writes, mut dead_letters) = decode(&self.settings.topics, records);
        let started = Instant::now();
        let ops = match self.write_postgres(&writes).await {
            Ok(ops) => ops,
            Err(error) if !error.is_retriable() => {
                tracing::warn!(%error, records = writes.len(), "PostgreSQL rejected the batch; writing its records one by one");
                self.write_one_by_one(&writes, &mut dead_letters).await?
            }
            Err(error) => return Err(error),
        };
        self.observe_batch(&POSTGRES, started);
        let started = Instant::now();
        self.retry("redis", || async { Ok(self.cache.apply(&ops).await?) })
            .await?;
        self.observe_batch(&REDIS, started);
        if !dead_letters.is_empty() {
            let outbound: Vec<_> = dead_letters
                .iter()
                .map(|(record, failure)| {
                    tracing::warn!(source = %record.source(), event_id = record.event_id.map(tracing::field::display), reason = failure.reason, detail = %failure.detail, "dead-lettering record");
                    dead_letter(&self.settings.topics.dead_letter, record, failure)
                })
                .collect();
            self.retry("kafka", || async {
                Ok(self.producer.deliver(&outbound).await?)
            })
            .await?;
        }
        let rejected = |record: &InputRecord| {
            dead_letters
                .iter()
                .any(|(letter, _)| std::ptr::eq(*letter, record))
        };
        let mut changes = 0;
        for (record, write) in writes.iter().filter(|(record, _)| !rejected(record)) {
            match write {
                Write::Post(_) => {
                    self.metrics.posts_written.inc();
                    tracing::debug!(
                        event_id = record.event_id.map(tracing::field::display),
                        "post written"
                    );
                }
                Write::Change(change) => {
                    changes += 1;
                    tracing::debug!(event_id = record.event_id.map(tracing::field::display), feed = %change.key(), "feed change written");
                }
            };
        }
        let applied = &self.metrics.feed_changes_applied;
        applied.get_or_create(&POSTGRES).inc_by(changes);
        let entries = ops.iter().filter(|op| op.is_entry()).count();
        applied.get_or_create(&REDIS).inc_by(entries as u64);
        for (_, failure) in &dead_letters {
            self.metrics.stage.dead_lettered(failure.reason);
        }
        Ok(())
    }

    fn observe_batch(&self, sink: &SinkLabel, started: Instant) {
        self.metrics
            .batch_seconds
            .get_or_create(sink)
            .observe(started.elapsed().as_secs_f64());
    }

    /// Writes in one transaction, retrying transient failures.
    async fn write_postgres(
        &self,
        writes: &[(&InputRecord, Write)],
    ) -> Result<Vec<CacheOp>, SinkError> {
        let mut posts = Vec::new();
        let mut changes = Vec::new();
        for (_, write) in writes {
            match write {
                Write::Post(post) => posts.push(post),
                Write::Change(change) => changes.push(change),
            }
        }
        self.retry("postgres", || {
            write_batch(&self.pool, &self.target, &posts, &changes)
        })
        .await
    }

    /// Writes each record in its own transaction, in order. A record PostgreSQL keeps
    /// rejecting is tried `max_attempts` times, then dead-lettered; the others are written.
    async fn write_one_by_one<'r>(
        &self,
        writes: &[(&'r InputRecord, Write)],
        dead_letters: &mut Vec<(&'r InputRecord, Failure)>,
    ) -> Result<Vec<CacheOp>, SinkError> {
        let mut ops = Vec::new();
        for (record, write) in writes {
            let single = [(*record, write.clone())];
            let mut failure: Option<Failure> = None;
            loop {
                match self.write_postgres(&single).await {
                    Ok(written) => {
                        ops.extend(written);
                        break;
                    }
                    Err(error) if error.is_retriable() => return Err(error),
                    Err(error) => {
                        let now = now_ms();
                        let failure = failure.get_or_insert_with(|| Failure {
                            reason: "write_rejected",
                            detail: String::new(),
                            stage: Stage::Sink,
                            attempts: 0,
                            first_failure_ms: now,
                            last_failure_ms: now,
                        });
                        failure.attempts += 1;
                        failure.last_failure_ms = now;
                        failure.detail = error.to_string();
                        if self.settings.retry.exhausted(failure.attempts) {
                            dead_letters.push((record, failure.clone()));
                            break;
                        }
                        self.metrics.stage.retried("record");
                        let delay = self.settings.retry.delay(failure.attempts);
                        tracing::warn!(source = %record.source(), event_id = record.event_id.map(tracing::field::display), %error, attempt = failure.attempts, ?delay, "record rejected by PostgreSQL; trying it again");
                        // At shutdown the batch stays uncommitted, to be written again.
                        let mut shutdown = self.shutdown.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.changed() => return Err(error),
                        }
                    }
                }
            }
        }
        Ok(ops)
    }

    /// Retries a step while its failures are transient, with the policy's backoff.
    /// Consumption waits meanwhile: nothing after the batch is read, nothing is skipped.
    /// Gives up only at shutdown (the batch stays uncommitted).
    async fn retry<T, F, Fut>(&self, r#type: &'static str, step: F) -> Result<T, SinkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SinkError>>,
    {
        let failures = &self.metrics.stage;
        retry_transient(
            &self.settings.retry,
            &self.shutdown,
            |retry: Retry<'_, SinkError>| {
                failures.retried(r#type);
                tracing::warn!(error = %retry.error, attempt = retry.attempt, delay = ?retry.delay, "transient {type} failure; retrying");
            },
            step,
        )
        .await
    }
}

type DeadLetters<'r> = Vec<(&'r InputRecord, Failure)>;

/// Each record's write, in order, and the records that cannot be decoded.
fn decode<'r>(
    topics: &Topics,
    records: &'r [InputRecord],
) -> (Vec<(&'r InputRecord, Write)>, DeadLetters<'r>) {
    let mut writes = Vec::new();
    let mut dead_letters = Vec::new();
    for record in records {
        let payload = record.payload.as_deref().unwrap_or_default();
        if topics.input_of(&record.topic) == Some(InputTopic::PostEvents) {
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
            let post = match event.body {
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
            };
            writes.push((record, Write::Post(post)));
        } else {
            match serde_json::from_slice::<FeedEvent>(payload) {
                Ok(event) => writes.push((record, Write::Change(event.change))),
                Err(error) => dead_letters.push((
                    record,
                    Failure::permanent(
                        "undecodable_feed_event",
                        format!("not a valid feed event: {error}"),
                        Stage::Sink,
                    ),
                )),
            }
        }
    }
    (writes, dead_letters)
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
