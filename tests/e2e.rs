//! End to end over HTTP, on the real broker, PostgreSQL and Redis: the feeds that
//! `feedstream` serves equal the reference model, and replaying feed-events into the
//! sink changes nothing.

mod common;

use std::time::Duration;

use common::{group_caught_up, Client, Deployment, Engines};
use feedstream_core::model::{compare, expected_feeds};
use feedstream_harness::eventually;
use rdkafka::ClientConfig;

const BACKFILL: usize = 100;
const USERS: [u64; 6] = [1, 2, 3, 4, 5, 6];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_match_the_model_and_survive_a_sink_replay() -> anyhow::Result<()> {
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    deployment.create_topics(3).await?;
    let (_api, base) = deployment.spawn_api(&[]).await?;
    let _processor = deployment.spawn_processor("processor")?;
    let mut sink = deployment.spawn(&["sink"])?;
    let mut client = Client::new(base);

    // A small social graph, then posts, then changes to the graph.
    for (follower, followee) in [(2, 1), (3, 1), (1, 2), (4, 3), (5, 4), (6, 1)] {
        client.follow(follower, followee).await?;
    }
    for (author, text) in [
        (1, "hello"),
        (2, "hi 1"),
        (3, "three"),
        (1, "again"),
        (4, "four"),
        (5, "five"),
    ] {
        client.post(author, text).await?;
    }
    client.follow(5, 1).await?; // backfills 1's posts
    client.unfollow(3, 1).await?; // removes 1's posts from 3's feed
    client.post(1, "after the unfollow").await?;
    client.follow(3, 2).await?;
    client.post(2, "late").await?;

    let expected = expected_feeds(&client.events, BACKFILL);
    assert!(expected.len() >= 5, "the scenario gives most users a feed");
    let observed = client
        .await_feeds(&USERS, &expected, Duration::from_secs(120))
        .await?;
    let found = compare(&expected, &observed);
    assert!(found.is_clean(), "feeds differ from the model: {found}");
    for (user, feed) in &observed {
        assert!(
            feed.windows(2).all(|pair| pair[0] > pair[1]),
            "feed of {user} is not newest first: {feed:?}"
        );
    }

    // Reads go through Redis: once the sink is quiet, a read fills each feed from
    // PostgreSQL and the next one is served from Redis, unchanged.
    assert_eq!(client.feeds(&USERS).await?, observed);
    assert_eq!(client.feeds(&USERS).await?, observed);
    let metrics = client
        .http
        .get(format!("{}/metrics", client.base))
        .send()
        .await?
        .text()
        .await?;
    let hits: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("feed_cache_hits_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(hits > 0.0, "no feed page was served from Redis:\n{metrics}");

    // Stop the sink and replay both of its topics from the beginning into the same
    // PostgreSQL and Redis, through a new consumer group.
    sink.kill().await?;
    let replay_group = format!("replay-{}", deployment.id);
    let _replay = deployment.spawn(&["sink", "--sink-group", &replay_group])?;
    let topics = [
        deployment.topic("feed-events"),
        deployment.topic("post-events"),
    ];
    eventually(
        Duration::from_secs(120),
        "the replaying sink to reach the end of its topics",
        || async { group_caught_up(&deployment.brokers, &replay_group, &topics) },
    )
    .await?;
    let replayed = client.feeds(&USERS).await?;
    assert_eq!(
        replayed, observed,
        "replaying feed-events changed the feeds"
    );

    let pool = sqlx::PgPool::connect(&deployment.database_url).await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM feeds")
        .fetch_one(&pool)
        .await?;
    let entries: usize = expected.values().map(|feed| feed.len()).sum();
    assert_eq!(
        rows as usize, entries,
        "PostgreSQL holds exactly the model's entries"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_is_idempotent() -> anyhow::Result<()> {
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    let first = deployment.create_topics(2).await?;
    assert!(
        first.contains(&format!(
            "created {}post-events (2 partitions)",
            deployment.topic_prefix
        )),
        "{first}"
    );
    let second = deployment.create_topics(2).await?;
    assert!(
        !second.contains("created"),
        "second run created topics again: {second}"
    );
    for topic in [
        "post-events",
        "follow-events",
        "feed-events",
        "dead-letter-events",
    ] {
        assert!(
            second.contains(&format!("exists  {}", deployment.topic(topic))),
            "{second}"
        );
    }
    assert!(
        second.contains(&format!(
            "{}-followers-changelog",
            deployment.application_id
        )),
        "{second}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_refuse_inputs_with_different_partition_counts() -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let engines = Engines::from_env();
    let deployment = Deployment::new(&engines).await?;
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", &engines.brokers)
        .create()?;
    let (posts, follows) = (
        deployment.topic("post-events"),
        deployment.topic("follow-events"),
    );
    let created = admin
        .create_topics(
            [
                &NewTopic::new(&posts, 2, TopicReplication::Fixed(1)),
                &NewTopic::new(&follows, 3, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new(),
        )
        .await?;
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    for command in [
        vec!["api", "--listen", "127.0.0.1:0"],
        vec!["sink"],
        vec!["process", "--state-dir", "unused"],
    ] {
        let (ok, _, stderr) = deployment.run(&command).await?;
        assert!(!ok, "{command:?} ran on mismatched topics");
        assert!(
            stderr.contains(&format!("{posts} has 2 partitions but {follows} has 3"))
                && stderr.contains("must match"),
            "{command:?} said: {stderr}"
        );
        assert!(
            stderr.contains("feedstream topics create --partitions"),
            "{command:?} said how to fix it: {stderr}"
        );
    }
    Ok(())
}
