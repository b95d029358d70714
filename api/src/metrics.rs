use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Metrics of the HTTP API, named by Prometheus conventions.
#[derive(Clone)]
pub struct ApiMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram>,
    pub published: Family<EventLabel, Counter>,
    pub publish_failures: Counter,
    pub auth_rejections: Family<ReasonLabel, Counter>,
    pub rate_limited: Family<ClassLabel, Counter>,
    pub rate_limit_errors: Counter,
    pub idempotent_replays: Counter,
    pub idempotency_conflicts: Family<ReasonLabel, Counter>,
    pub read_your_writes_errors: Counter,
    pub sse_connections: Gauge,
    pub sse_refused: Family<ReasonLabel, Counter>,
    pub sse_dropped: Family<ReasonLabel, Counter>,
}

impl ApiMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            // From 100 µs: a cached feed page is answered in well under a millisecond.
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            }),
            published: Family::default(),
            publish_failures: Counter::default(),
            auth_rejections: Family::default(),
            rate_limited: Family::default(),
            rate_limit_errors: Counter::default(),
            idempotent_replays: Counter::default(),
            idempotency_conflicts: Family::default(),
            read_your_writes_errors: Counter::default(),
            sse_connections: Gauge::default(),
            sse_refused: Family::default(),
            sse_dropped: Family::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, by route and method",
            metrics.duration.clone(),
        );
        registry.register(
            "api_events_published",
            "Events acknowledged by the broker, by type",
            metrics.published.clone(),
        );
        registry.register(
            "api_publish_failures",
            "Events the broker did not acknowledge in time",
            metrics.publish_failures.clone(),
        );
        registry.register(
            "api_auth_rejections",
            "Requests refused as unauthenticated (401, by why the token was refused) or \
             forbidden (403, reason=\"forbidden\")",
            metrics.auth_rejections.clone(),
        );
        registry.register(
            "api_rate_limited",
            "Requests refused with 429, by class of route (writes, reads)",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "api_rate_limit_errors",
            "Requests let through unchecked because the rate limiter's Redis did not answer",
            metrics.rate_limit_errors.clone(),
        );
        registry.register(
            "api_idempotent_replays",
            "Writes answered from a stored answer of their Idempotency-Key, publishing nothing",
            metrics.idempotent_replays.clone(),
        );
        registry.register(
            "api_idempotency_conflicts",
            "Writes refused over their Idempotency-Key: in_flight (409) or mismatch (422)",
            metrics.idempotency_conflicts.clone(),
        );
        registry.register(
            "api_read_your_writes_errors",
            "Accepted posts and deletions Redis could not record for their author's next read; \
             those wait for the pipeline",
            metrics.read_your_writes_errors.clone(),
        );
        registry.register(
            "api_sse_connections",
            "Live feed listeners (GET /feeds/{user_id}/stream) this instance serves",
            metrics.sse_connections.clone(),
        );
        registry.register(
            "api_sse_refused",
            "Live feed listeners refused: per_user (429) or total (503) over its bound",
            metrics.sse_refused.clone(),
        );
        registry.register(
            "api_sse_dropped",
            "Live feed listeners disconnected: slow (an event waited too long for the \
             client) or behind (the client fell behind what the stream keeps)",
            metrics.sse_dropped.clone(),
        );
        metrics
    }

    pub fn observe(&self, route: &'static str, method: &str, status: u16, seconds: f64) {
        let method = method_label(method);
        self.duration
            .get_or_create(&RouteLabels { route, method })
            .observe(seconds);
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
    }
}

/// The label of a request method: the methods of HTTP itself by name, any other as
/// `other`, so a client cannot add series by inventing methods.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn methods_of_http_keep_their_name_and_invented_ones_are_other() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("DELETE"), "DELETE");
        assert_eq!(method_label("BREW"), "other");
        assert_eq!(method_label("get"), "other");
    }
}
