//! The crash and fault harness: a seeded workload of follows, unfollows, posts and
//! deletions, with 1% poison records written straight to the input topics, runs while
//! the processor and the sink (static members, each with its instance id) are killed -9
//! and restarted again and again, on a 3-node
//! Kafka cluster (replication factor 3, min.insync.replicas 2) whose partition leader
//! is killed -9 and restarted later, and all of whose brokers are stopped for 20 s;
//! PostgreSQL is stopped for 20 s and Redis is flushed; meanwhile a writer posts
//! through the API, whose every answer must be 202, or 503 with Retry-After. Once
//! everything has drained, PostgreSQL and every feed Redis holds must equal the
//! reference model, and the dead-letter topic must hold exactly the poison records.
//!
//! Size: `FEEDSTREAM_FAULT_EVENTS` (default 20,000, what CI runs; `scripts/fault-test.sh`
//! runs 200,000). Kills: `FEEDSTREAM_FAULT_KILLS` (default 12). Seed:
//! `FEEDSTREAM_TEST_SEED`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use common::{
    await_delivery, envelope, group_caught_up, group_lag, postgres_feeds, user, Deployment,
    Engines, InputProducer, PrivateKafka,
};
use feedstream_core::event::{Envelope, EventBody, ENVELOPE_VERSION};
use feedstream_core::ids::{EventId, PostId, SnowflakeGenerator, UserId};
use feedstream_core::model::{compare, expected_feeds};
use feedstream_harness::{eventually, free_port, kill, metric, poll_until};
use feedstream_kafka::dead_letter::read_dead_letters;
use feedstream_kafka::topics::Topics;
use feedstream_kafka::KafkaSettings;
use feedstream_read::layout;
use rdkafka::producer::DeliveryFuture;
use tokio::process::Child;

const PARTITIONS: u32 = 4;
const BACKFILL: usize = 3;
const CACHE_CAP: usize = 20;
/// Every poison record is one of these; the dead letter must carry the same reason.
/// The first four are post-events records, the last two follow-events records.
const POISON_KINDS: [&str; 6] = [
    "undecodable",
    "unknown_type",
    "unsupported_version",
    "nul_in_content",
    "wrong_key",
    "self_follow",
];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Generates the workload as it is produced: each event gets its id when it is sent, so
/// ids grow in production order, as the API would issue them.
struct Workload {
    rng: fastrand::Rng,
    ids: SnowflakeGenerator,
    users: u64,
    /// Current follows, as a list to pick from and a set to keep it free of repeats.
    follows: Vec<(u64, u64)>,
    following: BTreeSet<(u64, u64)>,
    live_posts: Vec<(u64, PostId)>,
}

/// One record for an input topic.
struct Outgoing {
    key: String,
    payload: Vec<u8>,
    event: Option<Envelope>,
    /// The dead-letter reason this record must get, if it is poison.
    poison: Option<&'static str>,
}

impl Workload {
    fn envelope(&self, actor: u64, body: impl FnOnce(EventId) -> EventBody) -> Envelope {
        envelope(&self.ids, actor, body)
    }

    /// Users 1-3 draw a tenth of all follows (celebrities); the rest are skewed towards
    /// small ids, so follower counts spread from none to many.
    fn followee(&mut self) -> u64 {
        if self.rng.u8(..10) == 0 {
            return self.rng.u64(1..=3);
        }
        let skew = self.rng.f64().powi(2);
        1 + (skew * self.users as f64) as u64 % self.users
    }

    /// The next record for one input topic: 1% poison; on follow-events 80% follows,
    /// 20% unfollows; on post-events 85% posts, 15% deletions.
    fn next(&mut self, post_events: bool) -> Outgoing {
        if self.rng.u8(..100) == 0 {
            return self.poison(post_events);
        }
        let actor = self.rng.u64(1..=self.users);
        let roll = self.rng.u8(..100);
        let event = if !post_events {
            if roll < 80 || self.follows.is_empty() {
                let mut followee = self.followee();
                if followee == actor {
                    followee = actor % self.users + 1;
                }
                if self.following.insert((actor, followee)) {
                    self.follows.push((actor, followee));
                }
                self.envelope(actor, |_| EventBody::Followed {
                    followee_id: user(followee),
                })
            } else {
                let index = self.rng.usize(..self.follows.len());
                let (follower, followee) = self.follows.swap_remove(index);
                self.following.remove(&(follower, followee));
                self.envelope(follower, |_| EventBody::Unfollowed {
                    followee_id: user(followee),
                })
            }
        } else if roll < 15 && !self.live_posts.is_empty() {
            let index = self.rng.usize(..self.live_posts.len());
            let (author, post_id) = self.live_posts.swap_remove(index);
            // One deletion in ten comes from someone else and must change nothing.
            let deleter = if self.rng.u8(..10) == 0 {
                self.live_posts.push((author, post_id));
                author % self.users + 1
            } else {
                author
            };
            self.envelope(deleter, |_| EventBody::PostDeleted { post_id })
        } else {
            let envelope = self.envelope(actor, |id| EventBody::PostCreated {
                post_id: PostId::new(id.get()).expect("event ids are post ids"),
                content: format!("post by {actor}"),
            });
            self.live_posts.push((
                actor,
                PostId::new(envelope.event_id.get()).expect("positive"),
            ));
            envelope
        };
        Outgoing {
            key: event.key().to_string(),
            payload: event.to_json(),
            event: Some(event),
            poison: None,
        }
    }

    fn poison(&mut self, post_events: bool) -> Outgoing {
        let kinds: &[&'static str] = if post_events {
            &POISON_KINDS[..4]
        } else {
            &POISON_KINDS[4..]
        };
        let kind = kinds[self.rng.usize(..kinds.len())];
        let actor = self.rng.u64(1..=self.users);
        let post = self.envelope(actor, |id| EventBody::PostCreated {
            post_id: PostId::new(id.get()).expect("event ids are post ids"),
            content: "poison".into(),
        });
        let follow = self.envelope(actor, |_| EventBody::Followed {
            followee_id: user(actor % self.users + 1),
        });
        let (key, payload) = match kind {
            "undecodable" => (actor.to_string(), b"{not json".to_vec()),
            "unknown_type" => {
                let text = String::from_utf8(post.to_json()).expect("JSON is UTF-8");
                (
                    actor.to_string(),
                    text.replace("POST_CREATED", "POST_EDITED").into_bytes(),
                )
            }
            "unsupported_version" => {
                let newer = Envelope {
                    version: ENVELOPE_VERSION + 1,
                    ..post
                };
                (actor.to_string(), newer.to_json())
            }
            "wrong_key" => (format!("{actor}0"), follow.to_json()),
            "self_follow" => {
                let own = Envelope {
                    body: EventBody::Followed {
                        followee_id: user(actor),
                    },
                    ..follow
                };
                (actor.to_string(), own.to_json())
            }
            _ => {
                let nul = Envelope {
                    body: EventBody::PostCreated {
                        post_id: PostId::new(post.event_id.get()).expect("event ids are post ids"),
                        content: "nul \0 byte".into(),
                    },
                    ..post
                };
                (actor.to_string(), nul.to_json())
            }
        };
        Outgoing {
            key,
            payload,
            event: None,
            poison: Some(kind),
        }
    }
}

/// What the producer sent.
#[derive(Default)]
struct Sent {
    events: Vec<Envelope>,
    /// (topic, partition, offset) → the reason its dead letter must carry.
    poison: BTreeMap<(String, i32, i64), &'static str>,
}

/// Records per run of one topic: the workload alternates between the two input topics
/// in runs of about this many records.
const RUN: usize = 100;

/// Produces `count` records, paced over about `pace`, in runs of one topic: records of a
/// run are sent together, and every acknowledgement of a run is awaited before the next
/// one starts. Since ids are issued in sending order, the broker then holds events in id
/// order across a task's two inputs, as the API's one-at-a-time acknowledged writes
/// leave them (the processor's stream-time order relies on it).
async fn produce(
    brokers: String,
    topics: Topics,
    mut workload: Workload,
    count: usize,
    pace: Duration,
    produced: Arc<AtomicUsize>,
) -> anyhow::Result<Sent> {
    let producer = InputProducer::new(&brokers)?;
    let started = Instant::now();
    let mut sent = Sent::default();
    let mut in_flight = Vec::new();
    let mut index = 0;
    while index < count {
        let due = pace.mul_f64(index as f64 / count as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        // Runs of follow-events are a little shorter than those of post-events.
        let post_events = workload.rng.u8(..100) < 55;
        let run = RUN.min(count - index);
        for _ in 0..run {
            let outgoing = workload.next(post_events);
            let topic = if post_events {
                &topics.post_events
            } else {
                &topics.follow_events
            };
            let id = outgoing.event.as_ref().map(|event| event.event_id);
            let delivery = producer.send(topic, &outgoing.key, &outgoing.payload, id)?;
            in_flight.push((delivery, outgoing.poison, topic.clone()));
            if let Some(event) = outgoing.event {
                sent.events.push(event);
            }
        }
        settle(&mut in_flight, &mut sent).await?;
        index += run;
        produced.store(index, Ordering::Relaxed);
    }
    Ok(sent)
}

async fn settle(
    in_flight: &mut Vec<(DeliveryFuture, Option<&'static str>, String)>,
    sent: &mut Sent,
) -> anyhow::Result<()> {
    for (delivery, poison, topic) in in_flight.drain(..) {
        let delivered = await_delivery(Some(delivery)).await?;
        if let (Some(reason), Some((partition, offset))) = (poison, delivered) {
            sent.poison.insert((topic, partition, offset), reason);
        }
    }
    Ok(())
}

/// The processes under test, restarted by the harness after each kill.
struct Cluster<'d> {
    deployment: &'d Deployment,
    processor: Child,
    sink: Child,
    celebrity_threshold: String,
    /// Where the processor serves its metrics.
    processor_metrics: u16,
}

impl<'d> Cluster<'d> {
    fn spawn_processor(
        deployment: &'d Deployment,
        celebrity_threshold: &str,
        metrics_port: u16,
    ) -> anyhow::Result<Child> {
        deployment.spawn_processor_with(
            "processor",
            &[
                "--process-metrics-listen",
                &format!("127.0.0.1:{metrics_port}"),
                "--backfill",
                &BACKFILL.to_string(),
                "--celebrity-threshold",
                celebrity_threshold,
                "--feed-cache-cap",
                &CACHE_CAP.to_string(),
                // Small batches: many commits for the kills to land between and inside.
                "--process-batch-records",
                "200",
                // Static membership: each restart after a kill -9 is refused until the
                // killed member's session expires, and joins again then.
                "--instance-id",
                "processor-0",
            ],
        )
    }

    fn spawn_sink(deployment: &'d Deployment) -> anyhow::Result<Child> {
        deployment.spawn(&[
            "sink",
            "--feed-cache-cap",
            &CACHE_CAP.to_string(),
            "--sink-batch-records",
            "500",
            "--retry-max-ms",
            "2000",
            "--instance-id",
            "sink-0",
        ])
    }
}

/// Stops or starts the local PostgreSQL cluster (`FEEDSTREAM_TEST_PG_CTL`, set by
/// scripts/test.sh: the pg_ctlcluster command of the cluster it started).
async fn postgres(action: &str) -> anyhow::Result<()> {
    let control = std::env::var("FEEDSTREAM_TEST_PG_CTL")
        .context("FEEDSTREAM_TEST_PG_CTL is not set: run the suite with scripts/test.sh, which knows how to stop and start PostgreSQL")?;
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(if action == "stop" {
            format!("{control} stop -m fast")
        } else {
            format!("{control} {action}")
        })
        .status()
        .await?;
    if !status.success() {
        bail!("`{control} {action}` failed: {status}");
    }
    Ok(())
}

/// Reads random feeds through the API all along, so that Redis holds feeds to keep up
/// to date (and to lose in the flush); failures while a service is down are expected.
fn spawn_readers(base: String, users: u64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a plain HTTP client builds");
        let mut rng = fastrand::Rng::with_seed(7);
        let mut served = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let owner = rng.u64(1..=users.min(200));
            let url = format!("{base}/feeds/{owner}?limit=20");
            // A token that cannot be minted reads nothing, and so serves nothing.
            let token = feedstream_harness::token(owner).unwrap_or_default();
            if let Ok(response) = http.get(url).bearer_auth(token).send().await {
                served += u64::from(response.status().is_success());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        served
    })
}

/// What the API answered the writer during the faults.
#[derive(Default)]
struct Writes {
    /// (author, post) of every 202.
    accepted: Vec<(u64, PostId)>,
    /// 503 with Retry-After: the broker did not acknowledge in time.
    unavailable: usize,
    /// Anything else: another status, a 503 without Retry-After, no answer at all.
    wrong: Vec<String>,
}

/// Posts through the API all along, as users `first..first + 4` whom nobody follows,
/// so that every write meets the faults: each must be answered 202, or 503 with
/// Retry-After, within the client's 30 s (the API's own publish timeout is 5 s).
fn spawn_writer(
    base: String,
    first: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Writes> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client builds");
        let mut writes = Writes::default();
        let mut n = 0u64;
        // Paces the writes (about 20 a second); nothing waits on this for a state.
        let mut pace = tokio::time::interval(Duration::from_millis(50));
        while !stop.load(Ordering::Relaxed) {
            pace.tick().await;
            let author = first + n % 5;
            n += 1;
            let token = match feedstream_harness::token(author) {
                Ok(token) => token,
                Err(error) => {
                    writes
                        .wrong
                        .push(format!("no token for user {author}: {error}"));
                    continue;
                }
            };
            let sent = http
                .post(format!("{base}/posts"))
                .bearer_auth(token)
                .json(&serde_json::json!({ "content": format!("write {n} during the faults") }))
                .send()
                .await;
            match sent {
                Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    match serde_json::from_value::<PostId>(body["post_id"].clone()) {
                        Ok(post_id) => writes.accepted.push((author, post_id)),
                        Err(error) => writes.wrong.push(format!("202 without a post id: {error}")),
                    }
                }
                Ok(response)
                    if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                        && response.headers().contains_key("retry-after") =>
                {
                    writes.unavailable += 1;
                }
                Ok(response) => writes.wrong.push(format!("answered {}", response.status())),
                Err(error) => writes.wrong.push(format!("no answer: {error}")),
            }
        }
        writes
    })
}

/// Compares every feed Redis holds with PostgreSQL's entries: the set must be exactly
/// the entries at or above its floor, at most the cap, and each in the model's feed.
/// Returns (feeds checked, lost, phantom).
async fn check_redis(
    deployment: &Deployment,
    pool: &sqlx::PgPool,
    expected: &BTreeMap<UserId, BTreeSet<PostId>>,
) -> anyhow::Result<(usize, usize, usize)> {
    let client = redis::Client::open(deployment.redis_url.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let pattern = layout::feed_key_pattern(&deployment.redis_prefix);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut redis)
        .await?;
    let (mut lost, mut phantom) = (0, 0);
    for key in &keys {
        let owner = layout::owner_of_feed_key(&deployment.redis_prefix, key)
            .ok_or_else(|| anyhow::anyhow!("{key} is not a feed key"))?;
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut redis)
            .await?;
        let cached: BTreeSet<i64> = members
            .iter()
            .map(|member| {
                layout::post_id_of(member)
                    .ok_or_else(|| anyhow::anyhow!("{member} in {key} is not a post id"))
            })
            .collect::<Result<_, _>>()?;
        assert!(cached.len() <= CACHE_CAP, "{key} holds {}", cached.len());
        let floor: Option<String> = redis::cmd("HGET")
            .arg(layout::meta_key(&deployment.redis_prefix, owner))
            .arg(layout::FLOOR)
            .query_async(&mut redis)
            .await?;
        let floor: i64 = floor
            .filter(|f| !f.is_empty())
            .map(|f| f.parse())
            .transpose()?
            .unwrap_or(0);
        let entries: Vec<i64> = sqlx::query_scalar(
            "SELECT f.post_id FROM feeds f JOIN posts p USING (post_id) \
             WHERE f.user_id = $1 AND f.post_id >= $2 AND p.deleted_at IS NULL",
        )
        .bind(owner)
        .bind(floor)
        .fetch_all(pool)
        .await?;
        let entries: BTreeSet<i64> = entries.into_iter().collect();
        let model = expected.get(&UserId::new(owner as u64)?);
        lost += entries.difference(&cached).count();
        phantom += cached
            .iter()
            .filter(|post| {
                !entries.contains(post)
                    || !model.is_some_and(|feed| {
                        feed.contains(&PostId::new(**post as u64).expect("positive"))
                    })
            })
            .count();
    }
    Ok((keys.len(), lost, phantom))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_stay_exact_through_crashes_outages_and_poison() -> anyhow::Result<()> {
    let events = env_number("FEEDSTREAM_FAULT_EVENTS", 20_000) as usize;
    let kills = env_number("FEEDSTREAM_FAULT_KILLS", 12).max(2);
    let seed = env_number("FEEDSTREAM_TEST_SEED", fastrand::u64(..));
    // About four followers per user: enough fan-out to matter on 2 cores.
    let users = (events as u64 / 10).max(100);
    // Users 1-3 draw a tenth of ~0.36 × events follows; they pass it, most users do not.
    let celebrity_threshold = (events as u64 / 150).max(5).to_string();
    println!("fault harness: {events} events, {users} users, {kills} kills, celebrity threshold {celebrity_threshold}, seed {seed} (FEEDSTREAM_TEST_SEED)");
    let mut rng = fastrand::Rng::with_seed(seed);

    let engines = Engines::from_env();
    let mut kafka = PrivateKafka::start(&engines, 3).await?;
    let deployment = Deployment::on_broker(&engines, &kafka.address()).await?;
    deployment.create_replicated_topics(PARTITIONS, 3).await?;
    let topics = Topics::new(&deployment.topic_prefix, &deployment.application_id);
    let (_api, base) = deployment
        .spawn_api(&["--feed-cache-cap", &CACHE_CAP.to_string()])
        .await?;
    let processor_metrics = free_port()?;
    let mut cluster = Cluster {
        deployment: &deployment,
        processor: Cluster::spawn_processor(&deployment, &celebrity_threshold, processor_metrics)?,
        sink: Cluster::spawn_sink(&deployment)?,
        celebrity_threshold,
        processor_metrics,
    };

    let produced = Arc::new(AtomicUsize::new(0));
    let workload = Workload {
        rng: fastrand::Rng::with_seed(seed),
        ids: SnowflakeGenerator::new(901)?,
        users,
        follows: Vec::new(),
        following: BTreeSet::new(),
        live_posts: Vec::new(),
    };
    let producer = tokio::spawn(produce(
        deployment.brokers.clone(),
        topics.clone(),
        workload,
        events,
        // Production spans the fault rounds (about 18 s each), so every kill lands
        // while records are being processed.
        Duration::from_secs(16 * kills.div_ceil(2)),
        produced.clone(),
    ));
    let stop_readers = Arc::new(AtomicBool::new(false));
    let readers = spawn_readers(base.clone(), users, stop_readers.clone());
    let stop_writer = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(base.clone(), users + 1, stop_writer.clone());

    // Faults, in rounds at random moments: each round kills the processor and then the
    // sink; round 1 also kills the leader of post-events[0] (restarted in round 2, which
    // also stops PostgreSQL for 20 s), round 3 flushes Redis and stops every broker for
    // 20 s, while everything runs.
    let started = Instant::now();
    let rounds = kills.div_ceil(2);
    let mut killed_leader = None;
    for round in 0..rounds {
        // Each kill lands while the processor works: it has its tasks again (after its
        // predecessor's session expired and its stores were restored).
        eventually(
            Duration::from_secs(180),
            "the processor to run its tasks",
            || async {
                Ok(metric(cluster.processor_metrics, "processor_active_tasks")
                    .await
                    .unwrap_or(0.0)
                    >= 1.0)
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(rng.u64(1000..4000))).await;
        match round {
            1 => {
                let leader =
                    tokio::task::block_in_place(|| kafka.leader_of(&topics.post_events, 0))?;
                println!(
                    "[{:>5.1}s] kill -9 Kafka node {leader}, the leader of post-events[0]",
                    started.elapsed().as_secs_f64()
                );
                kafka.kill_node(leader).await?;
                killed_leader = Some(leader);
            }
            2 => {
                if let Some(leader) = killed_leader.take() {
                    println!(
                        "[{:>5.1}s] restarting Kafka node {leader}",
                        started.elapsed().as_secs_f64()
                    );
                    kafka.start_stopped().await?;
                }
                println!(
                    "[{:>5.1}s] stopping PostgreSQL for 20 s",
                    started.elapsed().as_secs_f64()
                );
                postgres("stop").await?;
                let lag = || {
                    let sink_inputs = [topics.feed_events.clone(), topics.post_events.clone()];
                    group_lag(&deployment.brokers, &topics.sink_group(), &sink_inputs)
                };
                let before = tokio::task::block_in_place(lag)?;
                tokio::time::sleep(Duration::from_secs(20)).await;
                let after = tokio::task::block_in_place(lag)?;
                postgres("start").await?;
                println!(
                    "[{:>5.1}s] PostgreSQL back; the sink's lag went from {before} to {after} records meanwhile",
                    started.elapsed().as_secs_f64()
                );
            }
            3 => {
                println!("[{:>5.1}s] flushing Redis", started.elapsed().as_secs_f64());
                let client = redis::Client::open(deployment.redis_url.as_str())?;
                let mut redis = client.get_multiplexed_async_connection().await?;
                redis::cmd("FLUSHDB").query_async::<()>(&mut redis).await?;
                println!(
                    "[{:>5.1}s] kill -9 every Kafka node; restarting them in 20 s",
                    started.elapsed().as_secs_f64()
                );
                kafka.kill().await?;
                tokio::time::sleep(Duration::from_secs(20)).await;
                kafka.start_stopped().await?;
                println!("[{:>5.1}s] Kafka is back", started.elapsed().as_secs_f64());
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(500..3000))).await;
        println!(
            "[{:>5.1}s] kill -9 processor and sink (round {}, {} events produced)",
            started.elapsed().as_secs_f64(),
            round + 1,
            produced.load(Ordering::Relaxed)
        );
        kill(&mut cluster.processor).await?;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..2000))).await;
        kill(&mut cluster.sink).await?;
        cluster.processor = Cluster::spawn_processor(
            cluster.deployment,
            &cluster.celebrity_threshold,
            cluster.processor_metrics,
        )?;
        cluster.sink = Cluster::spawn_sink(cluster.deployment)?;
    }

    let sent = producer.await??;
    stop_writer.store(true, Ordering::Relaxed);
    let writes = writer.await?;
    println!(
        "[{:>5.1}s] the API answered {} writes 202, {} writes 503 with Retry-After, {} otherwise",
        started.elapsed().as_secs_f64(),
        writes.accepted.len(),
        writes.unavailable,
        writes.wrong.len()
    );
    println!(
        "[{:>5.1}s] all {events} records produced ({} events, {} poison); draining",
        started.elapsed().as_secs_f64(),
        sent.events.len(),
        sent.poison.len()
    );
    // Every acknowledged record is in the broker, once (a group that never committed
    // lags by all of them).
    let inputs_held = tokio::task::block_in_place(|| {
        let inputs = [topics.post_events.clone(), topics.follow_events.clone()];
        group_lag(&deployment.brokers, "no-such-group", &inputs)
    })?;
    println!(
        "the broker holds {inputs_held} input records; {} were acknowledged",
        sent.events.len() + sent.poison.len()
    );
    let processor_group = topics.processor_group();
    let sink_group = topics.sink_group();
    let inputs = [topics.post_events.clone(), topics.follow_events.clone()];
    let sink_inputs = [topics.feed_events.clone(), topics.post_events.clone()];
    poll_until(
        Duration::from_secs(900),
        Duration::from_secs(2),
        "the processor and then the sink to commit the end of their inputs",
        || async {
            Ok(
                group_caught_up(&deployment.brokers, &processor_group, &inputs)?
                    && group_caught_up(&deployment.brokers, &sink_group, &sink_inputs)?,
            )
        },
    )
    .await?;
    stop_readers.store(true, Ordering::Relaxed);
    let reads = readers.await?;
    println!(
        "[{:>5.1}s] drained ({reads} feed pages read during the run)",
        started.elapsed().as_secs_f64()
    );

    let expected = expected_feeds(&sent.events, BACKFILL);
    let pool = sqlx::PgPool::connect(&deployment.database_url).await?;
    let mut stored = postgres_feeds(&pool).await?;
    // The writer's feeds hold its accepted posts, and may hold posts answered 503 (the
    // broker can store a record whose acknowledgement came too late): they are checked
    // apart from the model.
    let written: BTreeMap<UserId, Vec<PostId>> = (users + 1..=users + 5)
        .filter_map(|author| stored.remove_entry(&user(author)))
        .collect();
    let lost_writes = writes
        .accepted
        .iter()
        .filter(|(author, post)| {
            !written
                .get(&user(*author))
                .is_some_and(|feed| feed.contains(post))
        })
        .count();
    println!(
        "API writes: {} accepted, {lost_writes} not in their author's feed",
        writes.accepted.len()
    );
    let found = compare(&expected, &stored);
    let entries: usize = expected.values().map(BTreeSet::len).sum();
    println!(
        "PostgreSQL: {entries} expected entries in {} feeds: {found}",
        expected.len()
    );
    let (cached, redis_lost, redis_phantom) = check_redis(&deployment, &pool, &expected).await?;
    println!("Redis: {cached} cached feeds: lost {redis_lost}, phantom {redis_phantom}");

    let kafka = KafkaSettings {
        brokers: deployment.brokers.clone(),
        delivery_timeout: Duration::from_secs(30),
        debug: None,
        fetch_wait: feedstream_kafka::DEFAULT_FETCH_WAIT,
        consumer_properties: Vec::new(),
    };
    let letters = tokio::task::block_in_place(|| read_dead_letters(&kafka, &topics))?;
    let by_source: BTreeMap<(String, i32, i64), String> = letters
        .iter()
        .map(|letter| {
            let h = &letter.headers;
            (
                (h.source_topic.clone(), h.source_partition, h.source_offset),
                h.reason.clone(),
            )
        })
        .collect();
    let wrong: Vec<_> = sent
        .poison
        .iter()
        .filter(|(source, reason)| by_source.get(*source).map(String::as_str) != Some(**reason))
        .collect();
    println!(
        "dead letters: {} records for {} distinct sources; {} poison records injected; {} missing or with another reason",
        letters.len(),
        by_source.len(),
        sent.poison.len(),
        wrong.len()
    );

    let produced = sent.events.len() + sent.poison.len() + writes.accepted.len();
    assert!(
        (produced..=produced + writes.unavailable).contains(&(inputs_held as usize)),
        "the broker lost or duplicated acknowledged input records"
    );
    assert!(
        writes.wrong.is_empty(),
        "writes not answered 202 or 503 + Retry-After: {:?}",
        writes.wrong
    );
    assert!(
        !writes.accepted.is_empty(),
        "the API accepted writes during the faults"
    );
    assert_eq!(
        lost_writes, 0,
        "accepted writes missing from their author's feed"
    );
    let wrong: Vec<String> = wrong
        .iter()
        .map(|(source, reason)| {
            format!(
                "{source:?} should be {reason}, is {:?}",
                by_source.get(*source)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "poison without its dead letter: {wrong:#?}"
    );
    assert_eq!(
        by_source.len(),
        sent.poison.len(),
        "one dead letter per poison record"
    );
    assert!(
        found.is_clean(),
        "PostgreSQL differs from the model: {found}"
    );
    assert!(
        entries > events,
        "the workload fans out ({entries} entries)"
    );
    assert!(cached > 0, "the readers made Redis hold feeds");
    assert_eq!((redis_lost, redis_phantom), (0, 0), "Redis differs");
    Ok(())
}
