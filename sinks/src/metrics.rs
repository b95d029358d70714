use feedstream_topology::metrics::FailureMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Metrics of the sink, under `feedstream_sink_*`.
#[derive(Clone)]
pub struct SinkMetrics {
    pub posts_written: Counter,
    pub feed_changes_applied: Counter,
    pub failures: FailureMetrics,
    pub batch_seconds: Histogram,
}

/// Metrics of the read path, under `feedstream_read_*`.
#[derive(Clone, Default)]
pub struct ReadMetrics {
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_errors: Counter,
}

impl ReadMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let read = registry.sub_registry_with_prefix("read");
        read.register(
            "cache_hits",
            "Feed pages served from Redis",
            metrics.cache_hits.clone(),
        );
        read.register(
            "cache_misses",
            "Feed pages that had to read PostgreSQL",
            metrics.cache_misses.clone(),
        );
        read.register(
            "cache_errors",
            "Redis failures on the read path (served from PostgreSQL)",
            metrics.cache_errors.clone(),
        );
        metrics
    }
}

impl SinkMetrics {
    /// Registers under `feedstream_sink_*`; `failures` is registered by its owner.
    pub fn register(registry: &mut Registry, failures: FailureMetrics) -> Self {
        let metrics = Self {
            posts_written: Counter::default(),
            feed_changes_applied: Counter::default(),
            failures,
            batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        };
        let sink = registry.sub_registry_with_prefix("sink");
        sink.register(
            "posts_written",
            "Posts upserted into PostgreSQL",
            metrics.posts_written.clone(),
        );
        sink.register(
            "feed_changes_applied",
            "Feed changes applied to PostgreSQL and Redis",
            metrics.feed_changes_applied.clone(),
        );
        sink.register(
            "batch_duration_seconds",
            "Time to write and commit one batch",
            metrics.batch_seconds.clone(),
        );
        metrics
    }
}
