//! Metrics of the processor: its own work, the fan-out it causes and its state stores,
//! named by the conventions of `feedstream_kafka::metrics`.

use feedstream_kafka::StageMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

/// An input event's type (`POST_CREATED`, ...) or `INVALID` for a dead-lettered record.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventTypeLabel {
    pub r#type: &'static str,
}

/// How a transaction ended (exactly-once): `committed` or `aborted`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub task: i32,
    pub store: &'static str,
}

/// Metrics of the processor: its own work, the fan-out it causes and its state stores.
#[derive(Clone)]
pub struct ProcessorMetrics {
    pub records: Family<TopicLabel, Counter>,
    pub feed_changes: Counter,
    pub changelog_records: Counter,
    pub processing_seconds: Family<EventTypeLabel, Histogram>,
    pub fanout_entries: Counter,
    pub fanout_size: Histogram,
    pub stage: StageMetrics,
    pub batch_seconds: Histogram,
    pub transactions: Family<OutcomeLabel, Counter>,
    pub active_tasks: Gauge,
    pub tasks_opened: Counter,
    pub waiting_tasks: Gauge,
    pub paused_partitions: Gauge,
    pub input_wait_seconds: Histogram,
    pub restored_records: Counter,
    pub restore_seconds: Histogram,
    pub restore_rate: Gauge<f64, AtomicU64>,
    pub store_size_bytes: Family<StoreLabels, Gauge>,
}

impl ProcessorMetrics {
    /// Registers the processor's metrics; `stage` is registered by its owner.
    pub fn register(registry: &mut Registry, stage: StageMetrics) -> Self {
        let metrics = Self {
            records: Family::default(),
            feed_changes: Counter::default(),
            changelog_records: Counter::default(),
            // From 1 µs: applying one event is a few RocksDB reads and writes.
            processing_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_001, 2.0, 22))
            }),
            fanout_entries: Counter::default(),
            // 1, 2, 4, ... 2^20 feeds: up to the largest follower counts fanned out.
            fanout_size: Histogram::new(exponential_buckets(1.0, 2.0, 21)),
            stage,
            batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            transactions: Family::default(),
            active_tasks: Gauge::default(),
            tasks_opened: Counter::default(),
            waiting_tasks: Gauge::default(),
            paused_partitions: Gauge::default(),
            // From 1 ms to ~4.5 h: a long wait is a stalled input, worth seeing.
            input_wait_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 24)),
            restored_records: Counter::default(),
            restore_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            restore_rate: Gauge::default(),
            store_size_bytes: Family::default(),
        };
        registry.register(
            "processor_records",
            "Input records processed, by topic",
            metrics.records.clone(),
        );
        registry.register(
            "processor_feed_changes",
            "Feed changes sent to feed-events",
            metrics.feed_changes.clone(),
        );
        registry.register(
            "processor_changelog_records",
            "Records sent to the stores' changelogs (one per key written in a batch)",
            metrics.changelog_records.clone(),
        );
        registry.register(
            "event_processing_duration_seconds",
            "Time to apply one input event to the state stores and build its output, by event type",
            metrics.processing_seconds.clone(),
        );
        registry.register(
            "fanout_entries",
            "Feed entries added by the processor (fan-out on write, own posts, backfills)",
            metrics.fanout_entries.clone(),
        );
        registry.register(
            "fanout_size",
            "Feeds one new post was written into (1 for a celebrity's: merged on read)",
            metrics.fanout_size.clone(),
        );
        registry.register(
            "processor_batch_duration_seconds",
            "Time from the end of intake to the commit of a batch",
            metrics.batch_seconds.clone(),
        );
        registry.register(
            "processor_transactions",
            "Transactions of the processor under exactly_once_v2, by outcome; each abort ends the run and makes its tasks restore from their changelogs",
            metrics.transactions.clone(),
        );
        registry.register(
            "processor_active_tasks",
            "Tasks (partition pairs) this instance runs",
            metrics.active_tasks.clone(),
        );
        registry.register(
            "processor_tasks_opened",
            "Tasks opened (assigned and restored); with incremental rebalancing only moved tasks are",
            metrics.tasks_opened.clone(),
        );
        registry.register(
            "processor_waiting_tasks",
            "Tasks that wait for an empty input the broker still holds records of (stream-time order)",
            metrics.waiting_tasks.clone(),
        );
        registry.register(
            "processor_paused_partitions",
            "Input partitions not fetched because their task already buffers enough records",
            metrics.paused_partitions.clone(),
        );
        registry.register(
            "processor_input_wait_seconds",
            "How long a task waited for its empty input before processing went on",
            metrics.input_wait_seconds.clone(),
        );
        registry.register(
            "state_restore_records",
            "Changelog records applied while restoring stores",
            metrics.restored_records.clone(),
        );
        registry.register(
            "state_restore_duration_seconds",
            "Time to restore one store of one task",
            metrics.restore_seconds.clone(),
        );
        registry.register(
            "state_restore_records_per_second",
            "Records per second of the latest store restoration",
            metrics.restore_rate.clone(),
        );
        registry.register(
            "state_store_size_bytes",
            "Approximate on-disk size of each store, by task",
            metrics.store_size_bytes.clone(),
        );
        metrics
    }

    /// Records how long one event took and, for a new post, how many feeds it reached.
    pub fn observe_event(&self, r#type: &'static str, seconds: f64, entries_added: u64) {
        self.processing_seconds
            .get_or_create(&EventTypeLabel { r#type })
            .observe(seconds);
        if r#type == "POST_CREATED" {
            self.fanout_size.observe(entries_added as f64);
        }
    }
}
