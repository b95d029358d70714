//! Metrics of the processor, registered under `feedstream_processor_*`, and the failure
//! metrics every runtime shares, named without a prefix by Prometheus conventions.

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub task: i32,
    pub store: &'static str,
}

/// What failed: `kafka`, `postgres`, `redis`, or `record` for a record retried alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryType {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    pub group: String,
    pub topic: String,
    pub partition: i32,
}

/// Retries, dead letters and consumer lag of every runtime in the process.
#[derive(Clone, Default)]
pub struct FailureMetrics {
    retries: Family<RetryType, Counter>,
    dead_letters: Family<ReasonLabel, Counter>,
    pub consumer_lag: Family<LagLabels, Gauge>,
}

impl FailureMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "event_retry",
            "Retries after a failure, by what failed (kafka, postgres, redis; record: one record retried alone)",
            metrics.retries.clone(),
        );
        registry.register(
            "dlq_messages",
            "Records sent to the dead-letter topic, by reason",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "kafka_consumer_lag",
            "Records between a consumer group's position and the end of each partition it owns",
            metrics.consumer_lag.clone(),
        );
        metrics
    }

    pub fn retried(&self, r#type: &'static str) {
        self.retries.get_or_create(&RetryType { r#type }).inc();
    }

    pub fn dead_lettered(&self, reason: &'static str) {
        self.dead_letters
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

#[derive(Clone)]
pub struct ProcessorMetrics {
    pub records: Family<TopicLabel, Counter>,
    pub feed_changes: Counter,
    pub failures: FailureMetrics,
    pub batch_seconds: Histogram,
    pub active_tasks: Gauge,
    pub restored_records: Counter,
    pub restore_seconds: Histogram,
    pub restore_rate: Gauge<f64, AtomicU64>,
    pub store_size_bytes: Family<StoreLabels, Gauge>,
}

impl ProcessorMetrics {
    /// Registers under `feedstream_processor_*`; `failures` is registered by its owner.
    pub fn register(registry: &mut Registry, failures: FailureMetrics) -> Self {
        let metrics = Self {
            records: Family::default(),
            feed_changes: Counter::default(),
            failures,
            batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            active_tasks: Gauge::default(),
            restored_records: Counter::default(),
            restore_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            restore_rate: Gauge::default(),
            store_size_bytes: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("processor");
        registry.register(
            "records",
            "Input records processed, by topic",
            metrics.records.clone(),
        );
        registry.register(
            "feed_changes",
            "Feed changes sent to feed-events",
            metrics.feed_changes.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "Time from the end of intake to the commit of a batch",
            metrics.batch_seconds.clone(),
        );
        registry.register(
            "active_tasks",
            "Tasks (partition pairs) this instance runs",
            metrics.active_tasks.clone(),
        );
        registry.register(
            "restored_records",
            "Changelog records applied while restoring stores",
            metrics.restored_records.clone(),
        );
        registry.register(
            "restore_duration_seconds",
            "Time to restore one store of one task",
            metrics.restore_seconds.clone(),
        );
        registry.register(
            "restore_rate",
            "Records per second of the latest store restoration",
            metrics.restore_rate.clone(),
        );
        registry.register(
            "store_size_bytes",
            "Approximate on-disk size of each store, by task",
            metrics.store_size_bytes.clone(),
        );
        metrics
    }
}
