//! What operators see, on the real broker, PostgreSQL and Redis: every metric family the
//! dashboard and the runbooks name is on `/metrics` with samples from real traffic, JSON
//! logs follow one event from the API through the processor to the sink by its event id,
//! and the provisioned Grafana dashboard queries only metrics that exist.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{Client, Deployment, Engines};
use feedstream_harness::eventually;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const DEADLINE: Duration = Duration::from_secs(120);

/// Families every deployment exposes (issue 6), by their Prometheus names.
const FAMILIES: [&str; 13] = [
    "kafka_consumer_lag",
    "event_processing_duration_seconds",
    "event_retry",
    "dlq_messages",
    "fanout_entries",
    "fanout_size",
    "sink_batch_duration_seconds",
    "http_requests",
    "http_request_duration_seconds",
    "state_restore_records",
    "state_restore_duration_seconds",
    "state_restore_records_per_second",
    "state_store_size_bytes",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_logs_and_dashboard_follow_real_traffic() -> anyhow::Result<()> {
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    deployment.create_topics(2).await?;
    let log = deployment.dir.path().join("run.log");
    let state = deployment.dir.path().join("state");
    let mut command = deployment.command(&[
        "--log-format",
        "json",
        "run",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().unwrap_or_default(),
    ]);
    command
        .env("RUST_LOG", "warn,feedstream=debug")
        .stderr(std::fs::File::create(&log)?);
    let (_run, base) = deployment.serve(command).await?;
    let mut client = Client::new(base.clone());

    client.follow(2, 1).await?;
    let post = client.post(1, "traced from the API to the sink").await?;
    eventually(DEADLINE, "the post in the follower's feed", || async {
        Ok(client.feed(2).await?.contains(&post))
    })
    .await?;

    // The post's id is its event id: the API, the processor and the sink each log it.
    let event_id = post.to_string();
    eventually(
        DEADLINE,
        "log lines of the event from all three stages",
        || async {
            let stages = stages_logging(&log, &event_id)?;
            Ok(
                ["feedstream_api", "feedstream_topology", "feedstream_sinks"]
                    .iter()
                    .all(|stage| stages.contains(*stage)),
            )
        },
    )
    .await?;

    // A record the processor cannot decode, for a dead letter.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &deployment.brokers)
        .create()?;
    producer
        .send(
            FutureRecord::to(&deployment.topic("post-events"))
                .key("1")
                .payload("not an event"),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(error, _)| error)?;

    // Consumer lag comes with librdkafka's statistics, every few seconds.
    let metrics_page = || async {
        anyhow::Ok(
            reqwest::get(format!("{base}/metrics"))
                .await?
                .text()
                .await?,
        )
    };
    let ready = eventually(DEADLINE, "every metric family on /metrics", || async {
        let page = metrics_page().await?;
        Ok(missing(&page).is_empty() && page.contains("dlq_messages_total"))
    })
    .await;
    let page = metrics_page().await?;
    assert!(
        ready.is_ok(),
        "missing families {:?}:\n{page}",
        missing(&page)
    );
    let families = families_on(&page);
    assert_eq!(
        sample(&page, "dlq_messages_total{reason=\"undecodable\"}"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "event_retry_total{type=\"postgres\"}"),
        Some(0.0)
    );
    // Samples from the traffic above: one post reaching two feeds (author and follower).
    assert_eq!(sample(&page, "fanout_size_count"), Some(1.0), "{page}");
    assert_eq!(sample(&page, "fanout_size_sum"), Some(2.0), "{page}");
    assert_eq!(
        sample(
            &page,
            "event_processing_duration_seconds_count{type=\"POST_CREATED\"}"
        ),
        Some(1.0)
    );
    assert!(sample(&page, "fanout_entries_total").is_some_and(|n| n >= 2.0));
    assert!(sample(
        &page,
        "sink_batch_duration_seconds_count{sink=\"postgres\"}"
    )
    .is_some_and(|n| n >= 1.0));
    assert!(
        sample(&page, "sink_batch_duration_seconds_count{sink=\"redis\"}")
            .is_some_and(|n| n >= 1.0)
    );
    assert_eq!(
        sample(
            &page,
            "http_requests_total{route=\"/posts\",method=\"POST\",status=\"202\"}"
        ),
        Some(1.0)
    );
    assert!(page.lines().any(|line| line.starts_with(
        "http_request_duration_seconds_count{route=\"/feeds/{user_id}\",method=\"GET\"}"
    )));

    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards/feedstream.json"),
    )?)?;
    let queried = dashboard_metrics(&dashboard);
    assert!(queried.len() >= 10, "{queried:?}");
    for metric in &queried {
        assert!(
            families.iter().any(|family| family_of(metric, family)),
            "the dashboard queries {metric}, which no command exposes"
        );
    }
    Ok(())
}

fn missing(page: &str) -> Vec<&'static str> {
    let families = families_on(page);
    FAMILIES
        .into_iter()
        .filter(|family| !families.contains(*family))
        .collect()
}

/// Targets of the JSON log lines that carry `event_id`, as crate names. Fails on any
/// line that is not JSON.
fn stages_logging(log: &Path, event_id: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut stages = BTreeSet::new();
    for line in std::fs::read_to_string(log)?.lines() {
        let record: serde_json::Value = serde_json::from_str(line)
            .map_err(|error| anyhow::anyhow!("log line is not JSON ({error}): {line}"))?;
        if record["fields"]["event_id"].as_str() == Some(event_id) {
            let target = record["target"].as_str().unwrap_or_default();
            stages.insert(target.split("::").next().unwrap_or_default().to_string());
        }
    }
    Ok(stages)
}

/// Metric families declared on a /metrics page (`# TYPE name kind`).
fn families_on(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_string)
        .collect()
}

fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Whether `metric` is a sample name of `family`.
fn family_of(metric: &str, family: &str) -> bool {
    metric == family
        || ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .any(|suffix| metric == format!("{family}{suffix}"))
}

/// Metric names in the dashboard's PromQL: identifiers with an underscore, outside
/// string literals, other than functions.
fn dashboard_metrics(dashboard: &serde_json::Value) -> BTreeSet<String> {
    let mut metrics = BTreeSet::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let outside_strings: String = expr
                .split('"')
                .enumerate()
                .filter(|(index, _)| index % 2 == 0)
                .map(|(_, part)| part)
                .collect::<Vec<_>>()
                .join(" ");
            metrics.extend(
                outside_strings
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|word| word.contains('_') && *word != "histogram_quantile")
                    .map(str::to_string),
            );
        }
    }
    metrics
}
