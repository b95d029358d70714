//! `feedstream-bench`: measures the machine's ceilings, starts feedstream (api, process,
//! sink) against the given broker, PostgreSQL and Redis, drives it through its HTTP API
//! and writes a JSON result and a Markdown report with plots. `scripts/bench.sh` runs it
//! against a fresh broker; see the README.

mod ceilings;
mod graph;
mod load;
mod phases;
mod plot;
mod report;
mod system;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use feedstream_kafka::KafkaSettings;
use tokio::process::Child;

use feedstream_harness::Scrape;
use graph::{Graph, Op};
use load::{closed_loop, Target};
use report::{
    Ceilings, LimiterRun, OperationCost, Phase, PhaseCpu, ProcessorCost, RateLimiterAb, Report,
    Transactions, Workload,
};
use system::{Component, CpuSnapshot, Feedstream};

#[derive(Debug, Parser)]
#[command(name = "feedstream-bench", version)]
struct Args {
    /// Directory for report.json, report.md and the plots.
    #[arg(long)]
    out: PathBuf,
    /// The feedstream binary to run (default: next to this one).
    #[arg(long)]
    feedstream: Option<PathBuf>,
    #[arg(long, env = "FEEDSTREAM_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// A database of its own: the bench creates its tables and fills them.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The broker's process id, to account for its CPU time.
    #[arg(long)]
    broker_pid: Option<u32>,
    #[arg(long, default_value_t = 5_000)]
    users: u64,
    #[arg(long, default_value_t = 150_000)]
    follows: usize,
    /// Posts of the maximum-load phase (every user also posts once before it, and the
    /// visibility phase posts more).
    #[arg(long, default_value_t = 25_000)]
    posts: usize,
    /// Share of the maximum-load phase's requests that unfollow or follow.
    #[arg(long, default_value_t = 0.02)]
    churn: f64,
    #[arg(long, default_value_t = 2_000)]
    celebrity_threshold: u64,
    /// Concurrent HTTP connections of the closed-loop phases.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Records of the broker ceiling measurement.
    #[arg(long, default_value_t = 200_000)]
    ceiling_records: u64,
    #[arg(long, default_value_t = 10)]
    read_seconds: u64,
    #[arg(long, default_value_t = 20)]
    visibility_seconds: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `--commit-interval-ms` of the processor in the exactly-once phases (0, as in the
    /// at-least-once ones, isolates the cost of one transaction per batch).
    #[arg(long, default_value_t = 0)]
    exactly_once_commit_interval_ms: u64,
}

/// The phase whose processor CPU gives entries per CPU-second.
const MAX_LOAD: &str = "posts: maximum load";
/// The cache-hit phases: the first, the same on an api without rate limits, and the
/// first again.
const READS_HIT: &str = "reads: hits";
const READS_HIT_UNLIMITED: &str = "reads: hits, no rate limits";
const READS_HIT_AGAIN: &str = "reads: hits, rate limits again";

/// How long any phase may take to drain before the bench gives up.
const DRAIN_DEADLINE: Duration = Duration::from_secs(900);
/// How often the bench polls for a condition.
const POLL: Duration = Duration::from_millis(100);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run_id = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let work = std::env::temp_dir().join(format!("feedstream-bench-{run_id}"));
    std::fs::create_dir_all(&work)?;
    let redis_prefix = format!("bench-{run_id}:");
    let kafka = KafkaSettings {
        brokers: args.brokers.clone(),
        delivery_timeout: Duration::from_secs(300),
        debug: None,
        fetch_wait: feedstream_kafka::DEFAULT_FETCH_WAIT,
        consumer_properties: Vec::new(),
    };
    let mut bench = Bench::new(&args, &work, &redis_prefix)?;

    say("measuring the broker's raw produce and consume rates");
    let broker = ceilings::broker(
        &kafka,
        "bench-ceiling-",
        args.partitions,
        args.ceiling_records,
    )
    .await?;
    say(&format!(
        "  produce {:.0}/s, consume {:.0}/s",
        broker.produce_per_second, broker.consume_per_second
    ));
    say("measuring Redis's raw sorted-set read rate");
    let redis = ceilings::redis(
        &args.redis_url,
        &redis_prefix,
        4,
        args.connections,
        Duration::from_secs(5),
    )
    .await?;
    say(&format!("  {:.0} reads/s", redis.per_second));
    bench.phase_done("ceilings");

    let result = bench.drive(&args, Ceilings { broker, redis }).await;
    bench.cleanup().await;
    let mut report = result?;
    report.check_targets();
    report.write(&args.out)?;
    say(&format!(
        "report written to {}",
        args.out.join("report.md").display()
    ));
    for target in &report.targets {
        say(&format!(
            "  {:<45} {:>16} (target {}){}",
            target.what,
            target.measured,
            target.target,
            if target.met { "" } else { "  MISSED" }
        ));
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn say(message: &str) {
    eprintln!("[feedstream-bench] {message}");
}

/// The running system and the bookkeeping around its phases.
struct Bench {
    feedstream: Feedstream,
    http: reqwest::Client,
    /// Base URLs of the three /metrics pages (the API's is set once it listens).
    api_url: String,
    process_url: String,
    sink_url: String,
    redis_url: String,
    redis_prefix: String,
    connections: usize,
    state_dir: PathBuf,
    components: Vec<(String, Component)>,
    cpu: Vec<PhaseCpu>,
    last_cpu: CpuSnapshot,
    /// Watched processes stopped in this phase, with the CPU they had used by then.
    stopped: Vec<(String, u32, f64)>,
    phase_started: Instant,
    /// Input events the API acknowledged so far.
    accepted: u64,
    /// What processors stopped before the running one counted (their counters are
    /// gone with them): input records and feed changes.
    processed_before: (f64, f64),
}

impl Bench {
    fn new(args: &Args, work: &std::path::Path, redis_prefix: &str) -> anyhow::Result<Self> {
        let binary = match &args.feedstream {
            Some(path) => path.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("the bench binary has no directory")?
                .join("feedstream"),
        };
        anyhow::ensure!(
            binary.exists(),
            "no feedstream binary at {}",
            binary.display()
        );
        let (process_port, sink_port) = (
            feedstream_harness::free_port()?,
            feedstream_harness::free_port()?,
        );
        let state_dir = work.join("state");
        let env = vec![
            ("FEEDSTREAM_BROKERS", args.brokers.clone()),
            ("DATABASE_URL", args.database_url.clone()),
            ("REDIS_URL", args.redis_url.clone()),
            ("FEEDSTREAM_REDIS_PREFIX", redis_prefix.to_string()),
            ("FEEDSTREAM_TOPIC_PREFIX", "bench-".to_string()),
            ("FEEDSTREAM_APPLICATION_ID", "bench".to_string()),
            (
                "FEEDSTREAM_CELEBRITY_THRESHOLD",
                args.celebrity_threshold.to_string(),
            ),
            ("FEEDSTREAM_STATE_DIR", state_dir.display().to_string()),
            (
                "FEEDSTREAM_PROCESS_METRICS_LISTEN",
                format!("127.0.0.1:{process_port}"),
            ),
            (
                "FEEDSTREAM_SINK_METRICS_LISTEN",
                format!("127.0.0.1:{sink_port}"),
            ),
            ("RUST_LOG", "warn".to_string()),
            (
                "FEEDSTREAM_TOKEN_KEYS",
                feedstream_harness::TOKEN_KEYS.to_string(),
            ),
            (
                "FEEDSTREAM_WRITE_RATE_LIMIT",
                feedstream_harness::RATE_LIMIT.to_string(),
            ),
            (
                "FEEDSTREAM_READ_RATE_LIMIT",
                feedstream_harness::RATE_LIMIT.to_string(),
            ),
        ];
        let mut components = vec![("bench".to_string(), Component::Pid(std::process::id()))];
        if let Some(pid) = args.broker_pid {
            components.push(("broker".to_string(), Component::Pid(pid)));
        }
        components.push(("postgres".to_string(), Component::Named("postgres")));
        components.push(("redis".to_string(), Component::Named("redis-server")));
        let last_cpu = system::cpu_snapshot(&components);
        Ok(Self {
            feedstream: Feedstream {
                binary,
                env,
                logs: work.to_path_buf(),
            },
            http: reqwest::Client::new(),
            api_url: String::new(),
            process_url: format!("http://127.0.0.1:{process_port}"),
            sink_url: format!("http://127.0.0.1:{sink_port}"),
            redis_url: args.redis_url.clone(),
            redis_prefix: redis_prefix.to_string(),
            connections: args.connections,
            state_dir,
            components,
            cpu: Vec::new(),
            last_cpu,
            stopped: Vec::new(),
            phase_started: Instant::now(),
            accepted: 0,
            processed_before: (0.0, 0.0),
        })
    }

    /// Closes a phase: the CPU each process used since the last one.
    fn phase_done(&mut self, phase: &'static str) {
        let mut now = system::cpu_snapshot(&self.components);
        for (name, pid, seconds) in self.stopped.drain(..) {
            now.record(name, pid, seconds);
        }
        self.cpu.push(PhaseCpu {
            phase,
            wall_seconds: self.phase_started.elapsed().as_secs_f64(),
            cpu_seconds: now.since(&self.last_cpu),
        });
        self.last_cpu = now;
        self.phase_started = Instant::now();
    }

    /// Stops a child; if it is watched, the phase still counts the CPU it used.
    async fn stop(&mut self, child: &mut Child) -> anyhow::Result<()> {
        if let Some(pid) = child.id() {
            let watched = self.components.iter().find_map(|(name, component)| {
                matches!(component, Component::Pid(known) if *known == pid).then(|| name.clone())
            });
            if let (Some(name), Some(seconds)) = (watched, system::cpu_seconds(pid)) {
                self.stopped.push((name, pid, seconds));
            }
        }
        system::terminate(child, Duration::from_secs(60)).await
    }

    fn watch(&mut self, name: &str, child: &Child) {
        if let Some(pid) = child.id() {
            self.components.retain(|(known, _)| known != name);
            self.components
                .push((name.to_string(), Component::Pid(pid)));
        }
    }

    async fn scrape(&self, url: &str) -> anyhow::Result<Scrape> {
        Scrape::of(&self.http, url).await
    }

    /// Waits until the processor has processed every accepted event and the sink has
    /// made durable every feed change the processor produced.
    async fn await_drained(&self) -> anyhow::Result<()> {
        let accepted = self.accepted as f64;
        let (records_before, changes_before) = self.processed_before;
        feedstream_harness::poll_until(DRAIN_DEADLINE, POLL, "the pipeline to drain", || async {
            let processor = self.scrape(&self.process_url).await?;
            let sink = self.scrape(&self.sink_url).await?;
            Ok(
                records_before + processor.sum("processor_records_total", "") >= accepted
                    && sink.sum("sink_feed_changes_applied_total", "sink=\"postgres\"")
                        >= changes_before + processor.sum("processor_feed_changes_total", ""),
            )
        })
        .await
    }

    async fn drive(&mut self, args: &Args, ceilings: Ceilings) -> anyhow::Result<Report> {
        let mut rng = fastrand::Rng::with_seed(args.seed);
        say(&format!(
            "generating the graph: {} users, {} follows",
            args.users, args.follows
        ));
        let graph = Arc::new(Graph::generate(args.users, args.follows, &mut rng));

        say("starting feedstream: topics, migrations, api, process, sink");
        let partitions = args.partitions.to_string();
        self.feedstream
            .run(&["topics", "create", "--partitions", &partitions])
            .await?;
        self.feedstream.run(&["migrate"]).await?;
        let (api, base) = self.feedstream.spawn_api("api.log", &[]).await?;
        // Idle until the rate limiter's A/B/A: the same reads, without limits.
        let no_limits = [
            ("FEEDSTREAM_READ_RATE_LIMIT", "off".to_string()),
            ("FEEDSTREAM_WRITE_RATE_LIMIT", "off".to_string()),
        ];
        let (mut unlimited_api, unlimited_base) = self
            .feedstream
            .spawn_api("api-unlimited.log", &no_limits)
            .await?;
        let mut processor = self.feedstream.spawn(&["process"], "process.log")?;
        let mut sink = self.feedstream.spawn(&["sink"], "sink.log")?;
        self.watch("api", &api);
        self.watch("process", &processor);
        self.watch("sink", &sink);
        self.watch("api-unlimited", &unlimited_api);
        let target = Target::new(&base, args.connections, graph.users)?;
        let unlimited = Target::new(&unlimited_base, args.connections, graph.users)?;
        self.api_url = base;
        let processor_pid = processor.id().context("the processor exited")?;
        self.await_tasks(args.partitions).await?;
        self.phase_done("start");

        say(&format!("phase: {} follows over HTTP", graph.edges.len()));
        let edges = graph.clone();
        let follows = closed_loop(&target, args.connections, move |i| {
            edges.edges.get(i).map(|(follower, followee)| Op::Follow {
                follower: *follower,
                followee: *followee,
            })
        })
        .await;
        self.accepted += follows.successes();
        self.await_drained().await?;
        self.phase_done("follows");

        say("phase: one post per user, so that every feed has an entry");
        let users = args.users;
        let seed_posts = closed_loop(&target, args.connections, move |i| {
            (i < users as usize).then_some(Op::Post {
                author: i as u64 + 1,
            })
        })
        .await;
        self.accepted += seed_posts.successes();
        self.await_drained().await?;
        self.phase_done("seed posts");

        say("phase: cache misses (every user's feed once, after emptying Redis)");
        let reads_miss = self.reads_miss(args, &target, &ceilings).await?;
        self.phase_done("reads: misses");

        say(&format!(
            "phase: {} posts at maximum load, with follow churn",
            args.posts
        ));
        let ops = Arc::new(graph.post_phase(args.posts, args.churn, &mut rng));
        let max_load_posts = ops
            .iter()
            .filter(|op| matches!(op, Op::Post { .. }))
            .count() as u64;
        // Probes watch follows that stay: none the churn unfollows.
        let unfollowed: std::collections::HashSet<(u64, u64)> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Unfollow { follower, followee } => Some((*followee, *follower)),
                _ => None,
            })
            .collect();
        let mut probes = graph.probe_pairs(args.celebrity_threshold);
        probes.retain(|pair| !unfollowed.contains(pair));
        rng.shuffle(&mut probes);
        let (posts, materialization) = self.max_load(&target, ops, &ceilings).await?;
        self.phase_done(MAX_LOAD);

        let rate = materialization.end_to_end_posts_per_second / 2.0;
        say(&format!(
            "phase: post → visible, at half the sustained rate ({rate:.0} posts/s)"
        ));
        let visibility = self
            .visibility(args, &target, &graph, &probes, rate)
            .await?;
        self.phase_done("posts: half load");

        say(&format!("phase: cache hits for {} s", args.read_seconds));
        let reads_hit = self.reads_hit(args, &target, &ceilings).await?;
        self.phase_done(READS_HIT);
        let redis_memory = self.redis_memory().await?;
        self.phase_done("redis memory");

        say("phase: the rate limiter's cost, A/B/A: cache hits on a second api without rate limits, then on the first again");
        let limited_url = std::mem::replace(&mut self.api_url, unlimited_base);
        let reads_unlimited = self.reads_hit(args, &unlimited, &ceilings).await?;
        self.phase_done(READS_HIT_UNLIMITED);
        self.api_url = limited_url;
        let reads_again = self.reads_hit(args, &target, &ceilings).await?;
        self.phase_done(READS_HIT_AGAIN);
        self.stop(&mut unlimited_api).await?;
        let rate_limiter = RateLimiterAb {
            runs: [
                (READS_HIT, "api", true, &reads_hit),
                (
                    READS_HIT_UNLIMITED,
                    "api-unlimited",
                    false,
                    &reads_unlimited,
                ),
                (READS_HIT_AGAIN, "api", true, &reads_again),
            ]
            .into_iter()
            .map(|(phase, api, limited, reads)| {
                LimiterRun::of(phase, api, limited, reads, &self.cpu)
            })
            .collect(),
        };

        let processor_metrics = self.scrape(&self.process_url).await?;
        let feed_entries = processor_metrics.sum("fanout_entries_total", "");
        let cpu_seconds = system::cpu_seconds(processor_pid).unwrap_or(0.0);
        let max_load_cpu_seconds = self
            .cpu
            .iter()
            .find(|entry| entry.phase == MAX_LOAD)
            .and_then(|entry| entry.cpu_seconds.get("process"))
            .copied()
            .unwrap_or(0.0);
        let processor_cost = ProcessorCost {
            feed_entries,
            feed_changes: processor_metrics.sum("processor_feed_changes_total", ""),
            input_records: processor_metrics.sum("processor_records_total", ""),
            changelog_records: processor_metrics.sum("processor_changelog_records_total", ""),
            cpu_seconds,
            entries_per_cpu_second: feed_entries / cpu_seconds.max(1e-9),
            max_load_cpu_seconds,
            max_load_entries_per_cpu_second: materialization.feed_entries
                / max_load_cpu_seconds.max(1e-9),
            peak_rss_mb: system::peak_rss_bytes(processor_pid).unwrap_or(0) as f64 / 1e6,
        };

        say(&format!(
            "phase: post → visible at {rate:.0} posts/s under exactly-once (the processor \
             restarts with --processing-guarantee exactly_once_v2)"
        ));
        let exactly_once = [
            "--processing-guarantee",
            "exactly_once_v2",
            "--commit-interval-ms",
            &args.exactly_once_commit_interval_ms.to_string(),
        ];
        self.restart_processor(&mut processor, &exactly_once, "process-exactly-once.log")
            .await?;
        self.await_tasks(args.partitions).await?;
        let visibility_exactly_once = self
            .visibility(args, &target, &graph, &probes, rate)
            .await?;
        let metrics = self.scrape(&self.process_url).await?;
        let transactions = Transactions {
            committed: metrics.sum("processor_transactions_total", "outcome=\"committed\""),
            aborted: metrics.sum("processor_transactions_total", "outcome=\"aborted\""),
            restored_records: metrics.sum("state_restore_records_total", ""),
            mean_batch_seconds: metrics.sum("processor_batch_duration_seconds_sum", "")
                / metrics
                    .sum("processor_batch_duration_seconds_count", "")
                    .max(1.0),
        };
        self.phase_done("posts: half load, exactly-once");

        say("phase: state restore (the processor stops, its state is wiped, it restarts)");
        let restore = self
            .restore(args, &mut processor, &ceilings)
            .await
            .context("restoring the processor's state")?;
        self.phase_done("restore");

        say("phase: backlog (a second application replays every input record)");
        self.stop(&mut processor).await?;
        self.stop(&mut sink).await?;
        let input_records = self.accepted as f64;
        let replay = self
            .replay(
                args.partitions,
                input_records,
                &ceilings,
                "bench-replay",
                &[],
            )
            .await
            .context("replaying the inputs")?;
        self.phase_done("backlog");
        say("phase: backlog under exactly-once (a third application replays them)");
        let replay_exactly_once = self
            .replay(
                args.partitions,
                input_records,
                &ceilings,
                "bench-replay-eos",
                &exactly_once,
            )
            .await
            .context("replaying the inputs under exactly-once")?;
        self.phase_done("backlog: exactly-once");

        let mut counts: Vec<usize> = (1..=graph.users)
            .map(|user| graph.follower_count(user))
            .collect();
        counts.sort_unstable();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let operation_costs = [
            ("follows", "follow", follows.successes() as f64),
            (
                "reads: misses",
                "page",
                reads_miss.requests.succeeded as f64,
            ),
            (
                MAX_LOAD,
                "request, with its fan-out",
                posts.succeeded as f64,
            ),
            (READS_HIT, "page", reads_hit.requests.succeeded as f64),
            ("backlog", "input record", replay.input_records),
        ]
        .into_iter()
        .map(|(phase, operation, count)| {
            OperationCost::of(phase, operation, count, &self.cpu, cores)
        })
        .collect();
        Ok(Report {
            generated_at: chrono::Utc::now().to_rfc3339(),
            machine: system::machine(),
            workload: Workload {
                users: args.users,
                follows: graph.edges.len(),
                posts: seed_posts.successes()
                    + max_load_posts
                    + visibility.posts.succeeded
                    + visibility.probes,
                celebrity_threshold: args.celebrity_threshold,
                celebrities: graph.celebrities(args.celebrity_threshold).len(),
                largest_follower_count: counts.last().copied().unwrap_or(0),
                median_follower_count: counts.get(counts.len() / 2).copied().unwrap_or(0),
                connections: args.connections,
                partitions: args.partitions,
                seed: args.seed,
            },
            ceilings,
            follows: Phase::from(&follows),
            seed_posts: Phase::from(&seed_posts),
            posts,
            materialization,
            visibility,
            visibility_exactly_once,
            transactions,
            reads_miss,
            reads_hit,
            rate_limiter,
            redis_memory,
            restore,
            replay,
            replay_exactly_once,
            processor: processor_cost,
            cpu: std::mem::take(&mut self.cpu),
            operation_costs,
            targets: Vec::new(),
        })
    }
}
