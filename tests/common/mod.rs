//! Test harness: real engines, one isolated deployment per test (its own topic prefix,
//! application id, PostgreSQL database, Redis key prefix and state directory), and the
//! real `feedstream` binary.
#![allow(dead_code)] // each test binary uses part of the harness

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use feedstream_core::event::{Envelope, EventBody, ENVELOPE_VERSION};
use feedstream_core::ids::{id_timestamp_ms, EventId, PostId, UserId};
use tokio::process::{Child, Command};

/// Where the engines are; set by scripts/test.sh.
pub struct Engines {
    pub brokers: String,
    pub pg_admin_url: String,
    pub redis_url: String,
    /// The Kafka jars, for tests that run brokers of their own.
    pub kafka_libs: Option<String>,
}

impl Engines {
    pub fn from_env() -> Self {
        let need = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the suite with scripts/test.sh, which starts Apache Kafka, PostgreSQL and Redis")
            })
        };
        Self {
            brokers: need("FEEDSTREAM_TEST_BROKERS"),
            pg_admin_url: need("FEEDSTREAM_TEST_PG_ADMIN_URL"),
            redis_url: need("FEEDSTREAM_TEST_REDIS_URL"),
            kafka_libs: std::env::var("FEEDSTREAM_TEST_KAFKA_LIBS").ok(),
        }
    }
}

/// One isolated deployment of feedstream on the shared engines.
pub struct Deployment {
    pub id: String,
    pub brokers: String,
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub topic_prefix: String,
    pub application_id: String,
    pub dir: tempfile::TempDir,
}

impl Deployment {
    pub async fn new(engines: &Engines) -> anyhow::Result<Self> {
        Self::on_broker(engines, &engines.brokers).await
    }

    pub async fn on_broker(engines: &Engines, brokers: &str) -> anyhow::Result<Self> {
        let id = format!("{:08x}", fastrand::u32(..));
        let database = format!("feedstream_test_{id}");
        let admin = format!("{}/postgres", engines.pg_admin_url);
        let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {admin}"))?;
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&mut connection)
            .await?;
        Ok(Self {
            brokers: brokers.to_string(),
            database_url: format!("{}/{database}", engines.pg_admin_url),
            redis_url: engines.redis_url.clone(),
            redis_prefix: format!("test-{id}:"),
            topic_prefix: format!("t{id}-"),
            application_id: format!("app{id}"),
            dir: tempfile::tempdir()?,
            id,
        })
    }

    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    /// The binary with this deployment's settings in its environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_feedstream"));
        command
            .args(args)
            .env("FEEDSTREAM_BROKERS", &self.brokers)
            .env("DATABASE_URL", &self.database_url)
            .env("REDIS_URL", &self.redis_url)
            .env("FEEDSTREAM_REDIS_PREFIX", &self.redis_prefix)
            .env("FEEDSTREAM_TOPIC_PREFIX", &self.topic_prefix)
            .env("FEEDSTREAM_APPLICATION_ID", &self.application_id)
            .env("FEEDSTREAM_TOKEN_KEYS", feedstream_harness::TOKEN_KEYS)
            .env(
                "FEEDSTREAM_WRITE_RATE_LIMIT",
                feedstream_harness::RATE_LIMIT,
            )
            .env("FEEDSTREAM_READ_RATE_LIMIT", feedstream_harness::RATE_LIMIT)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs a command to completion; returns (success, stdout, stderr).
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let output = self.command(args).output().await?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    pub async fn create_topics(&self, partitions: u32) -> anyhow::Result<String> {
        self.create_replicated_topics(partitions, 1).await
    }

    pub async fn create_replicated_topics(
        &self,
        partitions: u32,
        replication: u32,
    ) -> anyhow::Result<String> {
        let (partitions, replication) = (partitions.to_string(), replication.to_string());
        let (ok, stdout, stderr) = self
            .run(&[
                "topics",
                "create",
                "--partitions",
                &partitions,
                "--replication",
                &replication,
            ])
            .await?;
        if !ok {
            bail!("topics create failed: {stderr}");
        }
        Ok(stdout)
    }

    /// Starts a long-running command (process, sink).
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        Ok(self.command(args).stdout(Stdio::null()).spawn()?)
    }

    pub fn spawn_processor(&self, name: &str) -> anyhow::Result<Child> {
        self.spawn_processor_with(name, &[])
    }

    /// The state directory `name` of this deployment's processors.
    pub fn state_dir(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// A processor with its own state directory `name` and `extra` arguments.
    pub fn spawn_processor_with(&self, name: &str, extra: &[&str]) -> anyhow::Result<Child> {
        let state = self.state_dir(name);
        let state = state.to_str().context("the state directory is not UTF-8")?;
        let mut args = vec!["process", "--state-dir", state];
        args.extend_from_slice(extra);
        self.spawn(&args)
    }

    /// Starts `feedstream api` on a free port; returns it with its base URL.
    pub async fn spawn_api(&self, extra: &[&str]) -> anyhow::Result<(Child, String)> {
        let mut args = vec!["api", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        self.spawn_serving(&args).await
    }

    /// Starts a command that serves the API (`api`, `run`); returns it once it listens,
    /// with its base URL.
    pub async fn spawn_serving(&self, args: &[&str]) -> anyhow::Result<(Child, String)> {
        self.serve(self.command(args)).await
    }

    /// Starts `command` (from [`Self::command`], adjusted) and returns it once it listens,
    /// with its base URL.
    pub async fn serve(&self, command: Command) -> anyhow::Result<(Child, String)> {
        feedstream_harness::serve(command).await
    }
}

/// An HTTP client of the API that records every accepted event, for the model.
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub events: Vec<Envelope>,
    /// The `limit` whole-feed reads use.
    pub page_size: usize,
}

impl Client {
    pub fn new(base: String) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            base,
            events: Vec::new(),
            page_size: 100,
        }
    }

    async fn accepted(&self, response: reqwest::Response) -> anyhow::Result<serde_json::Value> {
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        if status != reqwest::StatusCode::ACCEPTED {
            bail!("expected 202, got {status}: {body}");
        }
        Ok(body)
    }

    fn record(
        &mut self,
        event_id: &serde_json::Value,
        actor: u64,
        body: EventBody,
    ) -> anyhow::Result<EventId> {
        let event_id: EventId = serde_json::from_value(event_id.clone())?;
        self.events.push(Envelope {
            event_id,
            body,
            actor_id: user(actor),
            timestamp: id_timestamp_ms(event_id.get()),
            version: ENVELOPE_VERSION,
        });
        Ok(event_id)
    }

    pub async fn post(&mut self, author: u64, content: &str) -> anyhow::Result<PostId> {
        let response = self
            .http
            .post(format!("{}/posts", self.base))
            .bearer_auth(feedstream_harness::token(author)?)
            .json(&serde_json::json!({ "content": content }))
            .send()
            .await?;
        let body = self.accepted(response).await?;
        let post_id: PostId = serde_json::from_value(body["post_id"].clone())?;
        self.record(
            &body["event_id"],
            author,
            EventBody::PostCreated {
                post_id,
                content: content.into(),
            },
        )?;
        Ok(post_id)
    }

    pub async fn follow(&mut self, follower: u64, followee: u64) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/follows", self.base))
            .bearer_auth(feedstream_harness::token(follower)?)
            .json(&serde_json::json!({ "followee_id": followee.to_string() }))
            .send()
            .await?;
        let body = self.accepted(response).await?;
        self.record(
            &body["event_id"],
            follower,
            EventBody::Followed {
                followee_id: user(followee),
            },
        )?;
        Ok(())
    }

    pub async fn unfollow(&mut self, follower: u64, followee: u64) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(format!("{}/follows/{followee}", self.base))
            .bearer_auth(feedstream_harness::token(follower)?)
            .send()
            .await?;
        let body = self.accepted(response).await?;
        self.record(
            &body["event_id"],
            follower,
            EventBody::Unfollowed {
                followee_id: user(followee),
            },
        )?;
        Ok(())
    }

    /// Deletes `post_id` as `author`. The API knows a post once it accepted it (from
    /// Redis) or the sink has stored it, so a 404 (Redis lost the post) is retried
    /// until `deadline`.
    pub async fn delete_post(
        &mut self,
        author: u64,
        post_id: PostId,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let response = self.try_delete_post(author, post_id).await?;
            if response.status() == reqwest::StatusCode::NOT_FOUND
                && tokio::time::Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let body = self.accepted(response).await?;
            self.record(
                &body["event_id"],
                author,
                EventBody::PostDeleted { post_id },
            )?;
            return Ok(());
        }
    }

    pub async fn try_delete_post(
        &self,
        caller: u64,
        post_id: PostId,
    ) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .delete(format!("{}/posts/{post_id}", self.base))
            .bearer_auth(feedstream_harness::token(caller)?)
            .send()
            .await?)
    }

    /// One page of GET /feeds as its owner: `path` is `/feeds/{user}?...` as the API's
    /// links give it.
    pub async fn feed_page(&self, path: &str) -> anyhow::Result<FeedPageView> {
        let owner = path
            .strip_prefix("/feeds/")
            .and_then(|rest| rest.split(['?', '/']).next())
            .and_then(|owner| owner.parse::<u64>().ok())
            .with_context(|| format!("{path} is not a feed path"))?;
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(feedstream_harness::token(owner)?)
            .send()
            .await?;
        let status = response.status();
        let link = response
            .headers()
            .get("link")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: serde_json::Value = response.json().await?;
        if !status.is_success() {
            bail!("GET {path}: {status} {body}");
        }
        let ids = body
            .as_array()
            .context("a feed page is a JSON array")?
            .iter()
            .map(|post| Ok(serde_json::from_value(post["id"].clone())?))
            .collect::<anyhow::Result<Vec<PostId>>>()?;
        Ok(FeedPageView {
            ids,
            next: link_target(&link, "next"),
            prev: link_target(&link, "prev"),
        })
    }

    /// A whole feed (newest first, duplicates kept), read page by page through the
    /// `next` links, as a client scrolls.
    pub async fn feed_paged(&self, owner: u64, limit: usize) -> anyhow::Result<Vec<PostId>> {
        let mut ids = Vec::new();
        let mut path = format!("/feeds/{owner}?limit={limit}");
        for _ in 0..100_000 {
            let page = self.feed_page(&path).await?;
            ids.extend(page.ids);
            match page.next {
                Some(next) => path = next,
                None => return Ok(ids),
            }
        }
        bail!("feed of {owner} did not end after 100000 pages")
    }

    pub async fn feed(&self, owner: u64) -> anyhow::Result<Vec<PostId>> {
        self.feed_paged(owner, self.page_size).await
    }

    pub async fn feeds(&self, owners: &[u64]) -> anyhow::Result<BTreeMap<UserId, Vec<PostId>>> {
        let mut feeds = BTreeMap::new();
        for owner in owners {
            let feed = self.feed(*owner).await?;
            if !feed.is_empty() {
                feeds.insert(user(*owner), feed);
            }
        }
        Ok(feeds)
    }

    /// Polls until every feed of `owners` matches `expected` (as sets, no duplicates,
    /// newest first) or the deadline passes; returns the last observation.
    pub async fn await_feeds(
        &self,
        owners: &[u64],
        expected: &BTreeMap<UserId, BTreeSet<PostId>>,
        deadline: Duration,
    ) -> anyhow::Result<BTreeMap<UserId, Vec<PostId>>> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let observed = self.feeds(owners).await?;
            let clean = feedstream_core::model::compare(expected, &observed).is_clean();
            if clean || tokio::time::Instant::now() > until {
                return Ok(observed);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// What a client sees of one feed page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPageView {
    pub ids: Vec<PostId>,
    pub next: Option<String>,
    pub prev: Option<String>,
}

/// The target of the `rel` link in a Link header (`<target>; rel="next", ...`).
pub fn link_target(header: &str, rel: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let wanted = format!("rel=\"{rel}\"");
        params
            .split(';')
            .any(|param| param.trim() == wanted)
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

pub fn user(id: u64) -> UserId {
    UserId::new(id).expect("test user ids are positive")
}

/// An envelope with the next id of `ids`, as the API would build it; `body` gets the
/// event's id (a post's id is its event's).
pub fn envelope(
    ids: &feedstream_core::ids::SnowflakeGenerator,
    actor: u64,
    body: impl FnOnce(EventId) -> EventBody,
) -> Envelope {
    let (id, timestamp) = ids.next();
    let event_id = EventId::new(id).expect("snowflake ids are valid");
    Envelope {
        event_id,
        body: body(event_id),
        actor_id: user(actor),
        timestamp,
        version: ENVELOPE_VERSION,
    }
}

/// Writes input records straight to the topics, as an operator replaying them or
/// another client would: Java's partitioner (as the API), acks from all in-sync
/// replicas, idempotence, and a delivery timeout that outlives broker restarts.
pub struct InputProducer {
    producer: feedstream_kafka::Producer,
}

impl InputProducer {
    pub fn new(brokers: &str) -> anyhow::Result<Self> {
        // The product's producer settings, so records land where the API's would.
        let settings = feedstream_kafka::KafkaSettings {
            brokers: brokers.to_string(),
            delivery_timeout: Duration::from_secs(600),
            debug: None,
            fetch_wait: feedstream_kafka::DEFAULT_FETCH_WAIT,
            consumer_properties: Vec::new(),
        };
        Ok(Self {
            producer: feedstream_kafka::producer(&settings, "feedstream-test-input")?,
        })
    }

    /// Sends one record, with the `event_id` header when it has an id.
    pub fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        event_id: Option<EventId>,
    ) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
        use rdkafka::message::{Header, OwnedHeaders};
        let id = event_id.map(|id| id.to_string());
        let mut headers = OwnedHeaders::new();
        if let Some(id) = &id {
            headers = headers.insert(Header {
                key: feedstream_core::event::EVENT_ID_HEADER,
                value: Some(id.as_str()),
            });
        }
        let record = rdkafka::producer::FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        self.producer
            .send_result(record)
            .map_err(|(error, _)| anyhow::anyhow!("produce failed: {error}"))
    }

    /// Sends `events` to their input topics, in order, and waits for every
    /// acknowledgement.
    pub async fn send_events(
        &self,
        topics: &feedstream_kafka::topics::Topics,
        events: &[Envelope],
    ) -> anyhow::Result<()> {
        let mut in_flight = std::collections::VecDeque::new();
        for event in events {
            let topic = topics.input(event.topic());
            let payload = event.to_json();
            in_flight.push_back(self.send(
                topic,
                &event.key().to_string(),
                &payload,
                Some(event.event_id),
            )?);
            // Bounded in flight: librdkafka's queue holds 100,000 records.
            if in_flight.len() >= 50_000 {
                await_delivery(in_flight.pop_front()).await?;
            }
        }
        while let Some(delivery) = in_flight.pop_front() {
            await_delivery(Some(delivery)).await?;
        }
        Ok(())
    }
}

/// Where a record was stored, once the broker acknowledged it.
pub async fn await_delivery(
    delivery: Option<rdkafka::producer::DeliveryFuture>,
) -> anyhow::Result<Option<(i32, i64)>> {
    let Some(delivery) = delivery else {
        return Ok(None);
    };
    let delivered = delivery
        .await
        .context("delivery canceled")?
        .map_err(|(error, _)| anyhow::anyhow!("not delivered: {error}"))?;
    Ok(Some((delivered.partition, delivered.offset)))
}

/// A Kafka cluster of one test (1 node, or 3 for the fault harness) with its own data
/// and ports, whose nodes the test may kill and start again: the shared broker of the
/// suite must stay up for the other tests. Formatted and run by scripts/kafka.sh, as
/// the scripts do.
pub struct PrivateKafka {
    libs: String,
    dir: tempfile::TempDir,
    /// (node id, broker port) of each node.
    pub nodes: Vec<(u32, u16)>,
    processes: BTreeMap<u32, Child>,
}

const KAFKA_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");

impl PrivateKafka {
    pub async fn start(engines: &Engines, nodes: u32) -> anyhow::Result<Self> {
        let libs = engines
            .kafka_libs
            .clone()
            .context("FEEDSTREAM_TEST_KAFKA_LIBS is not set: run the suite with scripts/test.sh")?;
        let dir = tempfile::tempdir()?;
        let status = Command::new("bash")
            .arg(KAFKA_SCRIPT)
            .args([
                "format",
                &dir.path().display().to_string(),
                &nodes.to_string(),
            ])
            .env("KAFKA_LIBS", &libs)
            .status()
            .await?;
        anyhow::ensure!(status.success(), "scripts/kafka.sh format failed");
        let listing = std::fs::read_to_string(dir.path().join("nodes"))?;
        let nodes = listing
            .lines()
            .map(|line| {
                let mut fields = line.split_whitespace();
                let id = fields.next().context("node id")?.parse()?;
                let port = fields.next().context("node port")?.parse()?;
                Ok((id, port))
            })
            .collect::<anyhow::Result<Vec<(u32, u16)>>>()?;
        let mut cluster = Self {
            libs,
            dir,
            nodes,
            processes: BTreeMap::new(),
        };
        let ids: Vec<u32> = cluster.nodes.iter().map(|(id, _)| *id).collect();
        cluster.start_nodes(&ids).await?;
        Ok(cluster)
    }

    /// The bootstrap list.
    pub fn address(&self) -> String {
        self.nodes
            .iter()
            .map(|(_, port)| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts the given nodes (on their data and ports) and waits until each has
    /// started.
    pub async fn start_nodes(&mut self, ids: &[u32]) -> anyhow::Result<()> {
        for id in ids {
            let child = Command::new("bash")
                .arg(KAFKA_SCRIPT)
                .args([
                    "run",
                    &self.dir.path().display().to_string(),
                    &id.to_string(),
                ])
                .env("KAFKA_LIBS", &self.libs)
                .env("KAFKA_HEAP", "384m")
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()?;
            self.processes.insert(*id, child);
        }
        for id in ids {
            let log = self.dir.path().join(format!("node-{id}/logs/server.log"));
            let port = self.port(*id)?;
            feedstream_harness::eventually(
                Duration::from_secs(120),
                &format!("Kafka node {id} to start"),
                || {
                    let log = log.clone();
                    async move {
                        let started = std::fs::read_to_string(&log)
                            .is_ok_and(|text| text.contains("Transition from STARTING to STARTED"));
                        Ok(started
                            && tokio::net::TcpStream::connect(("127.0.0.1", port))
                                .await
                                .is_ok())
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    fn port(&self, id: u32) -> anyhow::Result<u16> {
        self.nodes
            .iter()
            .find(|(node, _)| *node == id)
            .map(|(_, port)| *port)
            .with_context(|| format!("no Kafka node {id}"))
    }

    /// kill -9 of one node: it stops without a word to its clients or peers.
    pub async fn kill_node(&mut self, id: u32) -> anyhow::Result<()> {
        if let Some(mut process) = self.processes.remove(&id) {
            process.kill().await?;
        }
        Ok(())
    }

    /// kill -9 of every node.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let ids: Vec<u32> = self.processes.keys().copied().collect();
        for id in ids {
            self.kill_node(id).await?;
        }
        Ok(())
    }

    /// Starts every node that is not running.
    pub async fn start_stopped(&mut self) -> anyhow::Result<()> {
        let stopped: Vec<u32> = self
            .nodes
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !self.processes.contains_key(id))
            .collect();
        self.start_nodes(&stopped).await
    }

    /// The node that leads `topic`'s `partition`, as the cluster's metadata says.
    pub fn leader_of(&self, topic: &str, partition: i32) -> anyhow::Result<u32> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.address())
            .create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let leader = metadata
            .topics()
            .first()
            .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
            .map(|p| p.leader())
            .with_context(|| format!("no metadata for {topic}[{partition}]"))?;
        Ok(u32::try_from(leader)?)
    }
}

/// A member of a consumer group, as Kafka's own tool describes the group from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub instance_id: Option<String>,
    pub partitions: u32,
}

/// Runs one of Kafka's own tools (scripts/kafka.sh tool) and returns its output.
async fn kafka_tool(engines: &Engines, class: &str, args: &[&str]) -> anyhow::Result<String> {
    let libs = engines
        .kafka_libs
        .clone()
        .context("FEEDSTREAM_TEST_KAFKA_LIBS is not set: run the suite with scripts/test.sh")?;
    let output = Command::new("bash")
        .arg(KAFKA_SCRIPT)
        .arg("tool")
        .arg(class)
        .args(args)
        .env("KAFKA_LIBS", &libs)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "{class} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

/// Sets a dynamic config of consumer group `group` (KIP-848 group configs, such as
/// `consumer.session.timeout.ms`), with `kafka-configs`.
pub async fn set_group_config(
    engines: &Engines,
    brokers: &str,
    group: &str,
    config: &str,
) -> anyhow::Result<()> {
    kafka_tool(
        engines,
        "org.apache.kafka.tools.ConfigCommand",
        &[
            "--bootstrap-server",
            brokers,
            "--alter",
            "--entity-type",
            "groups",
            "--entity-name",
            group,
            "--add-config",
            config,
        ],
    )
    .await
    .map(|_| ())
}

/// The members of `group` and how many partitions each holds, from Kafka's
/// `kafka-consumer-groups --describe --members` (scripts/kafka.sh tool).
pub async fn group_members(
    engines: &Engines,
    brokers: &str,
    group: &str,
) -> anyhow::Result<Vec<GroupMember>> {
    let stdout = kafka_tool(
        engines,
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        &[
            "--bootstrap-server",
            brokers,
            "--describe",
            "--group",
            group,
            "--members",
        ],
    )
    .await?;
    let mut lines = stdout
        .lines()
        .skip_while(|line| !line.starts_with("GROUP "));
    let header = lines
        .next()
        .with_context(|| format!("no member table in: {stdout}"))?;
    let with_instances = header.contains("GROUP-INSTANCE-ID");
    lines
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (instance_id, partitions) = match (with_instances, fields.as_slice()) {
                (true, [_, _, instance, _, _, partitions, ..]) => {
                    (Some(instance.to_string()), partitions)
                }
                (false, [_, _, _, _, partitions, ..]) => (None, partitions),
                _ => bail!("unexpected member line: {line}"),
            };
            Ok(GroupMember {
                instance_id,
                partitions: partitions.parse()?,
            })
        })
        .collect()
}

/// Whether `group` has committed, on every partition of `topics`, the high watermark.
pub fn group_caught_up(brokers: &str, group: &str, topics: &[String]) -> anyhow::Result<bool> {
    Ok(group_lag(brokers, group, topics)? == 0)
}

/// Records of `topics` after `group`'s committed offsets (all of a partition it never
/// committed), as seen from outside the group.
pub fn group_lag(brokers: &str, group: &str, topics: &[String]) -> anyhow::Result<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let mut list = TopicPartitionList::new();
    let mut ends = Vec::new();
    for topic in metadata
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|name| name == t.name()))
    {
        for partition in topic.partitions() {
            list.add_partition(topic.name(), partition.id());
            let (_, high) =
                consumer.fetch_watermarks(topic.name(), partition.id(), Duration::from_secs(10))?;
            ends.push((topic.name().to_string(), partition.id(), high));
        }
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
    Ok(ends
        .iter()
        .map(|(topic, partition, high)| {
            let at = match committed
                .find_partition(topic, *partition)
                .map(|element| element.offset())
            {
                Some(Offset::Offset(offset)) => offset,
                _ => 0,
            };
            (high - at).max(0)
        })
        .sum())
}

/// Every user's feed in PostgreSQL as a reader sees it: entries, plus posts merged on
/// read at or above each follow's floor, without deleted posts.
pub async fn postgres_feeds(pool: &sqlx::PgPool) -> anyhow::Result<BTreeMap<UserId, Vec<PostId>>> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT f.user_id, f.post_id FROM feeds f JOIN posts p USING (post_id) \
           WHERE p.deleted_at IS NULL \
         UNION \
         SELECT fo.user_id, m.post_id FROM follows fo \
           JOIN merged_posts m ON m.author_id = fo.author_id AND m.post_id >= fo.min_post_id \
           JOIN posts p ON p.post_id = m.post_id WHERE p.deleted_at IS NULL \
         ORDER BY 1, 2 DESC",
    )
    .fetch_all(pool)
    .await?;
    let mut feeds: BTreeMap<UserId, Vec<PostId>> = BTreeMap::new();
    for (owner, post) in rows {
        feeds
            .entry(UserId::new(owner as u64)?)
            .or_default()
            .push(PostId::new(post as u64)?);
    }
    Ok(feeds)
}

/// How many records `topic` holds, and how many offsets they span: fewer records than
/// offsets means the log was compacted (or records were deleted, or the offsets hold
/// transaction markers).
pub fn topic_records(brokers: &str, topic: &str) -> anyhow::Result<(u64, i64)> {
    let mut records = 0u64;
    let span = read_topic(brokers, topic, &mut |_| records += 1)?;
    Ok((records, span))
}

/// The values of every record of `topic`, as a read_committed reader sees them.
pub fn topic_values(brokers: &str, topic: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    use rdkafka::message::Message;
    let mut values = Vec::new();
    read_topic(brokers, topic, &mut |message| {
        values.push(message.payload().unwrap_or_default().to_vec())
    })?;
    Ok(values)
}

/// Calls `each` for every record of `topic` with isolation.level=read_committed (what
/// the feed-events contract asks of its readers); returns how many offsets the
/// partitions span.
fn read_topic(
    brokers: &str,
    topic: &str,
    each: &mut dyn FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> anyhow::Result<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "feedstream-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut span = 0i64;
    let mut list = TopicPartitionList::new();
    let mut open = 0;
    for partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *partition, Duration::from_secs(10))?;
        span += high - low;
        if high > low {
            list.add_partition_offset(topic, *partition, Offset::Beginning)?;
            open += 1;
        }
    }
    if open == 0 {
        return Ok(span);
    }
    consumer.assign(&list)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while open > 0 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reading {topic} took over 60 s"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => each(&message),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => open -= 1,
            Some(Err(error)) => return Err(error.into()),
            None => {}
        }
    }
    Ok(span)
}
