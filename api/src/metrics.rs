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
pub struct EventLabel {
    pub event_type: &'static str,
}

/// HTTP metrics, under `feedstream_http_*` and `feedstream_api_*`.
#[derive(Clone)]
pub struct ApiMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RequestLabels, Histogram>,
    pub published: Family<EventLabel, Counter>,
    pub publish_failures: Counter,
}

impl ApiMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            published: Family::default(),
            publish_failures: Counter::default(),
        };
        let http = registry.sub_registry_with_prefix("http");
        http.register(
            "requests",
            "HTTP requests answered",
            metrics.requests.clone(),
        );
        http.register(
            "request_duration_seconds",
            "HTTP request latency",
            metrics.duration.clone(),
        );
        let api = registry.sub_registry_with_prefix("api");
        api.register(
            "events_published",
            "Events acknowledged by the broker, by type",
            metrics.published.clone(),
        );
        api.register(
            "publish_failures",
            "Events the broker did not acknowledge in time",
            metrics.publish_failures.clone(),
        );
        metrics
    }

    pub fn observe(&self, route: &'static str, method: &str, status: u16, seconds: f64) {
        let labels = RequestLabels {
            route,
            method: method.to_string(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
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
