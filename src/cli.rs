use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use feedstream_api::rate_limit::Policy;
use feedstream_kafka::transaction::UnknownGuarantee;
use feedstream_kafka::ProcessingGuarantee;
use feedstream_stores::StoreName;

/// Kafka Streams-style stream processor that turns posts and follows into social feeds.
///
/// Every option can also be set through the environment variable shown with it.
#[derive(Debug, Parser)]
#[command(name = "feedstream", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(
        long,
        global = true,
        env = "FEEDSTREAM_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// PostgreSQL URL (the source of truth for reads).
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/feedstream",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Redis URL (the cache of each feed's newest entries).
    #[arg(
        long,
        global = true,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,
    /// Prefix of every Redis key, to share one Redis between deployments.
    #[arg(
        long,
        global = true,
        env = "FEEDSTREAM_REDIS_PREFIX",
        default_value = ""
    )]
    pub redis_prefix: String,
    /// How many entries of each feed Redis holds (the sink trims to it, readers fill up
    /// to it); older pages come from PostgreSQL.
    #[arg(
        long,
        global = true,
        env = "FEEDSTREAM_FEED_CACHE_CAP",
        default_value_t = feedstream_read::FEED_CACHE_CAP
    )]
    pub feed_cache_cap: usize,
    /// Prefix of the four public topic names (post-events, follow-events, feed-events,
    /// dead-letter-events).
    #[arg(
        long,
        global = true,
        env = "FEEDSTREAM_TOPIC_PREFIX",
        default_value = ""
    )]
    pub topic_prefix: String,
    /// Application id: prefix of changelog topics, consumer groups and the state
    /// directory, as in Kafka Streams.
    #[arg(
        long,
        global = true,
        env = "FEEDSTREAM_APPLICATION_ID",
        default_value = "feedstream"
    )]
    pub application_id: String,
    /// Longest time the broker may hold a fetch that found no data, in milliseconds
    /// (librdkafka's fetch.wait.max.ms). Kafka answers a held fetch as soon as a record
    /// arrives, so this sets how many empty fetches an idle consumer sends, not latency.
    #[arg(
        long,
        global = true,
        env = "FEEDSTREAM_FETCH_WAIT_MAX_MS",
        default_value_t = feedstream_kafka::DEFAULT_FETCH_WAIT.as_millis() as u64
    )]
    pub fetch_wait_max_ms: u64,
    /// A librdkafka property for every consumer, as `KEY=VALUE` (repeatable; the
    /// variable takes a comma-separated list); it overrides feedstream's own setting of
    /// that key. E.g. `max.partition.fetch.bytes=65536`, or security settings.
    #[arg(
        long = "consumer-property",
        global = true,
        env = "FEEDSTREAM_CONSUMER_PROPERTIES",
        value_delimiter = ',',
        value_parser = parse_property
    )]
    pub consumer_properties: Vec<(String, String)>,
    /// Stable name of this instance in the processor and sink consumer groups (Kafka's
    /// `group.instance.id`, static membership), unique per instance, e.g. the pod name of
    /// a StatefulSet. An instance that stops and comes back within the broker's session
    /// timeout keeps its tasks: none move to the other instances meanwhile, and it
    /// restores nothing. Unset: members are dynamic and a leaving instance's tasks move
    /// at once.
    #[arg(
        long,
        global = true,
        env = "FEEDSTREAM_INSTANCE_ID",
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub instance_id: Option<String>,
    /// librdkafka debug contexts to log (e.g. `cgrp,fetch`), for diagnosing Kafka clients.
    #[arg(long, global = true, env = "FEEDSTREAM_KAFKA_DEBUG")]
    pub kafka_debug: Option<String>,
    /// Ceiling of the first wait before retrying a step that failed transiently (broker,
    /// PostgreSQL or Redis unavailable), in milliseconds; each wait draws below its
    /// ceiling (full jitter).
    #[arg(
        long,
        global = true,
        env = "FEEDSTREAM_RETRY_INITIAL_MS",
        default_value_t = 100
    )]
    pub retry_initial_ms: u64,
    /// Factor between successive retry ceilings.
    #[arg(
        long,
        global = true,
        env = "FEEDSTREAM_RETRY_MULTIPLIER",
        default_value_t = 2.0
    )]
    pub retry_multiplier: f64,
    /// Largest retry ceiling, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "FEEDSTREAM_RETRY_MAX_MS",
        default_value_t = 10_000
    )]
    pub retry_max_ms: u64,
    /// Attempts a record gets when it fails by itself (not because a service is down)
    /// before it goes to the dead-letter topic.
    #[arg(
        long,
        global = true,
        env = "FEEDSTREAM_MAX_ATTEMPTS",
        default_value_t = 5
    )]
    pub max_attempts: u32,
    /// After SIGTERM or SIGINT, how long a command may take to finish its work in hand,
    /// commit and close before it exits anyway (with an error), in milliseconds.
    #[arg(
        long,
        global = true,
        env = "FEEDSTREAM_SHUTDOWN_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub shutdown_timeout_ms: u64,
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "FEEDSTREAM_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the topics of a deployment.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Apply the PostgreSQL migrations (the api, sink and run commands also do it).
    Migrate,
    /// Serve the HTTP API: validate, publish one event, answer; read feeds.
    Api(ApiArgs),
    /// Print a bearer token for a user, signed with the first of the token keys.
    Token(TokenArgs),
    /// Run the feed topology: join posts and follows, fan out into feed-events.
    Process(ProcessArgs),
    /// Materialize feed-events and post-events into PostgreSQL and Redis.
    Sink(SinkArgs),
    /// Run api, process and sink in one process.
    Run(RunArgs),
    /// Inspect the dead-letter topic and publish dead letters again.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Wipe one state store of every task and rebuild it from its changelog (or, with
    /// --from-source, from its source topic); prints a digest to compare rebuilds. Stop
    /// the processor that uses the state directory first.
    RebuildState(RebuildArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    /// The store to rebuild: followers or author-posts.
    #[arg(long)]
    pub store: StoreName,
    /// Replay the store's source topic (follow-events or post-events) instead of its
    /// changelog, then bring the changelog in line with the result.
    #[arg(long)]
    pub from_source: bool,
    #[command(flatten)]
    pub process: ProcessArgs,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters (oldest first per partition), one line each, or JSON lines.
    List {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Publish the selected dead letters again to their source topic and partition,
    /// unchanged; each is marked replayed, so running it again publishes nothing twice.
    Replay {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Only say what would be replayed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DlqFilterArgs {
    /// Only this reason (e.g. `undecodable`, `unknown_type`, `wrong_key`, `write_rejected`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only records that came from this topic.
    #[arg(long)]
    pub source_topic: Option<String>,
    /// Only records whose last failure is at or after this time (RFC 3339, or Unix ms).
    #[arg(long)]
    pub since: Option<String>,
    /// Only records whose last failure is at or before this time (RFC 3339, or Unix ms).
    #[arg(long)]
    pub until: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every missing topic (idempotent), then check the layout.
    Create {
        /// Partitions of post-events, follow-events and the changelogs: the number of
        /// tasks, the upper bound on processor parallelism.
        #[arg(long, env = "FEEDSTREAM_PARTITIONS", default_value_t = 6)]
        partitions: i32,
        /// Partitions of feed-events and dead-letter-events (defaults to --partitions).
        #[arg(long, env = "FEEDSTREAM_OUTPUT_PARTITIONS")]
        output_partitions: Option<i32>,
        /// Replication factor of every topic (at most the cluster's broker count).
        #[arg(long, env = "FEEDSTREAM_REPLICATION", default_value_t = 1)]
        replication: i32,
        /// A topic config of the changelogs, `KEY=VALUE` (repeatable), over the
        /// defaults `cleanup.policy=compact`, `segment.ms=3600000`; e.g.
        /// `min.cleanable.dirty.ratio=0.1`.
        #[arg(long = "changelog-config", value_parser = parse_property)]
        changelog_configs: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user the token speaks for (its subject).
    #[arg(long)]
    pub user: u64,
    /// How long the token is valid: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: std::time::Duration,
    #[command(flatten)]
    pub keys: TokenKeyArgs,
}

/// Where the API's token keys come from: `kid:secret` entries; the first signs, every
/// one verifies (ARCHITECTURE.md, "Authentication", says how to rotate them).
#[derive(Debug, Clone, Args)]
pub struct TokenKeyArgs {
    /// Token keys, `kid:secret` separated by commas; secrets of at least 32 bytes.
    #[arg(long, env = "FEEDSTREAM_TOKEN_KEYS", hide_env_values = true)]
    pub token_keys: Option<String>,
    /// A file of token keys, one `kid:secret` per line (`#` starts a comment).
    #[arg(
        long,
        env = "FEEDSTREAM_TOKEN_KEYS_FILE",
        conflicts_with = "token_keys"
    )]
    pub token_keys_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "FEEDSTREAM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Node id of this API instance (0-1023), unique per instance: part of every id it issues.
    #[arg(long, env = "FEEDSTREAM_NODE_ID", default_value_t = 0)]
    pub node_id: u32,
    /// How long a write waits for the broker's acknowledgement before answering 503.
    #[arg(long, env = "FEEDSTREAM_PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    pub publish_timeout_ms: u64,
    /// Most events waiting for the broker's acknowledgement; writes beyond it answer 503
    /// with Retry-After at once.
    #[arg(
        long,
        env = "FEEDSTREAM_MAX_PENDING_PUBLISHES",
        default_value_t = 10_000
    )]
    pub max_pending_publishes: u32,
    #[command(flatten)]
    pub keys: TokenKeyArgs,
    /// Writes (POST and DELETE) per user, shared by every API instance: `QUOTA/WINDOW`
    /// (a burst of QUOTA, refilled at QUOTA per WINDOW), e.g. `300/60s`, or `off`.
    #[arg(
        long,
        env = "FEEDSTREAM_WRITE_RATE_LIMIT",
        default_value = "300/60s",
        value_parser = parse_rate_limit
    )]
    pub write_rate_limit: RateLimit,
    /// Feed reads per user, as --write-rate-limit.
    #[arg(
        long,
        env = "FEEDSTREAM_READ_RATE_LIMIT",
        default_value = "1200/60s",
        value_parser = parse_rate_limit
    )]
    pub read_rate_limit: RateLimit,
    /// Live feed listeners (GET /feeds/{user}/stream) this instance serves at once; each
    /// holds a Redis connection.
    #[arg(long, env = "FEEDSTREAM_SSE_MAX_CONNECTIONS", default_value_t = 1_000)]
    pub sse_max_connections: usize,
    /// Live feed listeners of one user served at once, over every API instance (kept in
    /// Redis).
    #[arg(long, env = "FEEDSTREAM_SSE_MAX_PER_USER", default_value_t = 4)]
    pub sse_max_per_user: usize,
    /// The longest silence on a live feed: a heartbeat comment keeps proxies from
    /// closing it.
    #[arg(long, env = "FEEDSTREAM_SSE_HEARTBEAT_MS", default_value_t = 15_000)]
    pub sse_heartbeat_ms: u64,
    /// How often a live feed looks for newly followed or unfollowed authors whose posts
    /// are merged on read; a change gives its listener a `reset`.
    #[arg(
        long,
        env = "FEEDSTREAM_SSE_FOLLOWS_REFRESH_MS",
        default_value_t = 30_000
    )]
    pub sse_follows_refresh_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ProcessArgs {
    /// Directory of the processor's state stores (RocksDB); one per instance.
    #[arg(
        long,
        env = "FEEDSTREAM_STATE_DIR",
        default_value = ".feedstream/state"
    )]
    pub state_dir: PathBuf,
    /// How many of an author's newest live posts a new follower receives (N).
    #[arg(long, env = "FEEDSTREAM_BACKFILL", default_value_t = feedstream_core::feed::DEFAULT_BACKFILL)]
    pub backfill: usize,
    /// Authors with more followers than this are not fanned out on write; their posts
    /// are merged into followers' feeds at read time.
    #[arg(long, env = "FEEDSTREAM_CELEBRITY_THRESHOLD", default_value_t = feedstream_core::feed::DEFAULT_CELEBRITY_THRESHOLD)]
    pub celebrity_threshold: u64,
    /// Most input records per processing batch (one commit each).
    #[arg(long, env = "FEEDSTREAM_PROCESS_BATCH_RECORDS", default_value_t = 500)]
    pub process_batch_records: usize,
    /// Longest wait for the first record of an intake, in milliseconds; after it, an
    /// intake takes only records already fetched. No wait while a task holds records of
    /// both its inputs.
    #[arg(long, env = "FEEDSTREAM_PROCESS_BATCH_WAIT_MS", default_value_t = 50)]
    pub process_batch_wait_ms: u64,
    /// Records buffered per input partition before the partition is paused; it is
    /// resumed at half (Kafka Streams' buffered.records.per.partition). librdkafka drops
    /// what it prefetched for a paused partition and fetches it again at resume, so the
    /// half left must outlast that fetch: 1,000 starved a replayed backlog.
    #[arg(
        long,
        env = "FEEDSTREAM_BUFFERED_RECORDS_PER_PARTITION",
        default_value_t = 4_000
    )]
    pub buffered_records_per_partition: usize,
    /// How long a processing cycle goes on reading after its first record before it
    /// processes up to --process-batch-records of them and commits, in milliseconds
    /// (Kafka Streams' commit.interval.ms): fewer, larger commits (transactions under
    /// exactly_once_v2) for more latency. 0: a cycle takes what has arrived.
    #[arg(long, env = "FEEDSTREAM_COMMIT_INTERVAL_MS", default_value_t = 0)]
    pub commit_interval_ms: u64,
    /// How long a task whose other input is empty waits for records of it not yet
    /// produced, in milliseconds (Kafka Streams' max.task.idle.ms, and its default 0).
    /// An input the broker still holds records of is always waited for, whatever this
    /// says, so that no record overtakes an older one of the other input.
    #[arg(long, env = "FEEDSTREAM_MAX_TASK_IDLE_MS", default_value_t = 0)]
    pub max_task_idle_ms: u64,
    /// Serve /metrics on this address (the `run` command serves them on the API).
    #[arg(long, env = "FEEDSTREAM_PROCESS_METRICS_LISTEN")]
    pub process_metrics_listen: Option<SocketAddr>,
    /// at_least_once: a crash makes the processor send again the feed changes of the
    /// records it replays (the sinks apply them once; other readers of feed-events see
    /// them twice). exactly_once_v2: each batch is one Kafka transaction (feed changes,
    /// changelog records, dead letters and input offsets), so read_committed readers
    /// see each change once; a crash costs a full restore of the stores.
    #[arg(
        long,
        env = "FEEDSTREAM_PROCESSING_GUARANTEE",
        default_value = "at_least_once",
        value_parser = parse_guarantee
    )]
    pub processing_guarantee: ProcessingGuarantee,
}

#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// Consumer group of the sink (default `<application-id>-sink`). A new group replays
    /// feed-events and post-events from the beginning.
    #[arg(long, env = "FEEDSTREAM_SINK_GROUP")]
    pub sink_group: Option<String>,
    /// Most records per sink batch (one PostgreSQL transaction each).
    #[arg(long, env = "FEEDSTREAM_SINK_BATCH_RECORDS", default_value_t = 1000)]
    pub sink_batch_records: usize,
    /// Longest wait for the first record of a sink batch, in milliseconds; after it, a
    /// batch takes only records already fetched (batches grow under load by themselves).
    #[arg(long, env = "FEEDSTREAM_SINK_BATCH_WAIT_MS", default_value_t = 50)]
    pub sink_batch_wait_ms: u64,
    /// Serve /metrics on this address (the `run` command serves them on the API).
    #[arg(long, env = "FEEDSTREAM_SINK_METRICS_LISTEN")]
    pub sink_metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub process: ProcessArgs,
    #[command(flatten)]
    pub sink: SinkArgs,
}

pub fn init_logging(global: &GlobalArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn,sqlx=warn")
        })
        // rdkafka's consumer module logs one error: when a consumer whose client failed
        // for good is dropped. The group consumer drops one at each attempt to join while
        // its instance id is still held, and says so itself, once.
        .add_directive(
            "rdkafka::consumer::base_consumer=off"
                .parse()
                .expect("a constant, valid directive"),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match global.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn parse_guarantee(text: &str) -> Result<ProcessingGuarantee, String> {
    text.parse()
        .map_err(|error: UnknownGuarantee| error.to_string())
}

/// A rate limit policy, or none (`off`).
#[derive(Debug, Clone, Copy)]
pub struct RateLimit(pub Option<Policy>);

/// `QUOTA/WINDOW` (`300/60s`, `20/1s`) or `off`.
fn parse_rate_limit(text: &str) -> Result<RateLimit, String> {
    if text.trim() == "off" {
        return Ok(RateLimit(None));
    }
    let (quota, window) = text
        .split_once('/')
        .ok_or_else(|| format!("expected QUOTA/WINDOW (e.g. 300/60s) or off, got {text:?}"))?;
    let quota: u32 = quota
        .trim()
        .parse()
        .ok()
        .filter(|quota| *quota > 0)
        .ok_or_else(|| format!("the quota of {text:?} is not a positive integer"))?;
    Ok(RateLimit(Some(Policy {
        quota,
        window: parse_duration(window)?,
    })))
}

/// `90`, `90s`, `15m`, `12h` or `7d`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let seconds_per_unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("expected a number with s, m, h or d, got {text:?}")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected a number with s, m, h or d, got {text:?}"))?;
    number
        .checked_mul(seconds_per_unit)
        .filter(|seconds| *seconds > 0)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is not a positive duration that fits"))
}

/// `KEY=VALUE`, both non-empty.
fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() && !value.is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_rate_limit};
    use std::time::Duration;

    #[test]
    fn rate_limits_are_quota_per_window_or_off() {
        let limit = parse_rate_limit("300/60s")
            .expect("valid")
            .0
            .expect("a policy");
        assert_eq!((limit.quota, limit.window), (300, Duration::from_secs(60)));
        assert!(parse_rate_limit("off").expect("valid").0.is_none());
        for bad in ["300", "0/60s", "x/1m", "10/", "10/0"] {
            assert!(parse_rate_limit(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "h", "0", "1w", "-5m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
