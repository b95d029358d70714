use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub method: String,
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
        metrics
    }

    pub fn observe(&self, route: &'static str, method: &str, status: u16, seconds: f64) {
        let method = method.to_string();
        self.duration
            .get_or_create(&RouteLabels {
                route,
                method: method.clone(),
            })
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

/// The route template of a path, so metrics do not get one series per user.
pub fn route_of(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["posts"] => "/posts",
        ["posts", _] => "/posts/{post_id}",
        ["follows"] => "/follows",
        ["follows", _] => "/follows/{followee_id}",
        ["feeds", _] => "/feeds/{user_id}",
        ["health"] => "/health",
        ["metrics"] => "/metrics",
        _ => "other",
    }
}
