//! A task: the stores of one partition of both inputs, its two input buffers, its
//! changelog positions and its checkpoint.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use feedstream_core::event::InputTopic;
use feedstream_core::feed::TaskStores;
use feedstream_core::stream_time::StreamTime;
use feedstream_kafka::{InputRecord, ProcessingGuarantee};
use feedstream_stores::{RocksDbStore, StoreName};

use super::ProcessorSettings;
use crate::metrics::{ProcessorMetrics, StoreLabels};
use crate::state::{Checkpoint, StateError, StateOpener};

pub(super) struct Task {
    pub(super) partition: i32,
    pub(super) dir: PathBuf,
    pub(super) stores: TaskStores<RocksDbStore>,
    /// Next changelog offset each store reflects, as acknowledged by the broker.
    pub(super) positions: BTreeMap<StoreName, i64>,
    pub(super) posts: VecDeque<InputRecord>,
    pub(super) follows: VecDeque<InputRecord>,
    /// Set while one input is empty and the other waits for it.
    pub(super) waiting: Option<Waiting>,
    /// When the stores were last synced and checkpointed.
    pub(super) checkpointed: Instant,
}

/// A task's wait for its empty input.
pub(super) struct Waiting {
    pub(super) input: InputTopic,
    pub(super) since: Instant,
    /// Since when the broker has said the input is caught up (records still to come
    /// have not been produced yet); `None` while it holds unread records of it.
    pub(super) caught_up_since: Option<Instant>,
    /// Whether the wait was logged: it is, once it lasts [`WAIT_LOGGED_AFTER`].
    pub(super) logged: bool,
}

/// Longest time between checkpoints of a task that keeps changing. A checkpoint syncs
/// each store's WAL and writes a file (three fsyncs); between checkpoints the stores
/// run ahead of the file, and a crash only makes the restore replay the changelog from
/// the older position (its records are idempotent puts and deletes).
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

impl Task {
    /// Opens the task's stores and restores them to the end of their changelogs before
    /// the task processes anything.
    pub(super) fn open(
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
        if settings.guarantee == ProcessingGuarantee::ExactlyOnceV2 {
            // From now on the stores may hold writes not yet committed: only a clean
            // close writes a checkpoint again (see `Runtime::checkpoint_after_commit`).
            Checkpoint::remove(&dir)?;
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
    pub(super) fn checkpoint(&mut self, full_flush: bool) -> Result<(), StateError> {
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

    pub(super) fn close(mut self) -> Result<(), StateError> {
        self.checkpoint(true)
    }

    pub(super) fn record_sizes(&mut self, metrics: &ProcessorMetrics) {
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

pub(super) fn stream_time(record: &InputRecord) -> StreamTime {
    (
        record.timestamp.unwrap_or(i64::MIN),
        record.event_id.unwrap_or(0),
    )
}
