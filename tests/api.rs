//! The HTTP API as a product: its answers to bad input, tokens, rate limits, idempotency
//! keys, read-your-writes, and a broker that is gone.

mod common;

use std::time::{Duration, SystemTime};

use common::{Client, Deployment, Engines, PrivateKafka};
use feedstream_api::auth::TokenKeys;
use feedstream_core::ids::UserId;
use feedstream_harness::token;
use reqwest::StatusCode;

/// The API's /metrics page.
async fn metrics_of(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

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
    let (one, seven) = (token(1)?, token(7)?);
    let post = |body: String| {
        http.post(format!("{base}/posts"))
            .header("content-type", "application/json")
            .bearer_auth(&one)
            .body(body)
            .send()
    };
    let get = |path: &str| http.get(format!("{base}{path}")).bearer_auth(&one).send();

    let cases: Vec<(reqwest::Response, StatusCode, &str)> = vec![
        (
            post(r#"{"content": "   "}"#.into()).await?,
            StatusCode::BAD_REQUEST,
            "invalid_content",
        ),
        (
            post(serde_json::json!({"content": "x".repeat(501)}).to_string()).await?,
            StatusCode::BAD_REQUEST,
            "invalid_content",
        ),
        (
            post(r#"{"content": "hi", "extra": 1}"#.into()).await?,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            post(r#"{"content": "#.into()).await?,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            post("x".repeat(20_000)).await?,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            http.post(format!("{base}/follows"))
                .bearer_auth(&seven)
                .body(r#"{"followee_id": "7"}"#)
                .send()
                .await?,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
        ),
        (
            http.post(format!("{base}/follows"))
                .bearer_auth(&seven)
                .body(r#"{"followee_id": "-3"}"#)
                .send()
                .await?,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            http.delete(format!("{base}/follows/abc"))
                .bearer_auth(&seven)
                .send()
                .await?,
            StatusCode::BAD_REQUEST,
            "invalid_user_id",
        ),
        (
            get("/feeds/1?limit=0").await?,
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            get("/feeds/1?limit=101").await?,
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            get("/feeds/1?max_id=-3").await?,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            http.delete(format!("{base}/posts/abc"))
                .bearer_auth(&seven)
                .send()
                .await?,
            StatusCode::BAD_REQUEST,
            "invalid_post_id",
        ),
        (
            http.delete(format!("{base}/posts/123456"))
                .bearer_auth(&seven)
                .send()
                .await?,
            StatusCode::NOT_FOUND,
            "post_not_found",
        ),
        (
            get("/feeds/1?limit=x").await?,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            get("/feeds/1?color=red").await?,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            get("/feeds/x").await?,
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

    // A known path with a method it does not take: 405, saying which it takes.
    let wrong_method = http
        .put(format!("{base}/posts/123"))
        .bearer_auth(&one)
        .send()
        .await?;
    assert_eq!(header(&wrong_method, "allow"), "DELETE");
    let (status, code) = error_of(wrong_method).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );

    // Valid requests go through; metrics count them.
    let accepted = post(r#"{"content": "hello"}"#.into()).await?;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let body: serde_json::Value = accepted.json().await?;
    assert_eq!(
        body["post_id"], body["event_id"],
        "a post's id is its event's id"
    );
    let metrics = metrics_of(&http, &base).await?;
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

/// The 401 of a refused token: its JSON code and the `error` of its challenge.
async fn refusal_of(response: reqwest::Response) -> anyhow::Result<(StatusCode, String, String)> {
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (status, code) = error_of(response).await?;
    assert!(
        challenge.starts_with("Bearer realm=\"feedstream\"")
            && challenge.contains("error_description=\""),
        "{challenge}"
    );
    let error = challenge
        .split("error=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_string();
    Ok((status, code, error))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_is_the_subject_of_a_valid_token_and_a_feed_is_its_owners_only(
) -> anyhow::Result<()> {
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    deployment.create_topics(1).await?;
    // A rotation in progress: `new` signs, the harness's key still verifies.
    let new_key = "new:a-second-secret-that-signs-after-the-rotation";
    let keys = format!("{new_key},{}", feedstream_harness::TOKEN_KEYS);
    let mut command = deployment.command(&["api", "--listen", "127.0.0.1:0"]);
    command.env("FEEDSTREAM_TOKEN_KEYS", &keys);
    let (_api, base) = deployment.serve(command).await?;
    let http = reqwest::Client::new();
    let write = |authorization: Option<String>| {
        let request = http
            .post(format!("{base}/posts"))
            .body(r#"{"content": "who am I"}"#);
        match authorization {
            Some(value) => request.header("authorization", value),
            None => request,
        }
        .send()
    };
    let user = |id| UserId::new(id).expect("a valid id");
    let hour = Duration::from_secs(3600);
    let harness = feedstream_harness::token_keys()?;
    let expired = harness.mint(user(1), SystemTime::now() - 3 * hour, hour)?;
    let forged = TokenKeys::parse("harness:not-the-harness-secret-but-long-enough")?.mint(
        user(1),
        SystemTime::now(),
        hour,
    )?;
    let stranger = TokenKeys::parse("elsewhere:a-key-this-deployment-has-never-seen")?.mint(
        user(1),
        SystemTime::now(),
        hour,
    )?;
    let cases = [
        (None, "missing_token", "invalid_request"),
        (
            Some("Basic dXNlcjpwYXNz".to_string()),
            "invalid_token",
            "invalid_token",
        ),
        (
            Some("Bearer not.a.jwt".to_string()),
            "invalid_token",
            "invalid_token",
        ),
        (
            Some(format!("Bearer {expired}")),
            "token_expired",
            "invalid_token",
        ),
        (
            Some(format!("Bearer {forged}")),
            "invalid_token",
            "invalid_token",
        ),
        (
            Some(format!("Bearer {stranger}")),
            "invalid_token",
            "invalid_token",
        ),
    ];
    for (index, (authorization, code, error)) in cases.into_iter().enumerate() {
        let refusal = refusal_of(write(authorization).await?).await?;
        assert_eq!(
            refusal,
            (
                StatusCode::UNAUTHORIZED,
                code.to_string(),
                error.to_string()
            ),
            "case {index}"
        );
    }

    // Tokens of the old key and of the new one (minted by the CLI) both act as their
    // subject; a lower-case scheme is still Bearer.
    let (ok, minted, stderr) = {
        let output = deployment
            .command(&["token", "--user", "5", "--ttl", "10m"])
            .env("FEEDSTREAM_TOKEN_KEYS", new_key)
            .output()
            .await?;
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert!(ok, "feedstream token failed: {stderr}");
    for (authorization, author) in [
        (format!("Bearer {}", token(4)?), "4"),
        (format!("bearer {minted}"), "5"),
    ] {
        let response = write(Some(authorization)).await?;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: serde_json::Value = response.json().await?;
        assert!(body["post_id"].is_string(), "{body} for user {author}");
    }

    // A home feed is private.
    let own = http
        .get(format!("{base}/feeds/5"))
        .bearer_auth(&minted)
        .send()
        .await?;
    assert_eq!(own.status(), StatusCode::OK);
    let other = http
        .get(format!("{base}/feeds/4"))
        .bearer_auth(&minted)
        .send()
        .await?;
    let (status, code) = error_of(other).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let anonymous = http.get(format!("{base}/feeds/4")).send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let metrics = metrics_of(&http, &base).await?;
    for (reason, count) in [
        ("missing", 2),
        ("malformed", 2),
        ("expired", 1),
        ("bad_signature", 1),
        ("unknown_key", 1),
        ("forbidden", 1),
    ] {
        let line = format!("api_auth_rejections_total{{reason=\"{reason}\"}} {count}");
        assert!(metrics.contains(&line), "no `{line}` in {metrics}");
    }

    // Without keys the API does not start, and says what to set.
    let output = deployment
        .command(&["api", "--listen", "127.0.0.1:0"])
        .env_remove("FEEDSTREAM_TOKEN_KEYS")
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("FEEDSTREAM_TOKEN_KEYS"), "{stderr}");
    Ok(())
}

async fn post_as(
    http: &reqwest::Client,
    base: &str,
    user: u64,
) -> anyhow::Result<reqwest::Response> {
    Ok(http
        .post(format!("{base}/posts"))
        .bearer_auth(token(user)?)
        .body(r#"{"content": "counted"}"#)
        .send()
        .await?)
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_per_user_and_class_shared_by_instances_and_fail_open() -> anyhow::Result<()>
{
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    deployment.create_topics(1).await?;
    let limited = |node: &str, redis_url: &str| {
        let mut command =
            deployment.command(&["api", "--listen", "127.0.0.1:0", "--node-id", node]);
        command
            .env("FEEDSTREAM_WRITE_RATE_LIMIT", "3/60s")
            .env("FEEDSTREAM_READ_RATE_LIMIT", "5/60s")
            .env("REDIS_URL", redis_url);
        command
    };
    let (_one, one) = deployment
        .serve(limited("1", &deployment.redis_url))
        .await?;
    let (_two, two) = deployment
        .serve(limited("2", &deployment.redis_url))
        .await?;
    let http = reqwest::Client::new();

    // Three writes of user 9, alternating instances, pass; the fourth does not.
    let mut remaining = Vec::new();
    for base in [&one, &two, &one] {
        let response = post_as(&http, base, 9).await?;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(
            header(&response, "ratelimit-policy"),
            r#""writes";q=3;w=60"#
        );
        remaining.push(header(&response, "ratelimit"));
    }
    for (left, limit) in remaining.iter().zip(["r=2", "r=1", "r=0"]) {
        assert!(
            left.starts_with(&format!(r#""writes";{limit};t="#)),
            "{left}"
        );
    }
    let refused = post_as(&http, &two, 9).await?;
    let retry_after: u64 = header(&refused, "retry-after").parse()?;
    assert!(
        (1..=20).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    assert_eq!(header(&refused, "ratelimit-policy"), r#""writes";q=3;w=60"#);
    assert!(header(&refused, "ratelimit").starts_with(r#""writes";r=0;"#));
    let (status, code) = error_of(refused).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );

    // Another user, and another class of route, have limits of their own.
    assert_eq!(
        post_as(&http, &two, 10).await?.status(),
        StatusCode::ACCEPTED
    );
    let read = http
        .get(format!("{one}/feeds/9"))
        .bearer_auth(token(9)?)
        .send()
        .await?;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(header(&read, "ratelimit-policy"), r#""reads";q=5;w=60"#);
    // Reads have a limit of their own: the sixth within the window is 429.
    let read = || {
        http.get(format!("{two}/feeds/9"))
            .bearer_auth(token(9).unwrap_or_default())
            .send()
    };
    for left in (0..4).rev() {
        let response = read().await?;
        assert_eq!(response.status(), StatusCode::OK);
        let limit = header(&response, "ratelimit");
        assert!(
            limit.starts_with(&format!(r#""reads";r={left};"#)),
            "{limit}"
        );
    }
    let refused = read().await?;
    assert!(header(&refused, "retry-after").parse::<u64>()? >= 1);
    let (status, code) = error_of(refused).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    let metrics = metrics_of(&http, &two).await?;
    assert!(
        metrics.contains(r#"api_rate_limited_total{class="writes"} 1"#)
            && metrics.contains(r#"api_rate_limited_total{class="reads"} 1"#),
        "{metrics}"
    );

    // Requests are counted one by one however they interleave: of 24 reads of user 11
    // at once, over both instances, exactly 5 pass.
    let mut reads = tokio::task::JoinSet::new();
    for i in 0..24 {
        let base = if i % 2 == 0 { one.clone() } else { two.clone() };
        let (http, token) = (http.clone(), token(11)?);
        reads.spawn(async move {
            http.get(format!("{base}/feeds/11"))
                .bearer_auth(token)
                .send()
                .await
                .map(|response| response.status())
        });
    }
    let statuses = reads
        .join_all()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let passed = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((passed, refused), (5, 19), "{statuses:?}");

    // Without Redis, the limiter lets requests through and counts them.
    let nowhere = format!("redis://127.0.0.1:{}", feedstream_harness::free_port()?);
    let (_blind, blind) = deployment.serve(limited("3", &nowhere)).await?;
    for _ in 0..4 {
        let response = post_as(&http, &blind, 9).await?;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert!(!response.headers().contains_key("ratelimit"));
    }
    // A feed page, whose read the page script counts, comes from PostgreSQL instead.
    let read = http
        .get(format!("{blind}/feeds/9"))
        .bearer_auth(token(9)?)
        .send()
        .await?;
    assert_eq!(read.status(), StatusCode::OK);
    assert!(!read.headers().contains_key("ratelimit"));
    let metrics = metrics_of(&http, &blind).await?;
    assert!(
        metrics.contains("api_rate_limit_errors_total 5"),
        "{metrics}"
    );
    Ok(())
}

async fn keyed(
    request: reqwest::RequestBuilder,
    user: u64,
    key: &str,
) -> anyhow::Result<(StatusCode, serde_json::Value, bool)> {
    let response = request
        .bearer_auth(token(user)?)
        .header("idempotency-key", key)
        .send()
        .await?;
    let replayed = header(&response, "idempotent-replayed") == "true";
    Ok((response.status(), response.json().await?, replayed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_publishes_a_write_once_across_instances_and_restarts(
) -> anyhow::Result<()> {
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    deployment.create_topics(1).await?;
    let api = |node: &str| {
        deployment.serve(deployment.command(&["api", "--listen", "127.0.0.1:0", "--node-id", node]))
    };
    let (first, one) = api("1").await?;
    let (_second, two) = api("2").await?;
    let http = reqwest::Client::new();
    let post = |base: &str, content: &str| {
        http.post(format!("{base}/posts"))
            .json(&serde_json::json!({ "content": content }))
    };

    let (status, original, replayed) = keyed(post(&one, "once"), 3, "\"k-1\"").await?;
    assert_eq!(
        (status, replayed),
        (StatusCode::ACCEPTED, false),
        "{original}"
    );
    assert!(original["post_id"].is_string(), "{original}");
    // Another instance, and then a restarted one, answer the same and publish nothing.
    let again = keyed(post(&two, "once"), 3, "k-1").await?;
    assert_eq!(again, (StatusCode::ACCEPTED, original.clone(), true));
    drop(first);
    let (_third, three) = api("3").await?;
    let after_restart = keyed(post(&three, "once"), 3, "k-1").await?;
    assert_eq!(
        after_restart,
        (StatusCode::ACCEPTED, original.clone(), true)
    );

    // The same key for another request is refused; for another user it is another key.
    let (status, body, _) = keyed(post(&two, "something else"), 3, "k-1").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("idempotency_key_reused")
        )
    );
    let (status, other, _) = keyed(post(&two, "once"), 4, "k-1").await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(other["post_id"], original["post_id"]);

    // DELETE takes keys too.
    let unfollow = || http.delete(format!("{two}/follows/8"));
    let (status, unfollowed, _) = keyed(unfollow(), 3, "u-1").await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        keyed(unfollow(), 3, "u-1").await?,
        (StatusCode::ACCEPTED, unfollowed, true)
    );

    let (status, body, _) = keyed(post(&two, "x"), 3, "not a key").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_idempotency_key"))
    );

    // Instance two published user 4's post and one unfollow, and replayed one post and one unfollow.
    let metrics = metrics_of(&http, &two).await?;
    for line in [
        r#"api_events_published_total{type="POST_CREATED"} 1"#,
        r#"api_events_published_total{type="UNFOLLOWED"} 1"#,
        "api_idempotent_replays_total 2",
        r#"api_idempotency_conflicts_total{reason="mismatch"} 1"#,
    ] {
        assert!(metrics.contains(line), "no `{line}` in {metrics}");
    }
    let metrics = metrics_of(&http, &three).await?;
    assert!(
        !metrics.contains("api_events_published_total{"),
        "{metrics}"
    );
    Ok(())
}

/// Read-your-writes with no processor running, so nothing is ever materialized: the
/// author's own feed shows each post once it is accepted, and loses it once its
/// deletion is; no one else's feed shows it, and no one else can delete it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_author_reads_their_own_writes_before_the_pipeline_materializes_them(
) -> anyhow::Result<()> {
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    deployment.create_topics(1).await?;
    let (_api, base) = deployment.spawn_api(&[]).await?;
    let mut client = Client::new(base.clone());
    let first = client.post(21, "first").await?;
    let second = client.post(21, "second").await?;

    let page: serde_json::Value = client
        .http
        .get(format!("{base}/feeds/21"))
        .bearer_auth(token(21)?)
        .send()
        .await?
        .json()
        .await?;
    let shown: Vec<(String, String, String)> = page
        .as_array()
        .map(|posts| {
            posts
                .iter()
                .map(|post| {
                    let text = |field: &str| post[field].as_str().unwrap_or_default().to_string();
                    (text("id"), text("author_id"), text("content"))
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        shown,
        vec![
            (second.to_string(), "21".into(), "second".into()),
            (first.to_string(), "21".into(), "first".into())
        ],
        "{page}"
    );
    assert!(
        page[0]["created_at"]
            .as_str()
            .is_some_and(|at| at.starts_with("20")),
        "{page}"
    );
    let paged = client.feed_paged(21, 1).await?;
    assert_eq!(paged, vec![second, first]);
    assert_eq!(client.feed(22).await?, Vec::new());

    // Only its author deletes a post the pipeline has not stored yet; it leaves the
    // author's feed at once.
    let refused = client.try_delete_post(22, first).await?;
    let (status, code) = error_of(refused).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "post_not_found")
    );
    client
        .delete_post(21, first, Duration::from_secs(0))
        .await?;
    assert_eq!(client.feed(21).await?, vec![second]);
    let again = client.try_delete_post(21, first).await?;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);

    let metrics = metrics_of(&client.http, &base).await?;
    assert!(
        metrics.contains("api_read_your_writes_errors_total 0"),
        "{metrics}"
    );

    // Without Redis a post is still accepted, and the metric counts that its author
    // may not see it before the pipeline has stored it.
    let nowhere = format!("redis://127.0.0.1:{}", feedstream_harness::free_port()?);
    let mut blind = deployment.command(&["api", "--listen", "127.0.0.1:0"]);
    blind.env("REDIS_URL", &nowhere);
    let (_blind, blind) = deployment.serve(blind).await?;
    let mut without_redis = Client::new(blind.clone());
    without_redis.post(21, "unseen").await?;
    let metrics = metrics_of(&client.http, &blind).await?;
    assert!(
        metrics.contains("api_read_your_writes_errors_total 1"),
        "{metrics}"
    );
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
    let (_patient_api, patient) = deployment
        .serve(deployment.command(&[
            "api",
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "2",
            "--publish-timeout-ms",
            "60000",
        ]))
        .await?;
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
    let author = token(1)?;
    let write = || {
        http.post(format!("{base}/posts"))
            .bearer_auth(&author)
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

    // Keyed writes during the outage. On an API that waits a minute for the broker, a
    // keyed write holds its key while it waits: the same key meanwhile is 409.
    let waits_for_the_broker = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()?;
    let held = tokio::spawn(keyed(
        waits_for_the_broker
            .post(format!("{patient}/posts"))
            .body(r#"{"content": "held"}"#),
        2,
        "outage-held",
    ));
    let database = sqlx::PgPool::connect(&deployment.database_url).await?;
    feedstream_harness::eventually(
        Duration::from_secs(30),
        "the held write to claim its key",
        || async {
            let claimed: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM idempotency_keys WHERE key = 'outage-held'",
            )
            .fetch_one(&database)
            .await?;
            Ok(claimed == 1)
        },
    )
    .await?;
    let (status, body, _) = keyed(
        http.post(format!("{base}/posts"))
            .body(r#"{"content": "held"}"#),
        2,
        "outage-held",
    )
    .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("idempotency_key_in_use"))
    );
    // On the API that gives up after 2 s, a keyed write gets 503.
    let keyed_write = || {
        keyed(
            http.post(format!("{base}/posts"))
                .body(r#"{"content": "keyed"}"#),
            1,
            "outage-1",
        )
    };
    assert_eq!(keyed_write().await?.0, StatusCode::SERVICE_UNAVAILABLE);

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

    // The held write went through once the broker was back; its key now replays it.
    let (status, held, _) = held.await??;
    assert_eq!(status, StatusCode::ACCEPTED, "{held}");
    let replay = keyed(
        http.post(format!("{base}/posts"))
            .body(r#"{"content": "held"}"#),
        2,
        "outage-held",
    )
    .await?;
    assert_eq!(replay, (StatusCode::ACCEPTED, held, true));
    // The keyed write that got 503 publishes its stored event on retry, once.
    let (status, retried, replayed) = keyed_write().await?;
    assert_eq!(
        (status, replayed),
        (StatusCode::ACCEPTED, false),
        "{retried}"
    );
    assert_eq!(keyed_write().await?, (StatusCode::ACCEPTED, retried, true));
    Ok(())
}
