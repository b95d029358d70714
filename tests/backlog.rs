//! A backlog replayed as an operator would: follows, then posts (every post later than
//! every follow), produced straight to the input topics before `feedstream process`
//! starts, and fetched through a deliberately small fetch path (a few records per
//! partition per fetch), so that a task's follows run dry again and again while its
//! posts pile up and their partitions are paused. Every feed must then equal the model:
//! no post may overtake the follows before it (stream time, KIP-695), and no paused
//! partition may stay paused across a rebalance (a member joining and leaving, or
//! expired by its session timeout).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use common::{envelope, group_lag, postgres_feeds, user, Deployment, Engines, InputProducer};
use feedstream_core::event::{Envelope, EventBody};
use feedstream_core::ids::{PostId, SnowflakeGenerator};
use feedstream_core::model::{compare, expected_feeds};
use feedstream_harness::{eventually, free_port, kill, metric, terminate};
use feedstream_kafka::topics::Topics;
use tokio::process::Child;

const PARTITIONS: u32 = 4;
const BACKFILL: usize = 10;
/// A handful of records per partition per fetch: a task's follows run dry between
/// fetches while the broker still holds thousands more, and its posts pile up until
/// their partitions are paused. No idle time (`max.task.idle.ms` 0, Kafka Streams'
/// default): a task never waits for records not produced yet, so only the rule that
/// it waits for records the broker holds keeps the posts behind their follows.
const SMALL_FETCHES: [&str; 6] = [
    "--consumer-property",
    "max.partition.fetch.bytes=1024",
    "--max-task-idle-ms",
    "0",
    // Small enough that a partition's posts fill it (1,500 in the larger backlog) and
    // the partition is paused.
    "--buffered-records-per-partition",
    "1000",
];

/// `follows` distinct follows among `users` (followees skewed towards small ids), then
/// `posts` posts; ids and timestamps grow in that order.
fn backlog(seed: u64, users: u64, follows: usize, posts: usize) -> Vec<Envelope> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let ids = SnowflakeGenerator::new(77).expect("node id");
    let mut events = Vec::with_capacity(follows + posts);
    let mut edges = BTreeSet::new();
    while edges.len() < follows {
        let follower = rng.u64(1..=users);
        let followee = 1 + (rng.f64().powi(2) * users as f64) as u64 % users;
        if follower != followee && edges.insert((follower, followee)) {
            events.push(envelope(&ids, follower, |_| EventBody::Followed {
                followee_id: user(followee),
            }));
        }
    }
    for _ in 0..posts {
        let author = rng.u64(1..=users);
        events.push(envelope(&ids, author, |id| EventBody::PostCreated {
            post_id: PostId::new(id.get()).expect("event ids are post ids"),
            content: format!("post by {author}"),
        }));
    }
    events
}

struct Replay {
    deployment: Deployment,
    topics: Topics,
    events: Vec<Envelope>,
}

impl Replay {
    /// A deployment whose inputs already hold a backlog of `follows` and `posts`.
    async fn produced(follows: usize, posts: usize) -> anyhow::Result<Self> {
        let seed = std::env::var("FEEDSTREAM_TEST_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        println!("seed {seed}");
        let engines = Engines::from_env();
        let deployment = Deployment::new(&engines).await?;
        deployment.create_topics(PARTITIONS).await?;
        let (migrated, _, stderr) = deployment.run(&["migrate"]).await?;
        anyhow::ensure!(migrated, "migrate failed: {stderr}");
        let topics = Topics::new(&deployment.topic_prefix, &deployment.application_id);
        let events = backlog(seed, 1_500, follows, posts);
        InputProducer::new(&deployment.brokers)?
            .send_events(&topics, &events)
            .await?;
        Ok(Self {
            deployment,
            topics,
            events,
        })
    }

    fn processor(&self, name: &str, metrics_port: u16, fetches: &[&str]) -> anyhow::Result<Child> {
        let (backfill, listen) = (BACKFILL.to_string(), format!("127.0.0.1:{metrics_port}"));
        let mut args = vec!["--backfill", &backfill, "--process-metrics-listen", &listen];
        args.extend_from_slice(fetches);
        self.deployment.spawn_processor_with(name, &args)
    }

    /// Records of `topics` that `group` has not committed yet.
    fn lag(&self, group: &str, topics: [&String; 2]) -> anyhow::Result<i64> {
        let topics = topics.map(String::clone);
        let brokers = &self.deployment.brokers;
        tokio::task::block_in_place(|| group_lag(brokers, group, &topics))
    }

    fn processor_lag(&self) -> anyhow::Result<i64> {
        let inputs = [&self.topics.post_events, &self.topics.follow_events];
        self.lag(&self.topics.processor_group(), inputs)
    }

    /// Waits until PostgreSQL holds every entry the model expects, or the processor
    /// and then the sink have committed all their input (nothing more will come), then
    /// requires the feeds to equal the model exactly.
    async fn require_every_feed(&self) -> anyhow::Result<()> {
        let expected = expected_feeds(&self.events, BACKFILL);
        let entries: usize = expected.values().map(BTreeSet::len).sum();
        let pool = sqlx::PgPool::connect(&self.deployment.database_url).await?;
        let sink_inputs = [&self.topics.feed_events, &self.topics.post_events];
        let settled = || async {
            let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM feeds")
                .fetch_one(&pool)
                .await?;
            // A lag the broker cannot tell yet (its group coordinator is loading) is
            // not zero.
            let drained = |lag: anyhow::Result<i64>| lag.is_ok_and(|lag| lag == 0);
            Ok(stored as usize >= entries
                || (drained(self.processor_lag())
                    && drained(self.lag(&self.topics.sink_group(), sink_inputs))))
        };
        eventually(
            Duration::from_secs(600),
            "every feed entry or drained inputs",
            settled,
        )
        .await
        .with_context(|| format!("processor lag {:?}", self.processor_lag()))?;
        let found = compare(&expected, &postgres_feeds(&pool).await?);
        println!(
            "{entries} expected entries in {} feeds: {found}",
            expected.len()
        );
        assert!(found.is_clean(), "{found}");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_backlog_reaches_every_feed_through_a_slow_fetch_path() -> anyhow::Result<()> {
    let replay = Replay::produced(20_000, 3_000).await?;
    let metrics = free_port()?;
    let _processor = replay.processor("a", metrics, &SMALL_FETCHES)?;
    let _sink = replay.deployment.spawn(&["sink"])?;
    replay.require_every_feed().await?;
    // The path under test was taken: tasks waited for an input the broker still held
    // records of, instead of running ahead of it.
    let waits = metric(metrics, "processor_input_wait_seconds_count").await?;
    assert!(waits >= 1.0, "no task ever waited for its other input");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_keeps_flowing_when_members_join_and_leave_or_expire() -> anyhow::Result<()> {
    let replay = Replay::produced(40_000, 6_000).await?;
    let stays = free_port()?;
    let _processor = replay.processor("stays", stays, &SMALL_FETCHES)?;
    let _sink = replay.deployment.spawn(&["sink"])?;
    // Mid-backlog, with partitions paused for backpressure.
    eventually(
        Duration::from_secs(120),
        "a paused input partition",
        || async {
            Ok(metric(stays, "processor_paused_partitions")
                .await
                .unwrap_or(0.0)
                >= 1.0)
        },
    )
    .await?;

    // A second instance joins, takes tasks, and leaves cleanly.
    let joins = free_port()?;
    let mut visitor = replay.processor("joins-and-leaves", joins, &SMALL_FETCHES)?;
    let has_tasks = |port: u16| async move {
        Ok(metric(port, "processor_active_tasks").await.unwrap_or(0.0) >= 1.0)
    };
    eventually(
        Duration::from_secs(120),
        "the second instance's tasks",
        || has_tasks(joins),
    )
    .await?;
    let lag = replay.processor_lag()?;
    assert!(
        lag > 0,
        "the backlog was done before the rebalance: make it larger"
    );
    println!("a second instance joined with {lag} input records left");
    terminate(&visitor)?;
    assert!(
        visitor.wait().await?.success(),
        "the second instance did not stop cleanly"
    );
    eventually(
        Duration::from_secs(120),
        "the first instance to own every task",
        || async {
            Ok(metric(stays, "processor_active_tasks").await.unwrap_or(0.0)
                >= f64::from(PARTITIONS))
        },
    )
    .await?;

    // Another joins and dies: the group expires it by its session timeout.
    let expires = free_port()?;
    let mut dies = replay.processor("expires", expires, &SMALL_FETCHES)?;
    eventually(
        Duration::from_secs(120),
        "the third instance's tasks",
        || has_tasks(expires),
    )
    .await?;
    println!(
        "a third instance took tasks with {} input records left; kill -9",
        replay.processor_lag()?
    );
    kill(&mut dies).await?;

    replay.require_every_feed().await
}
