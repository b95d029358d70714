//! The processor: one consumer-group member running the feed topology for the tasks it
//! is assigned. Task i owns partition i of post-events and follow-events and the
//! stores of partition i.
//!
//! One cycle: read a batch (never with work in flight, so a rebalance in the middle of a
//! read finds nothing to finish); route records to their tasks; each task applies them
//! in stream-time order, its store writes captured for the changelog; send feed changes,
//! dead letters and changelog records; wait for every acknowledgement; commit the input
//! offsets. An offset is therefore committed only after all it caused is durable.

mod intake;
mod outbound;
mod records;
mod schedule;
mod task;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use feedstream_core::feed::FeedRules;
use feedstream_core::retry::RetryPolicy;
use feedstream_kafka::stage::{drive, Durable, Stage};
use feedstream_kafka::topics::{verify_layout, Topics, TopicsError};
use feedstream_kafka::transaction;
use feedstream_kafka::{
    self as kafka, retry_transient, Acknowledged, Batch, GroupConsumer, InputRecord, Intake,
    KafkaFailure, KafkaSettings, MemberIdentity, ProcessingGuarantee, Retry, TopicPartition,
};
use feedstream_stores::StoreError;
use tokio::sync::watch;

use crate::metrics::{OutcomeLabel, ProcessorMetrics, TopicLabel};
use crate::state::StateError;
use outbound::Outbound;
use records::{Effects, OutputTopics};
pub use task::task_dir;
use task::{Task, CHECKPOINT_INTERVAL};

#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    pub kafka: KafkaSettings,
    pub topics: Topics,
    /// Stores live under `<state_dir>/<application-id>/task-<i>/<store>`.
    pub state_dir: PathBuf,
    pub rules: FeedRules,
    pub max_batch_records: usize,
    pub max_batch_wait: Duration,
    /// Records buffered per input partition before it is paused, resumed at half
    /// (Kafka Streams' `buffered.records.per.partition`). Intake is not limited by the
    /// processing batch, so a task waiting for its other input keeps reading until that
    /// input arrives.
    pub buffered_records_per_partition: usize,
    /// How long a cycle goes on reading after its first record before it processes
    /// and commits (Kafka Streams' commit.interval.ms): fewer, larger commits (and
    /// transactions) at the price of latency. Zero: a cycle takes what has arrived.
    pub commit_interval: Duration,
    /// How long a task whose other input is empty and caught up waits for records of
    /// it not yet produced (an input that is not caught up is always waited for).
    pub max_task_idle: Duration,
    /// Backoff between attempts to deliver a batch while the broker fails.
    pub retry: RetryPolicy,
    pub client_id: String,
    /// Static membership in the processor group (see [`MemberIdentity::instance_id`]).
    pub instance_id: Option<String>,
    pub guarantee: ProcessingGuarantee,
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

/// Runs the processor until `shutdown` turns true, then finishes the batch in hand,
/// commits and closes its stores.
pub async fn run(
    settings: ProcessorSettings,
    metrics: ProcessorMetrics,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ProcessorError> {
    let partitions = verify_layout(&settings.kafka, &settings.topics, true)?;
    let topics = &settings.topics;
    let identity = MemberIdentity {
        group_id: topics.processor_group(),
        client_id: settings.client_id.clone(),
        instance_id: settings.instance_id.clone(),
    };
    let mut consumer = GroupConsumer::join(
        &settings.kafka,
        &identity,
        &[&topics.post_events, &topics.follow_events],
        metrics.stage.consumer_lag.clone(),
    )?;
    let producer = match settings.guarantee {
        ProcessingGuarantee::AtLeastOnce => {
            kafka::batch_producer(&settings.kafka, &settings.client_id)?
        }
        // One transactional id per instance: a restarted static instance fences its
        // predecessor and aborts what that one left open. A dynamic instance's id is
        // new at each start (its client id); what a killed one left open is aborted by
        // the broker after the transaction timeout.
        ProcessingGuarantee::ExactlyOnceV2 => transaction::transactional_producer(
            &settings.kafka,
            &settings.client_id,
            &match &settings.instance_id {
                Some(instance) => format!("{}-{instance}", topics.processor_group()),
                None => settings.client_id.clone(),
            },
        )?,
    };
    tracing::info!(
        partitions,
        group = %topics.processor_group(),
        guarantee = settings.guarantee.as_str(),
        "processor started"
    );

    let mut runtime = Runtime {
        settings: &settings,
        producer,
        metrics,
        assigned: BTreeSet::new(),
        tasks: BTreeMap::new(),
        paused: BTreeSet::new(),
        incomplete: BTreeMap::new(),
        next_first: 0,
        uncommitted: false,
        outputs: std::sync::Arc::new(OutputTopics::new(topics)),
        spare: Outbound::default(),
    };
    let stage = runtime.metrics.stage.clone();
    let result = drive(&mut runtime, &mut consumer, &stage, &mut shutdown).await;
    let closed = runtime.close_all_tasks();
    tracing::info!("processor stopped");
    result.and(closed)
}

struct Runtime<'s> {
    settings: &'s ProcessorSettings,
    producer: kafka::BatchProducer,
    metrics: ProcessorMetrics,
    assigned: BTreeSet<TopicPartition>,
    tasks: BTreeMap<i32, Task>,
    /// Input partitions paused because their task's buffer is full.
    paused: BTreeSet<TopicPartition>,
    /// Records of a partition whose twin is not assigned yet, for its task.
    incomplete: BTreeMap<i32, Vec<InputRecord>>,
    /// Task that goes first in the next processing round (round-robin).
    next_first: usize,
    /// Whether the stores hold writes of a batch whose transaction has not committed
    /// (exactly-once): the tasks may then not be closed clean.
    uncommitted: bool,
    outputs: std::sync::Arc<OutputTopics>,
    /// The outbound slots of the last batch, for the next one to reuse.
    spare: Outbound,
}

/// Most records read per intake.
const INTAKE_RECORDS: usize = 1000;

/// What a durable batch leaves for after its commit.
struct Done {
    effects: Effects,
    acknowledged: Acknowledged,
    started: Instant,
}

impl Stage for Runtime<'_> {
    const NAME: &'static str = "processor";
    type Error = ProcessorError;
    type Done = Done;

    /// A read waits for a first record, then gathers for the commit interval. While a
    /// task holds records of both its inputs, stream time lets it go on without waiting,
    /// so the read only takes what is already fetched: in a backlog every buffer is full
    /// and its partitions paused, and a wait for a record would last its whole length.
    fn intake(&self) -> Intake {
        let work_in_hand = self
            .tasks
            .values()
            .any(|task| !task.posts.is_empty() && !task.follows.is_empty());
        Intake {
            max_records: INTAKE_RECORDS,
            max_wait: if work_in_hand {
                Duration::ZERO
            } else {
                self.settings.max_batch_wait
            },
            linger: self.settings.commit_interval,
        }
    }

    fn take(&mut self, consumer: &GroupConsumer, batch: Batch) -> Result<(), ProcessorError> {
        for record in batch.records {
            self.route(record);
        }
        for change in batch.changes {
            self.apply_membership(change)?;
        }
        self.apply_backpressure(consumer)
    }

    /// Applies one batch of what stream time allows, then delivers its records,
    /// retrying while the broker fails (the batch stays in hand and nothing further is
    /// read, so the partitions wait). Should no commit succeed before a restart, the
    /// batch is replayed.
    async fn make_durable(
        &mut self,
        consumer: &GroupConsumer,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Option<Durable<Done>>, ProcessorError> {
        let started = Instant::now();
        let exactly_once = self.settings.guarantee == ProcessingGuarantee::ExactlyOnceV2;
        // From the first store write of the batch until its transaction commits, the
        // stores are ahead of what is committed: a failure in between (a store's, a
        // transaction's) must not let the tasks close clean.
        self.uncommitted = exactly_once;
        let mut effects = self.process_ready(consumer)?;
        if effects.commit.is_empty() {
            // Nothing was processed, so nothing was written.
            self.uncommitted = false;
            self.spare = effects.outbound;
            return Ok(None);
        }
        if exactly_once {
            // A failed transaction ends the run: the stores hold the aborted batch, so
            // the tasks are closed without a checkpoint and restored from the
            // changelogs (which hold committed records only) when they open again.
            let committed = transaction::commit_transaction(
                &self.producer,
                consumer,
                effects.outbound.records(),
                &effects.commit,
            )
            .await;
            let outcome = if committed.is_ok() {
                "committed"
            } else {
                "aborted"
            };
            self.metrics
                .transactions
                .get_or_create(&OutcomeLabel { outcome })
                .inc();
            let acknowledged = committed?;
            self.uncommitted = false;
            return Ok(Some(Durable {
                offsets: BTreeMap::new(),
                done: Done {
                    effects,
                    acknowledged,
                    started,
                },
            }));
        }
        let failures = &self.metrics.stage;
        let acknowledged = retry_transient(
            &self.settings.retry,
            shutdown,
            |retry: Retry<'_, KafkaFailure>| {
                failures.retried("kafka");
                tracing::warn!(error = %retry.error, attempt = retry.attempt, delay = ?retry.delay, "batch not acknowledged by the broker; sending it again");
            },
            || self.producer.deliver(effects.outbound.records()),
        )
        .await?;
        Ok(Some(Durable {
            offsets: std::mem::take(&mut effects.commit),
            done: Done {
                effects,
                acknowledged,
                started,
            },
        }))
    }

    fn after_commit(&mut self, done: Done) -> Result<(), ProcessorError> {
        self.checkpoint_after_commit(&done.acknowledged)?;
        let effects = done.effects;
        self.spare = effects.outbound;
        for (topic, count) in effects.records {
            self.metrics
                .records
                .get_or_create(&TopicLabel { topic })
                .inc_by(count);
        }
        self.metrics.feed_changes.inc_by(effects.feed_changes);
        self.metrics
            .changelog_records
            .inc_by(effects.changelog_records);
        self.metrics.fanout_entries.inc_by(effects.entries_added);
        for reason in effects.dead_letters {
            self.metrics.stage.dead_lettered(reason);
        }
        self.metrics
            .batch_seconds
            .observe(done.started.elapsed().as_secs_f64());
        Ok(())
    }
}

impl Runtime<'_> {
    /// Moves each task's changelog positions to what the broker acknowledged, then
    /// checkpoints the tasks that changed, at most once per [`CHECKPOINT_INTERVAL`].
    fn checkpoint_after_commit(
        &mut self,
        acknowledged: &Acknowledged,
    ) -> Result<(), ProcessorError> {
        let mut touched = BTreeSet::new();
        for (topic, partition, offset) in acknowledged.iter() {
            let Some(store) = self.outputs.changelog_of(topic) else {
                continue;
            };
            if let Some(task) = self.tasks.get_mut(&partition) {
                let position = task.positions.entry(store).or_insert(0);
                *position = (*position).max(offset + 1);
                touched.insert(partition);
            }
        }
        // Under exactly-once a task's checkpoint is written only when it closes clean:
        // between two batches the stores are as committed, but while one is processed
        // they run ahead of it, and a crash then must not find a checkpoint vouching for
        // them.
        if self.settings.guarantee == ProcessingGuarantee::ExactlyOnceV2 {
            return Ok(());
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
            if self.uncommitted {
                tracing::info!(
                    task = partition,
                    "task closed with an aborted batch in its stores; it restores from its changelogs when it opens again"
                );
                continue;
            }
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
