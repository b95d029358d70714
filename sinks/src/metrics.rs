//! Metrics of the sink and of the read path, named by Prometheus conventions (see
//! `feedstream_kafka::metrics`).

use feedstream_kafka::StageMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Which store a sink step wrote: `postgres` or `redis`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: &'static str,
}

pub const POSTGRES: SinkLabel = SinkLabel { sink: "postgres" };
pub const REDIS: SinkLabel = SinkLabel { sink: "redis" };

#[derive(Clone)]
pub struct SinkMetrics {
    pub posts_written: Counter,
    pub feed_changes_applied: Family<SinkLabel, Counter>,
    pub batch_seconds: Family<SinkLabel, Histogram>,
    pub stage: StageMetrics,
}

impl SinkMetrics {
    /// Registers the sink's metrics; `stage` is registered by its owner.
    pub fn register(registry: &mut Registry, stage: StageMetrics) -> Self {
        let metrics = Self {
            posts_written: Counter::default(),
            feed_changes_applied: Family::default(),
            batch_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            stage,
        };
        registry.register(
            "sink_posts_written",
            "Posts upserted into PostgreSQL",
            metrics.posts_written.clone(),
        );
        registry.register(
            "sink_feed_changes_applied",
            "Feed changes written, by store: postgres, and redis (the cache applies those of the feeds it holds)",
            metrics.feed_changes_applied.clone(),
        );
        registry.register(
            "sink_batch_duration_seconds",
            "Time to write one batch into a store, retries included, by store (postgres, redis)",
            metrics.batch_seconds.clone(),
        );
        metrics
    }
}
