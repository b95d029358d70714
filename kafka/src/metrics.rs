//! The metrics every Kafka stage shares (retries, dead letters, consumer lag, where its
//! cycles spend their time), named by Prometheus conventions (unit suffixes, `_total` on
//! counters, no application prefix: the `job` label of a scrape says which deployment
//! they come from).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// What a retry can be for: `record` is one record retried alone.
pub const RETRY_TYPES: [&str; 4] = ["kafka", "postgres", "redis", "record"];

/// What failed: one of [`RETRY_TYPES`].
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

/// A step of a stage's cycle (see `stage::drive`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CycleStep {
    pub stage: &'static str,
    pub step: &'static str,
}

/// Retries, dead letters, consumer lag and cycle time of every stage in the process.
#[derive(Clone, Default)]
pub struct StageMetrics {
    retries: Family<RetryType, Counter>,
    dead_letters: Family<ReasonLabel, Counter>,
    pub consumer_lag: Family<LagLabels, Gauge>,
    cycle_seconds: Family<CycleStep, Counter<f64, AtomicU64>>,
}

impl StageMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        // Every type from the start, at 0, so that rates and alerts have a series.
        for r#type in RETRY_TYPES {
            metrics
                .retries
                .get_or_create(&RetryType { r#type })
                .inc_by(0);
        }
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
        registry.register(
            "stage_cycle_seconds",
            "Time a stage's cycles spent, by step: read (waiting for and taking a batch), work (applying it and making its outputs durable), commit (the input offsets), finish (checkpoints, metrics)",
            metrics.cycle_seconds.clone(),
        );
        metrics
    }

    pub fn spent(&self, stage: &'static str, step: &'static str, time: Duration) {
        self.cycle_seconds
            .get_or_create(&CycleStep { stage, step })
            .inc_by(time.as_secs_f64());
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
