//! Failure handling end to end: a record PostgreSQL keeps rejecting is dead-lettered
//! after its attempts without holding up the others, operators list and replay it with
//! `feedstream dlq`, and every command stops cleanly on SIGTERM without losing work.

mod common;

use std::time::Duration;

use common::{Client, Deployment, Engines};
use feedstream_core::model::{compare, expected_feeds};
use feedstream_harness::{eventually, free_port, metric, terminate};

const DEADLINE: Duration = Duration::from_secs(120);
/// Content the test's PostgreSQL trigger refuses, as a constraint added by an operator
/// might: a failure that belongs to one record, not to the database being down.
const REFUSED: &str = "refused by the constraint";

async fn refuse_in_postgres(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION refuse_post() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.content = '{REFUSED}' THEN \
             RAISE EXCEPTION 'post refused' USING ERRCODE = 'check_violation'; \
           END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_post BEFORE INSERT ON posts \
           FOR EACH ROW EXECUTE FUNCTION refuse_post();"
    ))
    .execute(pool)
    .await?;
    Ok(())
}

fn lines_of(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_postgres_keeps_rejecting_is_dead_lettered_then_replayed() -> anyhow::Result<()> {
    let deployment = Deployment::new(&Engines::from_env()).await?;
    deployment.create_topics(1).await?;
    let (ok, _, stderr) = deployment.run(&["migrate"]).await?;
    anyhow::ensure!(ok, "migrate failed: {stderr}");
    let pool = sqlx::PgPool::connect(&deployment.database_url).await?;
    refuse_in_postgres(&pool).await?;

    let (_api, base) = deployment.spawn_api(&[]).await?;
    let _processor = deployment.spawn_processor("processor")?;
    let metrics_port = free_port()?;
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let mut sink = deployment.spawn(&[
        "sink",
        "--max-attempts",
        "3",
        "--retry-initial-ms",
        "10",
        "--sink-metrics-listen",
        &metrics_listen,
    ])?;
    let mut client = Client::new(base);
    client.follow(2, 1).await?;
    client.post(1, "before").await?;
    client.post(1, REFUSED).await?;
    client.post(1, "after").await?;

    // The sink goes past the refused post: the one after it becomes visible.
    let expected = expected_feeds(&client.events, 10);
    let without_refused: Vec<_> = {
        let mut feed: Vec<_> = expected[&common::user(2)].iter().copied().collect();
        feed.remove(1);
        feed.into_iter().rev().collect()
    };
    eventually(DEADLINE, "the posts around the refused one", || async {
        Ok(client.feed(2).await? == without_refused)
    })
    .await?;

    let (ok, stdout, stderr) = deployment
        .run(&["dlq", "list", "--reason", "write_rejected", "--json"])
        .await?;
    anyhow::ensure!(ok, "dlq list failed: {stderr}");
    let letters = lines_of(&stdout);
    assert_eq!(letters.len(), 1, "{stdout}");
    let letter = &letters[0];
    assert_eq!(letter["stage"], "sink");
    assert_eq!(letter["attempts"], 3);
    assert_eq!(letter["source_topic"], deployment.topic("post-events"));
    assert!(letter["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("post refused"));
    assert!(letter["first_failure_time"].as_str() <= letter["last_failure_time"].as_str());
    assert_eq!(letter["replayed"], false);
    assert!(letter["payload"]
        .as_str()
        .unwrap_or_default()
        .contains(REFUSED));
    let (_, other, _) = deployment
        .run(&["dlq", "list", "--reason", "undecodable", "--json"])
        .await?;
    assert!(lines_of(&other).is_empty(), "{other}");
    let (_, later, _) = deployment
        .run(&["dlq", "list", "--since", "2100-01-01T00:00:00Z", "--json"])
        .await?;
    assert!(lines_of(&later).is_empty(), "{later}");

    assert_eq!(metric(metrics_port, "dlq_messages_total").await?, 1.0);
    assert_eq!(
        metric(metrics_port, "event_retry_total{type=\"record\"}").await?,
        2.0
    );

    let lag_line = format!(
        "kafka_consumer_lag{{group=\"{}-sink\",topic=\"{}\",partition=\"0\"}} 0",
        deployment.application_id,
        deployment.topic("feed-events")
    );
    eventually(DEADLINE, "the sink to report its consumer lag", || async {
        let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .await?
            .text()
            .await?;
        Ok(text.lines().any(|line| line == lag_line))
    })
    .await?;

    // The operator removes the cause and replays: the post appears, and a second replay
    // publishes nothing.
    sqlx::raw_sql("DROP TRIGGER refuse_post ON posts")
        .execute(&pool)
        .await?;
    let (ok, stdout, stderr) = deployment
        .run(&["dlq", "replay", "--reason", "write_rejected"])
        .await?;
    anyhow::ensure!(ok, "dlq replay failed: {stderr}");
    assert!(stdout.starts_with("replayed "), "{stdout}");
    let observed = client.await_feeds(&[1, 2], &expected, DEADLINE).await?;
    let found = compare(&expected, &observed);
    assert!(found.is_clean(), "feeds after the replay: {found}");
    let (ok, stdout, stderr) = deployment
        .run(&["dlq", "replay", "--reason", "write_rejected"])
        .await?;
    anyhow::ensure!(ok, "second dlq replay failed: {stderr}");
    assert!(stdout.is_empty(), "second replay published again: {stdout}");
    assert!(stderr.contains("1 replayed before"), "{stderr}");

    terminate(&sink)?;
    assert!(sink.wait().await?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_finishes_its_work_and_exits_0_on_sigterm() -> anyhow::Result<()> {
    let deployment = Deployment::new(&Engines::from_env()).await?;
    deployment.create_topics(2).await?;
    let (mut api, base) = deployment.spawn_api(&[]).await?;
    let mut processor = deployment.spawn_processor("processor")?;
    let mut sink = deployment.spawn(&["sink"])?;
    let mut client = Client::new(base);
    for follower in 2..=6 {
        client.follow(follower, 1).await?;
    }
    // Stop everything while posts are still being fanned out and written.
    for n in 0..40 {
        client.post(1 + n % 3, &format!("post {n}")).await?;
    }
    for child in [&processor, &sink, &api] {
        terminate(child)?;
    }
    for (name, child) in [
        ("processor", &mut processor),
        ("sink", &mut sink),
        ("api", &mut api),
    ] {
        let status = child.wait().await?;
        assert!(status.success(), "{name} exited with {status}");
    }

    // What they committed plus what they left is everything: a restart completes the
    // feeds; the one-process `run` command stops the same way.
    let state = deployment.dir.path().join("processor");
    let (mut run, base) = deployment
        .spawn_serving(&[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            state.to_str().unwrap_or_default(),
        ])
        .await?;
    client.base = base;
    let users: Vec<u64> = (1..=6).collect();
    let expected = expected_feeds(&client.events, 100);
    let observed = client.await_feeds(&users, &expected, DEADLINE).await?;
    let found = compare(&expected, &observed);
    assert!(found.is_clean(), "feeds after the restart: {found}");
    terminate(&run)?;
    let status = run.wait().await?;
    assert!(status.success(), "run exited with {status}");
    Ok(())
}
