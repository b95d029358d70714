//! The processor: one consumer-group member running the feed topology for the tasks it
//! is assigned. Task i owns partition i of post-events and follow-events and the
//! stores of partition i.
//!
//! One cycle: read a batch (never with work in flight, so a rebalance in the middle of a
//! read finds nothing to finish); route records to their tasks; each task applies them
//! in stream-time order, its store writes captured for the changelog; send feed changes,
//! dead letters and changelog records; wait for every acknowledgement; commit the input
//! offsets. An offset is therefore committed only after all it caused is durable.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use feedstream_stores::{RocksDbStore, StoreError, StoreName};
use tokio::sync::watch;

use crate::metrics::{ProcessorMetrics, StoreLabels, TopicLabel};
use crate::state::{Checkpoint, StateError, StateOpener};
use feedstream_core::event::{
    Envelope, FeedChange, FeedEvent, InputTopic, EVENT_ID_HEADER, FEED_EVENT_VERSION,
};
use feedstream_core::feed::{apply, FeedRules, TaskStores};
use feedstream_core::retry::RetryPolicy;
use feedstream_core::stream_time::{self, EmptyInput, Next, StreamTime};
use feedstream_kafka::dead_letter::{dead_letter, Failure, Stage};
use feedstream_kafka::topics::{verify_layout, Topics, TopicsError};
use feedstream_kafka::{
    self as kafka, Delivered, GroupConsumer, InputRecord, KafkaFailure, KafkaSettings,
    MembershipChange, OutboundRecord, TopicPartition,
};
use feedstream_kafka::{retry_transient, Retry};

#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    pub kafka: KafkaSettings,
    pub topics: Topics,
    /// Stores live under `<state_dir>/<application-id>/task-<i>/<store>`.
    pub state_dir: PathBuf,
    pub rules: FeedRules,
    pub max_batch_records: usize,
    pub max_batch_wait: Duration,
    /// How long a task whose other input is empty and caught up waits for records of
    /// it not yet produced (an input that is not caught up is always waited for).
    pub max_task_idle: Duration,
    /// Backoff between attempts to deliver a batch while the broker fails.
    pub retry: RetryPolicy,
    pub client_id: String,
}

/// Why the processor stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Layout(#[from] TopicsError),
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error("state store of task {task} failed: {source}")]
    Store {
        task: i32,
        #[source]
        source: StoreError,
    },
    #[error("state of task {task}: {source}")]
    State {
        task: i32,
        #[source]
        source: StateError,
    },
}

impl ProcessorError {
    /// Whether restarting the processor can help (it resumes from the last commit).
    pub fn is_retriable(&self) -> bool {
        match self {
            ProcessorError::Layout(error) => error.is_retriable(),
            ProcessorError::Kafka(error) => error.is_retriable(),
            ProcessorError::Store { .. } => false,
            ProcessorError::State { source, .. } => source.is_retriable(),
        }
    }
}

impl feedstream_kafka::Retriable for ProcessorError {
    fn is_retriable(&self) -> bool {
        ProcessorError::is_retriable(self)
    }
}

struct Task {
    partition: i32,
    dir: PathBuf,
    stores: TaskStores<RocksDbStore>,
    /// Next changelog offset each store reflects, as acknowledged by the broker.
    positions: BTreeMap<StoreName, i64>,
    posts: VecDeque<InputRecord>,
    follows: VecDeque<InputRecord>,
    /// Set while one input is empty and the other waits for it.
    waiting: Option<Waiting>,
    /// When the stores were last synced and checkpointed.
    checkpointed: Instant,
}

/// A task's wait for its empty input.
struct Waiting {
    input: InputTopic,
    since: Instant,
    /// Since when the broker has said the input is caught up (records still to come
    /// have not been produced yet); `None` while it holds unread records of it.
    caught_up_since: Option<Instant>,
    /// Whether the wait was logged: it is, once it lasts [`WAIT_LOGGED_AFTER`].
    logged: bool,
}

/// How long a task waits for a lagging input before the wait is logged (and again
/// when it ends). Shorter waits are normal while two partitions are fetched in turn;
/// they are counted by `processor_input_wait_seconds` only.
const WAIT_LOGGED_AFTER: Duration = Duration::from_secs(2);

/// Longest time between checkpoints of a task that keeps changing. A checkpoint syncs
/// each store's WAL and writes a file (three fsyncs); between checkpoints the stores
/// run ahead of the file, and a crash only makes the restore replay the changelog from
/// the older position (its records are idempotent puts and deletes).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

impl Task {
    /// Opens the task's stores and restores them to the end of their changelogs before
    /// the task processes anything.
    fn open(
        settings: &ProcessorSettings,
        partition: i32,
        metrics: &ProcessorMetrics,
    ) -> Result<Self, StateError> {
        let dir = task_dir(
            &settings.state_dir,
            &settings.topics.application_id,
            partition,
        );
        let opener = StateOpener {
            kafka: &settings.kafka,
            topics: &settings.topics,
            task_dir: &dir,
            partition,
        };
        let opened = opener.open(&mut |store, records| {
            tracing::debug!(task = partition, %store, records, "restoring");
        })?;
        let mut positions = BTreeMap::new();
        for outcome in &opened.restored {
            positions.insert(outcome.store, outcome.position);
            metrics.restored_records.inc_by(outcome.records);
            metrics
                .restore_seconds
                .observe(outcome.elapsed.as_secs_f64());
            if outcome.records > 0 {
                metrics
                    .restore_rate
                    .set(outcome.records as f64 / outcome.elapsed.as_secs_f64().max(1e-6));
            }
            tracing::info!(
                task = partition,
                store = outcome.store.as_str(),
                records = outcome.records,
                seconds = outcome.elapsed.as_secs_f64(),
                full = outcome.full_restore_reason.as_deref().unwrap_or("no"),
                "store restored"
            );
        }
        let mut task = Self {
            partition,
            dir,
            stores: TaskStores::new(opened.followers, opened.author_posts, settings.rules),
            positions,
            posts: VecDeque::new(),
            follows: VecDeque::new(),
            waiting: None,
            checkpointed: Instant::now(),
        };
        task.record_sizes(metrics);
        Ok(task)
    }

    /// Syncs the stores and records the changelog positions they reflect.
    fn checkpoint(&mut self, full_flush: bool) -> Result<(), StateError> {
        self.checkpointed = Instant::now();
        for name in StoreName::ALL {
            let store = self.stores.store_mut(name);
            if full_flush {
                store.flush()?;
            } else {
                store.sync_wal()?;
            }
        }
        Checkpoint {
            offsets: self
                .positions
                .iter()
                .map(|(store, offset)| (*store, *offset))
                .collect(),
        }
        .write(&self.dir)
    }

    fn close(mut self) -> Result<(), StateError> {
        self.checkpoint(true)
    }

    fn record_sizes(&mut self, metrics: &ProcessorMetrics) {
        for name in StoreName::ALL {
            let size = self.stores.store_mut(name).approximate_size_bytes();
            metrics
                .store_size_bytes
                .get_or_create(&StoreLabels {
                    task: self.partition,
                    store: name.as_str(),
                })
                .set(size as i64);
        }
    }
}

/// Directory of one task's stores.
pub fn task_dir(state_dir: &Path, application_id: &str, partition: i32) -> PathBuf {
    state_dir
        .join(application_id)
        .join(format!("task-{partition}"))
}

fn stream_time(record: &InputRecord) -> StreamTime {
    (
        record.timestamp.unwrap_or(i64::MIN),
        record.event_id.unwrap_or(0),
    )
}

/// Runs the processor until `shutdown` turns true, then finishes the batch in hand,
/// commits and closes its stores.
pub async fn run(
    settings: ProcessorSettings,
    metrics: ProcessorMetrics,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ProcessorError> {
    let partitions = verify_layout(&settings.kafka, &settings.topics, true)?;
    let topics = &settings.topics;
    let consumer = GroupConsumer::join(
        &settings.kafka,
        &topics.processor_group(),
        &settings.client_id,
        &[&topics.post_events, &topics.follow_events],
        metrics.failures.consumer_lag.clone(),
    )?;
    let producer = kafka::producer(&settings.kafka, &settings.client_id)?;
    tracing::info!(partitions, group = %topics.processor_group(), "processor started");

    let mut runtime = Runtime {
        settings: &settings,
        consumer,
        producer,
        metrics,
        assigned: BTreeSet::new(),
        tasks: BTreeMap::new(),
        paused: BTreeSet::new(),
        incomplete: BTreeMap::new(),
        next_first: 0,
    };
    let result = runtime.run(&mut shutdown).await;
    let closed = runtime.close_all_tasks();
    tracing::info!("processor stopped");
    result.and(closed)
}

struct Runtime<'s> {
    settings: &'s ProcessorSettings,
    consumer: GroupConsumer,
    producer: kafka::Producer,
    metrics: ProcessorMetrics,
    assigned: BTreeSet<TopicPartition>,
    tasks: BTreeMap<i32, Task>,
    /// Input partitions paused because their task's buffer is full.
    paused: BTreeSet<TopicPartition>,
    /// Records of a partition whose twin is not assigned yet, for its task.
    incomplete: BTreeMap<i32, Vec<InputRecord>>,
    /// Task that goes first in the next processing round (round-robin).
    next_first: usize,
}

/// Records buffered per input partition before it is paused (Kafka Streams'
/// `buffered.records.per.partition`). Intake is not limited by the processing batch, so
/// a task waiting for its other input keeps reading until that input arrives.
const BUFFERED_RECORDS_PER_PARTITION: usize = 1000;
/// Most records read per intake.
const INTAKE_RECORDS: usize = 1000;

/// What one batch produced and may commit.
#[derive(Default)]
struct Effects {
    outbound: Vec<OutboundRecord>,
    commit: BTreeMap<TopicPartition, i64>,
    feed_changes: u64,
    /// Of those, ENTRY_ADDED.
    entries_added: u64,
    /// Reason of each dead letter sent.
    dead_letters: Vec<&'static str>,
    records: BTreeMap<String, u64>,
}

impl Runtime<'_> {
    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), ProcessorError> {
        while !*shutdown.borrow() {
            let batch = self
                .consumer
                .next_batch(INTAKE_RECORDS, self.settings.max_batch_wait, shutdown)
                .await;
            for record in batch.records {
                self.route(record);
            }
            for change in batch.changes {
                self.apply_membership(change)?;
            }
            self.apply_backpressure()?;
            let started = Instant::now();
            let effects = self.process_ready()?;
            if effects.commit.is_empty() {
                continue;
            }
            self.deliver_and_commit(effects, shutdown).await?;
            self.metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    fn route(&mut self, record: InputRecord) {
        let Some(task) = self.tasks.get_mut(&record.partition) else {
            // One input partition is assigned before its twin: keep its records for the
            // task (the fetch goes on after them, so dropping one would skip it).
            self.incomplete
                .entry(record.partition)
                .or_default()
                .push(record);
            return;
        };
        match self.settings.topics.input_of(&record.topic) {
            Some(InputTopic::PostEvents) => task.posts.push_back(record),
            Some(InputTopic::FollowEvents) => task.follows.push_back(record),
            // The consumer subscribes to the two inputs only.
            None => {
                tracing::error!(source = %record.source(), "record of a topic that is no input")
            }
        }
    }

    fn apply_membership(&mut self, change: MembershipChange) -> Result<(), ProcessorError> {
        match change {
            MembershipChange::Revoked(partitions) => {
                for (topic, partition) in partitions {
                    if let Some(records) = self.incomplete.get_mut(&partition) {
                        records.retain(|record| record.topic != topic);
                    }
                    self.paused.remove(&(topic.clone(), partition));
                    self.assigned.remove(&(topic, partition));
                    if let Some(task) = self.tasks.remove(&partition) {
                        // Nothing is in flight between batches: buffered records are
                        // simply dropped (uncommitted, the next owner reads them).
                        task.close().map_err(|source| ProcessorError::State {
                            task: partition,
                            source,
                        })?;
                        tracing::info!(task = partition, "task revoked and closed");
                    }
                }
            }
            MembershipChange::Assigned(partitions) => {
                self.assigned.extend(partitions);
                let topics = &self.settings.topics;
                let complete: Vec<i32> = self
                    .assigned
                    .iter()
                    .filter(|(topic, _)| topics.input_of(topic) == Some(InputTopic::PostEvents))
                    .map(|(_, partition)| *partition)
                    .filter(|partition| {
                        self.assigned
                            .contains(&(topics.follow_events.clone(), *partition))
                    })
                    .filter(|partition| !self.tasks.contains_key(partition))
                    .collect();
                for partition in complete {
                    let task =
                        Task::open(self.settings, partition, &self.metrics).map_err(|source| {
                            ProcessorError::State {
                                task: partition,
                                source,
                            }
                        })?;
                    self.tasks.insert(partition, task);
                    self.metrics.tasks_opened.inc();
                    tracing::info!(task = partition, "task assigned and opened");
                    for record in self.incomplete.remove(&partition).unwrap_or_default() {
                        self.route(record);
                    }
                }
            }
        }
        self.metrics.active_tasks.set(self.tasks.len() as i64);
        Ok(())
    }

    /// Pauses input partitions whose task buffer is full, resumes drained ones.
    fn apply_backpressure(&mut self) -> Result<(), ProcessorError> {
        let topics = &self.settings.topics;
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        for (partition, task) in &self.tasks {
            let buffers = [
                (&topics.post_events, task.posts.len()),
                (&topics.follow_events, task.follows.len()),
            ];
            for (topic, buffered) in buffers {
                let key = (topic.clone(), *partition);
                let paused = self.paused.contains(&key);
                if buffered >= BUFFERED_RECORDS_PER_PARTITION && !paused {
                    pause.push(key);
                } else if buffered < BUFFERED_RECORDS_PER_PARTITION / 2 && paused {
                    resume.push(key);
                }
            }
        }
        if !pause.is_empty() {
            self.consumer.set_paused(&pause, true)?;
            self.paused.extend(pause);
        }
        if !resume.is_empty() {
            self.consumer.set_paused(&resume, false)?;
            for key in &resume {
                self.paused.remove(key);
            }
        }
        self.metrics.paused_partitions.set(self.paused.len() as i64);
        Ok(())
    }

    /// Applies up to one batch of records that stream time allows, one record per task
    /// in turn, so that no task starves the others and a crash replays at most one batch.
    fn process_ready(&mut self) -> Result<Effects, ProcessorError> {
        let mut effects = Effects::default();
        let mut partitions: Vec<i32> = self.tasks.keys().copied().collect();
        if !partitions.is_empty() {
            let first = self.next_first % partitions.len();
            partitions.rotate_left(first);
            self.next_first = self.next_first.wrapping_add(1);
        }
        let mut verdicts = BTreeMap::new();
        let mut budget = self.settings.max_batch_records;
        while budget > 0 && !partitions.is_empty() {
            let mut still_ready = Vec::new();
            for partition in partitions {
                if budget == 0 {
                    break;
                }
                let record = self.next_record(partition, &mut verdicts);
                let (Some((input, record)), Some(task)) = (record, self.tasks.get_mut(&partition))
                else {
                    continue;
                };
                budget -= 1;
                process_record(
                    self.settings,
                    &self.metrics,
                    task,
                    input,
                    record,
                    &mut effects,
                )
                .map_err(|source| ProcessorError::Store {
                    task: partition,
                    source,
                })?;
                still_ready.push(partition);
            }
            partitions = still_ready;
        }
        self.metrics.waiting_tasks.set(self.lagging_tasks());
        Ok(effects)
    }

    /// The task's next record in stream time, if it may be processed now. Whether an
    /// empty input is caught up is asked of the broker once per cycle and topic, for
    /// every task at once: the consumer is not polled meanwhile, so `verdicts` (keyed
    /// by task and input) keeps the answers for the rest of the cycle.
    fn next_record(
        &mut self,
        partition: i32,
        verdicts: &mut BTreeMap<(i32, InputTopic), bool>,
    ) -> Option<(InputTopic, InputRecord)> {
        let task = self.tasks.get(&partition)?;
        let posts_head = task.posts.front().map(stream_time);
        let follows_head = task.follows.front().map(stream_time);
        let empty = if posts_head.is_some() == follows_head.is_some() {
            // Both heads or neither: the decision needs no broker.
            EmptyInput::Lagging
        } else {
            let input = if posts_head.is_none() {
                InputTopic::PostEvents
            } else {
                InputTopic::FollowEvents
            };
            if !verdicts.contains_key(&(partition, input)) {
                let topic = self.settings.topics.input(input);
                let answers = self.caught_up(topic);
                for other in self.tasks.keys() {
                    let verdict = answers.get(other).copied().unwrap_or(false);
                    verdicts.insert((*other, input), verdict);
                }
            }
            let caught_up = verdicts.get(&(partition, input)).copied().unwrap_or(false);
            let task = self.tasks.get_mut(&partition)?;
            let waiting = task.waiting.get_or_insert_with(|| Waiting {
                input,
                since: Instant::now(),
                caught_up_since: None,
                logged: false,
            });
            if caught_up {
                let since = *waiting.caught_up_since.get_or_insert_with(Instant::now);
                EmptyInput::CaughtUp {
                    for_: since.elapsed(),
                }
            } else {
                waiting.caught_up_since = None;
                EmptyInput::Lagging
            }
        };
        let max_idle = self.settings.max_task_idle;
        let decision = stream_time::next(posts_head, follows_head, empty, max_idle);
        let task = self.tasks.get_mut(&partition)?;
        let record = match decision {
            Next::Posts => task.posts.pop_front().map(|r| (InputTopic::PostEvents, r)),
            Next::Follows => task
                .follows
                .pop_front()
                .map(|r| (InputTopic::FollowEvents, r)),
            Next::Wait | Next::Idle => None,
        };
        if decision == Next::Wait {
            if let Some(waiting) = task.waiting.as_mut().filter(|waiting| !waiting.logged) {
                if waiting.since.elapsed() >= WAIT_LOGGED_AFTER {
                    waiting.logged = true;
                    tracing::info!(
                        task = partition,
                        input = ?waiting.input,
                        caught_up = waiting.caught_up_since.is_some(),
                        "task waits for its other input before processing further"
                    );
                }
            }
        } else if let Some(waiting) = task.waiting.take() {
            let waited = waiting.since.elapsed().as_secs_f64();
            self.metrics.input_wait_seconds.observe(waited);
            if waiting.logged {
                tracing::info!(
                    task = partition,
                    input = ?waiting.input,
                    seconds = waited,
                    "task resumed after waiting for its other input"
                );
            }
        }
        record
    }

    /// Tasks whose one input is empty while the broker still holds records of it.
    fn lagging_tasks(&self) -> i64 {
        self.tasks
            .values()
            .filter(|task| {
                task.waiting
                    .as_ref()
                    .is_some_and(|waiting| waiting.caught_up_since.is_none())
            })
            .count() as i64
    }

    /// Which tasks have read all of `topic`; none, when the broker does not say.
    fn caught_up(&self, topic: &str) -> BTreeMap<i32, bool> {
        let partitions: Vec<i32> = self.tasks.keys().copied().collect();
        self.consumer
            .caught_up(topic, &partitions, Duration::from_secs(1))
            .unwrap_or_else(|error| {
                tracing::debug!(%error, topic, "lag unknown; treating the inputs as lagging");
                BTreeMap::new()
            })
    }

    /// Delivers the batch's records, retrying while the broker fails (the batch stays in
    /// hand and nothing further is read, so the partitions wait), then commits its input
    /// offsets. A failed commit is retried with the next one (see
    /// [`GroupConsumer::commit`]); the batch is replayed only if none succeeds before a
    /// restart.
    async fn deliver_and_commit(
        &mut self,
        effects: Effects,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), ProcessorError> {
        let failures = &self.metrics.failures;
        let delivered = retry_transient(
            &self.settings.retry,
            shutdown,
            |retry: Retry<'_, KafkaFailure>| {
                failures.retried("kafka");
                tracing::warn!(error = %retry.error, attempt = retry.attempt, delay = ?retry.delay, "batch not acknowledged by the broker; sending it again");
            },
            || kafka::deliver(&self.producer, &effects.outbound),
        )
        .await?;
        if let Err(error) = self.consumer.commit(&effects.commit) {
            self.metrics.failures.retried("kafka");
            tracing::warn!(%error, "offset commit failed; it is retried with the next one");
        }
        self.checkpoint_after_commit(&delivered)?;
        for (topic, count) in effects.records {
            self.metrics
                .records
                .get_or_create(&TopicLabel { topic })
                .inc_by(count);
        }
        self.metrics.feed_changes.inc_by(effects.feed_changes);
        self.metrics.fanout_entries.inc_by(effects.entries_added);
        for reason in effects.dead_letters {
            self.metrics.failures.dead_lettered(reason);
        }
        Ok(())
    }

    /// Moves each task's changelog positions to what the broker acknowledged, then
    /// checkpoints the tasks that changed, at most once per [`CHECKPOINT_INTERVAL`].
    fn checkpoint_after_commit(&mut self, delivered: &[Delivered]) -> Result<(), ProcessorError> {
        let changelogs: BTreeMap<String, StoreName> = StoreName::ALL
            .into_iter()
            .map(|store| (self.settings.topics.changelog(store), store))
            .collect();
        let mut touched = BTreeSet::new();
        for record in delivered {
            let Some(store) = changelogs.get(&record.topic) else {
                continue;
            };
            if let Some(task) = self.tasks.get_mut(&record.partition) {
                let position = task.positions.entry(*store).or_insert(0);
                *position = (*position).max(record.offset + 1);
                touched.insert(record.partition);
            }
        }
        for partition in touched {
            let due = |task: &&mut Task| task.checkpointed.elapsed() >= CHECKPOINT_INTERVAL;
            if let Some(task) = self.tasks.get_mut(&partition).filter(due) {
                task.checkpoint(false)
                    .map_err(|source| ProcessorError::State {
                        task: partition,
                        source,
                    })?;
                task.record_sizes(&self.metrics);
            }
        }
        Ok(())
    }

    fn close_all_tasks(&mut self) -> Result<(), ProcessorError> {
        let mut result = Ok(());
        for (partition, task) in std::mem::take(&mut self.tasks) {
            if let Err(source) = task.close() {
                result = Err(ProcessorError::State {
                    task: partition,
                    source,
                });
            }
        }
        result
    }
}

/// Applies one record to its task and appends what it causes to `effects`.
fn process_record(
    settings: &ProcessorSettings,
    metrics: &ProcessorMetrics,
    task: &mut Task,
    found_on: InputTopic,
    record: InputRecord,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let topics = &settings.topics;
    let decoded = Envelope::decode(
        record.payload.as_deref().unwrap_or_default(),
        record.key.as_deref(),
        found_on,
    );
    match decoded {
        Ok(event) => {
            let changes = apply(&event, &mut task.stores)?;
            let entries_added = changes
                .iter()
                .filter(|change| matches!(change, FeedChange::EntryAdded { .. }))
                .count() as u64;
            effects.feed_changes += changes.len() as u64;
            effects.entries_added += entries_added;
            tracing::debug!(event_id = %event.event_id, event_type = event.type_name(), task = task.partition, changes = changes.len(), "event processed");
            for change in changes {
                let key = change.key().to_string().into_bytes();
                let value = FeedEvent {
                    change,
                    cause_event_id: event.event_id,
                    timestamp: event.timestamp,
                    version: FEED_EVENT_VERSION,
                };
                effects.outbound.push(OutboundRecord {
                    topic: topics.feed_events.clone(),
                    partition: None,
                    key,
                    payload: Some(value.to_json()),
                    timestamp: Some(event.timestamp),
                    headers: vec![(EVENT_ID_HEADER, event.event_id.to_string())],
                });
            }
            for (store, change) in task.stores.drain_changes() {
                effects.outbound.push(OutboundRecord {
                    topic: topics.changelog(store),
                    partition: Some(task.partition),
                    key: change.key,
                    payload: change.value,
                    timestamp: Some(event.timestamp),
                    headers: Vec::new(),
                });
            }
            metrics.observe_event(
                event.type_name(),
                started.elapsed().as_secs_f64(),
                entries_added,
            );
        }
        Err(invalid) => {
            tracing::warn!(source = %record.source(), event_id = record.event_id.map(tracing::field::display), reason = %invalid, "dead-lettering input record");
            metrics.observe_event("INVALID", started.elapsed().as_secs_f64(), 0);
            let failure = Failure::permanent(invalid.code(), invalid.to_string(), Stage::Processor);
            effects.dead_letters.push(failure.reason);
            effects
                .outbound
                .push(dead_letter(&topics.dead_letter, &record, &failure));
        }
    }
    *effects.records.entry(record.topic.clone()).or_default() += 1;
    effects
        .commit
        .insert((record.topic, record.partition), record.offset + 1);
    Ok(())
}
