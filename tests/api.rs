//! The HTTP API's answers to bad input and to a broker that is gone.

mod common;

use std::time::Duration;

use common::{Deployment, Engines, PrivateKafka};
use reqwest::StatusCode;

async fn error_of(response: reqwest::Response) -> anyhow::Result<(StatusCode, String)> {
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    let code = body["error"].as_str().unwrap_or_default().to_string();
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error body has a message: {body}"
    );
    Ok((status, code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_4xx() -> anyhow::Result<()> {
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    deployment.create_topics(1).await?;
    let (_api, base) = deployment.spawn_api(&[]).await?;
    let http = reqwest::Client::new();
    let post = |user: Option<&str>, body: String| {
        let mut request = http
            .post(format!("{base}/posts"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(user) = user {
            request = request.header("X-User-Id", user);
        }
        request.send()
    };

    let cases: Vec<(reqwest::Response, StatusCode, &str)> = vec![
        (
            post(Some("1"), r#"{"content": "   "}"#.into()).await?,
            StatusCode::BAD_REQUEST,
            "invalid_content",
        ),
        (
            post(
                Some("1"),
                serde_json::json!({"content": "x".repeat(501)}).to_string(),
            )
            .await?,
            StatusCode::BAD_REQUEST,
            "invalid_content",
        ),
        (
            post(Some("1"), r#"{"content": "hi", "extra": 1}"#.into()).await?,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            post(Some("1"), r#"{"content": "#.into()).await?,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            post(Some("1"), "x".repeat(20_000)).await?,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            post(Some("abc"), r#"{"content": "hi"}"#.into()).await?,
            StatusCode::BAD_REQUEST,
            "invalid_user_id",
        ),
        (
            post(Some("0"), r#"{"content": "hi"}"#.into()).await?,
            StatusCode::BAD_REQUEST,
            "invalid_user_id",
        ),
        (
            post(None, r#"{"content": "hi"}"#.into()).await?,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            http.post(format!("{base}/follows"))
                .header("X-User-Id", "7")
                .body(r#"{"followee_id": "7"}"#)
                .send()
                .await?,
            StatusCode::BAD_REQUEST,
            "invalid_event",
        ),
        (
            http.post(format!("{base}/follows"))
                .header("X-User-Id", "7")
                .body(r#"{"followee_id": "-3"}"#)
                .send()
                .await?,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            http.delete(format!("{base}/follows/abc"))
                .header("X-User-Id", "7")
                .send()
                .await?,
            StatusCode::BAD_REQUEST,
            "invalid_user_id",
        ),
        (
            http.get(format!("{base}/feeds/1?limit=0")).send().await?,
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            http.get(format!("{base}/feeds/1?limit=101")).send().await?,
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            http.get(format!("{base}/feeds/1?max_id=-3")).send().await?,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            http.delete(format!("{base}/posts/abc"))
                .header("X-User-Id", "7")
                .send()
                .await?,
            StatusCode::BAD_REQUEST,
            "invalid_post_id",
        ),
        (
            http.delete(format!("{base}/posts/123456"))
                .header("X-User-Id", "7")
                .send()
                .await?,
            StatusCode::NOT_FOUND,
            "post_not_found",
        ),
        (
            http.delete(format!("{base}/posts/123456")).send().await?,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            http.get(format!("{base}/feeds/1?limit=x")).send().await?,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            http.get(format!("{base}/feeds/1?color=red")).send().await?,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            http.get(format!("{base}/feeds/x")).send().await?,
            StatusCode::BAD_REQUEST,
            "invalid_user_id",
        ),
        (
            http.get(format!("{base}/nowhere")).send().await?,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (index, (response, status, code)) in cases.into_iter().enumerate() {
        let (got_status, got_code) = error_of(response).await?;
        assert_eq!(
            (got_status, got_code.as_str()),
            (status, code),
            "case {index}"
        );
    }

    // Valid requests go through; metrics count them.
    let accepted = post(Some("1"), r#"{"content": "hello"}"#.into()).await?;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let body: serde_json::Value = accepted.json().await?;
    assert_eq!(
        body["post_id"], body["event_id"],
        "a post's id is its event's id"
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("api_events_published_total{type=\"POST_CREATED\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"/posts\""), "{metrics}");
    let health = http.get(format!("{base}/health")).send().await?;
    assert_eq!(health.status(), StatusCode::OK);
    let health: serde_json::Value = health.json().await?;
    for service in ["kafka", "postgres", "redis"] {
        assert_eq!(health[service]["status"], "up", "{health}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_answer_503_in_bounded_time_when_the_broker_is_gone() -> anyhow::Result<()> {
    let engines = Engines::from_env();
    // A private broker, so that stopping it leaves the other tests alone.
    let mut broker = PrivateKafka::start(&engines, 1).await?;
    let deployment = Deployment::on_broker(&engines, &broker.address()).await?;
    deployment.create_topics(1).await?;
    let log = deployment.dir.path().join("api.log");
    let mut command = deployment.command(&[
        "api",
        "--listen",
        "127.0.0.1:0",
        "--publish-timeout-ms",
        "2000",
        "--max-pending-publishes",
        "1",
    ]);
    command
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log)?);
    let (_api, base) = deployment.serve(command).await?;
    let log_lines = |text: &str| {
        std::fs::read_to_string(&log)
            .map(|log| log.lines().filter(|line| line.contains(text)).count())
            .unwrap_or(0)
    };
    // librdkafka's own line for a failed connection attempt.
    let attempt_lines = || {
        std::fs::read_to_string(&log)
            .map(|log| {
                log.lines()
                    .filter(|line| line.contains("Connection refused"))
                    .filter(|line| !line.contains("Kafka broker unreachable"))
                    .count()
            })
            .unwrap_or(0)
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let write = || {
        http.post(format!("{base}/posts"))
            .header("X-User-Id", "1")
            .body(r#"{"content": "hello"}"#)
            .send()
    };
    assert_eq!(write().await?.status(), StatusCode::ACCEPTED);

    broker.kill().await?;
    // An answer at all (rather than the client's own 30 s timeout) shows the API gives
    // up on the broker by itself.
    let response = write().await?;
    assert!(response.headers().contains_key("retry-after"));
    let (status, code) = error_of(response).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable")
    );

    // The producer queue holds one event: while one write waits for the broker, the
    // next is refused at once instead of piling up in memory.
    let waiting = tokio::spawn(write());
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    let overloaded = loop {
        let response = write().await?;
        let retry_after = response.headers().contains_key("retry-after");
        let (status, code) = error_of(response).await?;
        if code == "overloaded" {
            break Some((status, retry_after));
        }
        if tokio::time::Instant::now() > until {
            break None;
        }
    };
    assert_eq!(overloaded, Some((StatusCode::SERVICE_UNAVAILABLE, true)));
    let (status, _) = error_of(waiting.await??).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let health = http.get(format!("{base}/health")).send().await?;
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health: serde_json::Value = health.json().await?;
    assert_eq!(health["kafka"]["status"], "down", "{health}");
    assert!(health["kafka"]["error"].as_str().is_some(), "{health}");

    // The outage so far (several seconds of reconnect attempts by the API's clients)
    // is one line per broker address (the node and its bootstrap address), not a line
    // per attempt.
    let started = log_lines("Kafka broker unreachable");
    assert!((1..=2).contains(&started), "{started} outage lines");
    assert_eq!(
        attempt_lines(),
        0,
        "failed connection attempts were logged one by one"
    );

    // The broker comes back: writes succeed again, and the end of the outage is one
    // line with its length and failed attempts.
    broker.start_stopped().await?;
    feedstream_harness::eventually(
        Duration::from_secs(60),
        "a write to succeed again",
        || async { Ok(write().await?.status() == StatusCode::ACCEPTED) },
    )
    .await?;
    feedstream_harness::eventually(
        Duration::from_secs(30),
        "the end of the outage to be logged",
        || async { Ok(log_lines("Kafka broker reachable again") >= 1) },
    )
    .await?;
    assert!(log_lines("failed_attempts") >= 1);
    Ok(())
}
