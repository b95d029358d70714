//! Metrics of the read path, named by the conventions of `feedstream_kafka::metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Metrics of the read path.
#[derive(Clone, Default)]
pub struct ReadMetrics {
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_errors: Counter,
    pub postgres_queries: Counter,
}

impl ReadMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "feed_cache_hits",
            "Feed pages served from Redis alone, in one round trip",
            metrics.cache_hits.clone(),
        );
        registry.register(
            "feed_cache_misses",
            "Feed pages that read PostgreSQL for something Redis lacked",
            metrics.cache_misses.clone(),
        );
        registry.register(
            "feed_cache_errors",
            "Redis failures on the read path (served from PostgreSQL)",
            metrics.cache_errors.clone(),
        );
        registry.register(
            "feed_read_postgres_queries",
            "PostgreSQL queries of the read path (none for a page served from Redis)",
            metrics.postgres_queries.clone(),
        );
        metrics
    }
}
