//! Metrics of the read path, named by the conventions of `feedstream_kafka::metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Metrics of the read path.
#[derive(Clone, Default)]
pub struct ReadMetrics {
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_errors: Counter,
}

impl ReadMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "feed_cache_hits",
            "Feed pages served from Redis",
            metrics.cache_hits.clone(),
        );
        registry.register(
            "feed_cache_misses",
            "Feed pages that had to read PostgreSQL",
            metrics.cache_misses.clone(),
        );
        registry.register(
            "feed_cache_errors",
            "Redis failures on the read path (served from PostgreSQL)",
            metrics.cache_errors.clone(),
        );
        metrics
    }
}
