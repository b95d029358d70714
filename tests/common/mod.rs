//! Test harness: real engines, one isolated deployment per test (its own topic prefix,
//! application id, PostgreSQL database, Redis key prefix and state directory), and the
//! real `feedstream` binary.
#![allow(dead_code)] // each test binary uses part of the harness

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use feedstream_topology::event::{Envelope, EventBody, ENVELOPE_VERSION};
use feedstream_topology::ids::{id_timestamp_ms, EventId, PostId, UserId};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where the engines are; set by scripts/test.sh.
pub struct Engines {
    pub brokers: String,
    pub pg_admin_url: String,
    pub redis_url: String,
    pub tansu: Option<String>,
}

impl Engines {
    pub fn from_env() -> Self {
        let need = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the suite with scripts/test.sh, which starts a Kafka broker (tansu), PostgreSQL and Redis")
            })
        };
        Self {
            brokers: need("FEEDSTREAM_TEST_BROKERS"),
            pg_admin_url: need("FEEDSTREAM_TEST_PG_ADMIN_URL"),
            redis_url: need("FEEDSTREAM_TEST_REDIS_URL"),
            tansu: std::env::var("FEEDSTREAM_TEST_TANSU").ok(),
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
        let (ok, stdout, stderr) = self
            .run(&["topics", "create", "--partitions", &partitions.to_string()])
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

    /// A processor with its own state directory `name` and `extra` arguments.
    pub fn spawn_processor_with(&self, name: &str, extra: &[&str]) -> anyhow::Result<Child> {
        let state = self.dir.path().join(name);
        let mut args = vec![
            "process",
            "--state-dir",
            state.to_str().unwrap_or_default(),
            "--max-task-idle-ms",
            "200",
        ];
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
    pub async fn serve(&self, mut command: Command) -> anyhow::Result<(Child, String)> {
        let mut child = command.stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().context("api stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix(feedstream_api::LISTENING_ON) {
                    return Ok(url.trim().to_string());
                }
            }
            bail!("api exited before listening")
        })
        .await
        .context("api did not start listening within 60s")??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((child, url))
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
            .header("X-User-Id", author.to_string())
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
            .header("X-User-Id", follower.to_string())
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
            .header("X-User-Id", follower.to_string())
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

    /// Deletes `post_id` as `author`. The API knows a post once the sink has stored it,
    /// so a 404 is retried until `deadline`.
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
            .header("X-User-Id", caller.to_string())
            .send()
            .await?)
    }

    /// One page of GET /feeds: `path` is `/feeds/{user}?...` as the API's links give it.
    pub async fn feed_page(&self, path: &str) -> anyhow::Result<FeedPageView> {
        let response = self.http.get(format!("{}{path}", self.base)).send().await?;
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
            let clean = feedstream_topology::model::compare(expected, &observed).is_clean();
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

/// A tansu broker of one test, on its own port and sqlite file, that the test may kill
/// and start again (the shared broker of the suite must stay up for the other tests).
pub struct PrivateBroker {
    tansu: String,
    pub port: u16,
    data: tempfile::TempDir,
    process: Option<Child>,
}

impl PrivateBroker {
    pub async fn start(engines: &Engines) -> anyhow::Result<Self> {
        let tansu = engines
            .tansu
            .clone()
            .context("FEEDSTREAM_TEST_TANSU is not set: run the suite with scripts/test.sh")?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        drop(listener);
        let mut broker = Self {
            tansu,
            port,
            data: tempfile::tempdir()?,
            process: None,
        };
        broker.run().await?;
        Ok(broker)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("tansu.log"))?;
        // tansu resolves the sqlite path against its working directory.
        self.process = Some(
            Command::new(&self.tansu)
                .current_dir(self.data.path())
                .args(["broker", "--storage-engine", "sqlite://tansu.db"])
                .args(["--listener-url", &url, "--advertised-listener-url", &url])
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()?,
        );
        let port = self.port;
        eventually(
            Duration::from_secs(30),
            "the private broker to listen",
            || async move {
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok())
            },
        )
        .await?;
        let index = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/tansu-index.py"
            ))
            .arg(self.data.path().join("tansu.db"))
            .status()
            .await
            .context("running scripts/tansu-index.py (needs python3)")?;
        anyhow::ensure!(index.success(), "scripts/tansu-index.py failed");
        Ok(())
    }

    /// kill -9: the broker stops without a word to its clients.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill().await?;
        }
        Ok(())
    }

    /// Starts the broker again on the same port and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.run().await
    }
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

/// Asks a process to stop gracefully (SIGTERM).
pub fn terminate(child: &Child) -> anyhow::Result<()> {
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("process already exited"))?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
    Ok(())
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The sum of every sample of `name` (all label sets) on a /metrics page.
pub async fn metric(port: u16, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Polls `check` until it returns true or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    poll_until(deadline, Duration::from_millis(200), what, check).await
}

/// Calls `check` every `interval` until it returns true or `deadline` passes.
pub async fn poll_until<F, Fut>(
    deadline: Duration,
    interval: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > until {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(interval).await;
    }
}
