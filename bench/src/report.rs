//! The bench result: one JSON document and a Markdown report with SVG plots.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::ceilings::{BrokerCeiling, RedisCeiling};
use crate::load::{Latency, Recorder, Window};
use crate::plot::{line_chart, Series};

#[derive(Debug, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub machine: BTreeMap<&'static str, String>,
    pub workload: Workload,
    pub ceilings: Ceilings,
    pub follows: Phase,
    pub seed_posts: Phase,
    pub posts: Phase,
    pub materialization: Materialization,
    pub visibility: Visibility,
    /// The same, with the processor under exactly_once_v2.
    pub visibility_exactly_once: Visibility,
    /// What the processor under exactly_once_v2 did from its start to the end of that
    /// phase.
    pub transactions: Transactions,
    pub reads_miss: Reads,
    pub reads_hit: Reads,
    /// The hit phase again without rate limits, then with them: what the limiter costs.
    pub rate_limiter: RateLimiterAb,
    pub redis_memory: RedisMemory,
    pub restore: Restore,
    pub replay: Replay,
    /// The same backlog, replayed under exactly_once_v2.
    pub replay_exactly_once: Replay,
    pub processor: ProcessorCost,
    /// CPU seconds each process used in each phase: where the time goes.
    pub cpu: Vec<PhaseCpu>,
    /// What one operation of a phase cost every process, and the rates that implies.
    pub operation_costs: Vec<OperationCost>,
    pub targets: Vec<TargetCheck>,
}

#[derive(Debug, Serialize)]
pub struct Workload {
    pub users: u64,
    pub follows: usize,
    pub posts: u64,
    pub celebrity_threshold: u64,
    pub celebrities: usize,
    pub largest_follower_count: usize,
    pub median_follower_count: usize,
    pub connections: usize,
    pub partitions: i32,
    pub seed: u64,
}

#[derive(Debug, Serialize)]
pub struct Ceilings {
    pub broker: BrokerCeiling,
    pub redis: RedisCeiling,
}

/// Requests of one phase through the HTTP API.
#[derive(Debug, Serialize)]
pub struct Phase {
    pub succeeded: u64,
    pub failed: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub seconds: f64,
    pub per_second: f64,
    pub latency: Latency,
    pub timeline: Vec<Window>,
}

impl From<&Recorder> for Phase {
    fn from(recorder: &Recorder) -> Self {
        Phase {
            succeeded: recorder.successes(),
            failed: recorder.failures(),
            statuses: recorder.statuses.clone(),
            seconds: recorder.elapsed.as_secs_f64(),
            per_second: recorder.throughput(),
            latency: recorder.summary(),
            timeline: recorder.timeline(),
        }
    }
}

/// Feed changes the sink made durable from the first post of the max-load phase until
/// it had applied everything the processor produced.
#[derive(Debug, Serialize)]
pub struct Materialization {
    pub postgres_changes: f64,
    pub redis_changes: f64,
    /// Feed entries (ENTRY_ADDED) the processor produced in the phase.
    pub feed_entries: f64,
    pub seconds: f64,
    pub postgres_per_second: f64,
    pub redis_per_second: f64,
    pub ratio_to_produce_ceiling: f64,
    /// Posts per second from the first POST until every feed holds every post: the
    /// largest rate the whole pipeline sustains.
    pub end_to_end_posts_per_second: f64,
    pub timeline: Vec<RatePoint>,
}

#[derive(Debug, Serialize)]
pub struct RatePoint {
    pub second: f64,
    pub postgres_per_second: f64,
    pub redis_per_second: f64,
}

#[derive(Debug, Serialize)]
pub struct Visibility {
    pub target_posts_per_second: f64,
    pub posts: Phase,
    pub probes: u64,
    pub lost_probes: u64,
    pub latency: Latency,
    pub timeline: Vec<Window>,
}

#[derive(Debug, Serialize)]
pub struct Transactions {
    pub committed: f64,
    pub aborted: f64,
    /// Changelog records it restored: after an abort its tasks restore from the start.
    pub restored_records: f64,
    pub mean_batch_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Reads {
    pub requests: Phase,
    /// What the API's own counters say these reads were.
    pub cache_hits: f64,
    pub cache_misses: f64,
    pub ratio_to_redis_ceiling: f64,
}

/// Cache hits with rate limits, on a second API without them, and on the first again
/// (A/B/A, so that a drift of the machine shows as a difference between the two As).
#[derive(Debug, Serialize)]
pub struct RateLimiterAb {
    pub runs: Vec<LimiterRun>,
}

#[derive(Debug, Serialize)]
pub struct LimiterRun {
    pub phase: &'static str,
    pub rate_limits: bool,
    pub pages_per_second: f64,
    pub p99_ms: f64,
    /// CPU of the API that served the phase, and of Redis, per page.
    pub api_cpu_us_per_page: f64,
    pub redis_cpu_us_per_page: f64,
}

impl LimiterRun {
    /// The run of `phase`, served by the watched process `api`, from its reads and the
    /// CPU the phases used.
    pub fn of(
        phase: &'static str,
        api: &str,
        rate_limits: bool,
        reads: &Reads,
        cpu: &[PhaseCpu],
    ) -> Self {
        let pages = (reads.requests.succeeded as f64).max(1.0);
        let seconds_of = |process: &str| {
            cpu.iter()
                .find(|entry| entry.phase == phase)
                .and_then(|entry| entry.cpu_seconds.get(process))
                .copied()
                .unwrap_or(0.0)
        };
        Self {
            phase,
            rate_limits,
            pages_per_second: reads.requests.per_second,
            p99_ms: reads.requests.latency.p99_ms,
            api_cpu_us_per_page: seconds_of(api) * 1e6 / pages,
            redis_cpu_us_per_page: seconds_of("redis") * 1e6 / pages,
        }
    }
}

/// What the read cache costs Redis, from `MEMORY USAGE` of a sample of its keys after
/// the hit phase.
#[derive(Debug, Serialize)]
pub struct RedisMemory {
    pub used_memory_bytes: f64,
    pub sampled_feeds: u64,
    pub sampled_feed_entries: u64,
    /// The feed's sorted set, per entry it holds.
    pub bytes_per_feed_entry: f64,
    pub sampled_post_bodies: u64,
    pub bytes_per_post_body: f64,
}

#[derive(Debug, Serialize)]
pub struct Restore {
    pub records: f64,
    /// Sum over stores and tasks of the time spent restoring.
    pub seconds: f64,
    pub per_second: f64,
    pub ratio_to_consume_ceiling: f64,
    /// From the start of the wiped processor until it ran every task again.
    pub seconds_until_running: f64,
}

/// A second processor (its own application id, so its own group, changelogs and state)
/// replays every input record written so far: a pre-produced backlog.
#[derive(Debug, Serialize)]
pub struct Replay {
    pub input_records: f64,
    pub seconds: f64,
    /// Feed-events and changelog records it wrote.
    pub records_written: f64,
    pub changelog_records: f64,
    pub changelog_per_input_record: f64,
    pub written_per_second: f64,
    pub ratio_to_produce_ceiling: f64,
    pub cpu_seconds: f64,
    /// Of the replaying processor, whose input buffers are full throughout.
    pub peak_rss_mb: f64,
    /// Waits of tasks for their other input (`processor_input_wait_seconds`): their
    /// count and their sum over tasks, which can exceed the wall time.
    pub input_waits: f64,
    pub input_wait_seconds: f64,
    /// Where its cycles' wall time went (`stage_cycle_seconds`), in seconds.
    pub cycle: CycleTime,
}

/// A stage's wall time by step of its cycle; `apply` is the part of `work` spent
/// applying records to the stores (`event_processing_duration_seconds`), the rest of
/// `work` is waiting for the broker's acknowledgements.
#[derive(Debug, Serialize)]
pub struct CycleTime {
    pub cycles: f64,
    pub read: f64,
    pub work: f64,
    pub apply: f64,
    pub commit: f64,
    pub finish: f64,
}

#[derive(Debug, Serialize)]
pub struct ProcessorCost {
    pub feed_entries: f64,
    pub feed_changes: f64,
    pub input_records: f64,
    /// Records sent to the changelogs for those input records.
    pub changelog_records: f64,
    pub cpu_seconds: f64,
    pub entries_per_cpu_second: f64,
    /// The same for the maximum-load phase alone, where fan-out is most of the work:
    /// the whole run also counts the follows phase, whose records cause no entries.
    pub max_load_cpu_seconds: f64,
    pub max_load_entries_per_cpu_second: f64,
    pub peak_rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct PhaseCpu {
    pub phase: &'static str,
    pub wall_seconds: f64,
    pub cpu_seconds: BTreeMap<String, f64>,
}

/// The CPU one operation of a phase cost each process: what bounds the phase's rate on
/// this machine, whatever else it waits for.
#[derive(Debug, Serialize)]
pub struct OperationCost {
    pub phase: &'static str,
    pub operation: &'static str,
    pub operations: f64,
    pub cpu_us: BTreeMap<String, f64>,
    pub total_cpu_us: f64,
    /// Operations per second if they had the machine's cores to themselves.
    pub all_cores_ceiling: f64,
    /// Operations per second if Redis, one thread, had a core to itself (none without
    /// Redis work).
    pub redis_ceiling: Option<f64>,
}

impl OperationCost {
    /// The cost of `operations` of `phase`, from the CPU the phases used, with
    /// `cores` cores.
    pub fn of(
        phase: &'static str,
        operation: &'static str,
        operations: f64,
        cpu: &[PhaseCpu],
        cores: usize,
    ) -> Self {
        let count = operations.max(1.0);
        let cpu_us: BTreeMap<String, f64> = cpu
            .iter()
            .find(|entry| entry.phase == phase)
            .map(|entry| {
                entry
                    .cpu_seconds
                    .iter()
                    .map(|(process, seconds)| (process.clone(), seconds * 1e6 / count))
                    .collect()
            })
            .unwrap_or_default();
        let total_cpu_us: f64 = cpu_us.values().sum();
        let redis_us = cpu_us.get("redis").copied().unwrap_or(0.0);
        Self {
            phase,
            operation,
            operations,
            all_cores_ceiling: cores as f64 * 1e6 / total_cpu_us.max(1e-9),
            redis_ceiling: (redis_us >= 1.0).then(|| 1e6 / redis_us),
            cpu_us,
            total_cpu_us,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TargetCheck {
    pub what: &'static str,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

impl Report {
    /// The targets of the issue that asked for this harness, against this run.
    pub fn check_targets(&mut self) {
        let produce = self.ceilings.broker.produce_per_second;
        let consume = self.ceilings.broker.consume_per_second;
        let checks = [
            (
                "POST /posts throughput",
                "≥ 20,000/s".to_string(),
                self.posts.per_second,
                self.posts.per_second >= 20_000.0,
                "/s",
            ),
            (
                "POST /posts p99",
                "< 25 ms".to_string(),
                self.posts.latency.p99_ms,
                self.posts.latency.p99_ms < 25.0,
                " ms",
            ),
            (
                "feed changes materialized (PostgreSQL and Redis)",
                format!("≥ 0.6 × produce ceiling = {:.0}/s", 0.6 * produce),
                self.materialization.postgres_per_second,
                self.materialization.ratio_to_produce_ceiling >= 0.6,
                "/s",
            ),
            (
                "post → visible p99 at half load",
                "< 250 ms".to_string(),
                self.visibility.latency.p99_ms,
                self.visibility.latency.p99_ms < 250.0 && self.visibility.lost_probes == 0,
                " ms",
            ),
            (
                "GET /feeds cache hits",
                "≥ 30,000/s".to_string(),
                self.reads_hit.requests.per_second,
                self.reads_hit.requests.per_second >= 30_000.0,
                "/s",
            ),
            (
                "GET /feeds cache hits ÷ Redis ceiling",
                "≥ 0.3".to_string(),
                self.reads_hit.ratio_to_redis_ceiling,
                self.reads_hit.ratio_to_redis_ceiling >= 0.3,
                "",
            ),
            (
                "GET /feeds cache hits p99",
                "< 10 ms".to_string(),
                self.reads_hit.requests.latency.p99_ms,
                self.reads_hit.requests.latency.p99_ms < 10.0,
                " ms",
            ),
            (
                "GET /feeds cache misses",
                "≥ 5,000/s".to_string(),
                self.reads_miss.requests.per_second,
                self.reads_miss.requests.per_second >= 5_000.0,
                "/s",
            ),
            (
                "GET /feeds cache misses p99",
                "< 30 ms".to_string(),
                self.reads_miss.requests.latency.p99_ms,
                self.reads_miss.requests.latency.p99_ms < 30.0,
                " ms",
            ),
            (
                "state restore",
                format!("≥ 0.8 × consume ceiling = {:.0}/s", 0.8 * consume),
                self.restore.per_second,
                self.restore.ratio_to_consume_ceiling >= 0.8,
                "/s",
            ),
            (
                "`process` on a backlog: records written",
                format!("≥ 0.5 × produce ceiling = {:.0}/s", 0.5 * produce),
                self.replay.written_per_second,
                self.replay.ratio_to_produce_ceiling >= 0.5,
                "/s",
            ),
            (
                "feed entries per CPU-second of `process` (maximum-load phase)",
                "≥ 400,000".to_string(),
                self.processor.max_load_entries_per_cpu_second,
                self.processor.max_load_entries_per_cpu_second >= 400_000.0,
                "",
            ),
            (
                "peak RSS of `process`",
                "≤ 100 MB".to_string(),
                self.processor.peak_rss_mb,
                self.processor.peak_rss_mb <= 100.0,
                " MB",
            ),
        ];
        self.targets = checks
            .into_iter()
            .map(|(what, target, measured, met, unit)| TargetCheck {
                what,
                target,
                measured: format!("{}{unit}", figure(measured)),
                met,
            })
            .collect();
    }

    /// Writes `report.json`, `report.md` and the plots into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        for (file, svg) in self.plots() {
            std::fs::write(dir.join(file), svg)?;
        }
        std::fs::write(dir.join("report.md"), self.markdown())?;
        Ok(())
    }

    fn plots(&self) -> [(&'static str, String); 3] {
        let latency = |timeline: &[Window], p99: bool| -> Vec<(f64, f64)> {
            timeline
                .iter()
                .filter(|window| window.count > 0)
                .map(|w| (w.second as f64, if p99 { w.p99_ms } else { w.p50_ms }))
                .collect()
        };
        let posts_latency = line_chart(
            "POST /posts latency at maximum load (per second)",
            "seconds into the phase",
            "milliseconds",
            &[
                Series {
                    name: "p50",
                    color: "#1f77b4",
                    points: latency(&self.posts.timeline, false),
                },
                Series {
                    name: "p99",
                    color: "#d62728",
                    points: latency(&self.posts.timeline, true),
                },
            ],
        );
        let throughput = line_chart(
            "Throughput at maximum load",
            "seconds into the phase",
            "per second",
            &[
                Series {
                    name: "posts accepted",
                    color: "#1f77b4",
                    points: self
                        .posts
                        .timeline
                        .iter()
                        .map(|w| (w.second as f64, w.count as f64))
                        .collect(),
                },
                Series {
                    name: "feed changes into PostgreSQL",
                    color: "#2ca02c",
                    points: self
                        .materialization
                        .timeline
                        .iter()
                        .map(|p| (p.second, p.postgres_per_second))
                        .collect(),
                },
                Series {
                    name: "feed changes into Redis",
                    color: "#ff7f0e",
                    points: self
                        .materialization
                        .timeline
                        .iter()
                        .map(|p| (p.second, p.redis_per_second))
                        .collect(),
                },
            ],
        );
        let visibility = line_chart(
            "Post → visible in a follower's feed, at half the sustained load (per second)",
            "seconds into the phase",
            "milliseconds",
            &[
                Series {
                    name: "p50",
                    color: "#1f77b4",
                    points: latency(&self.visibility.timeline, false),
                },
                Series {
                    name: "p99",
                    color: "#d62728",
                    points: latency(&self.visibility.timeline, true),
                },
            ],
        );
        [
            ("posts-latency.svg", posts_latency),
            ("throughput.svg", throughput),
            ("visibility-latency.svg", visibility),
        ]
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let w = &self.workload;
        let c = &self.ceilings;
        let _ = writeln!(md, "# feedstream benchmark\n");
        let _ = writeln!(
            md,
            "Generated by `feedstream-bench` at {}. Machine: {} cores ({}), {}, Linux {}. \
             Everything runs on this machine: a single-node Apache Kafka broker (KRaft), PostgreSQL, \
             Redis, `feedstream api`, `process` and `sink`, and the load generator itself.\n",
            self.generated_at,
            self.machine.get("cores").map_or("?", String::as_str),
            self.machine.get("cpu").map_or("?", String::as_str),
            self.machine.get("memory").map_or("?", String::as_str),
            self.machine.get("kernel").map_or("?", String::as_str),
        );
        let _ = writeln!(
            md,
            "Workload (seed {}): {} users, {} follows (power law: largest follower count {}, \
             median {}; {} celebrities above the threshold of {}), {} posts, {} HTTP \
             connections, {} partitions.\n",
            w.seed,
            w.users,
            w.follows,
            w.largest_follower_count,
            w.median_follower_count,
            w.celebrities,
            w.celebrity_threshold,
            w.posts,
            w.connections,
            w.partitions
        );

        let _ = writeln!(md, "## Targets\n");
        let _ = writeln!(md, "| What | Target | Measured | Met |\n|---|---|---|---|");
        for t in &self.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                t.what,
                t.target,
                t.measured,
                if t.met { "yes" } else { "**no**" }
            );
        }

        let _ = writeln!(md, "\n## Ceilings of this machine\n");
        let _ = writeln!(md, "| Ceiling | Rate |\n|---|---|");
        let _ = writeln!(
            md,
            "| broker produce ({} feed-event-sized records, acks=all, idempotent) | {}/s |",
            c.broker.records,
            figure(c.broker.produce_per_second)
        );
        let _ = writeln!(
            md,
            "| broker consume (the same records, partition by partition) | {}/s |",
            figure(c.broker.consume_per_second)
        );
        let _ = writeln!(
            md,
            "| Redis ZREVRANGEBYLEX of 20 ({} tasks over {} connections) | {}/s |",
            c.redis.concurrency,
            c.redis.connections,
            figure(c.redis.per_second)
        );

        let _ = writeln!(md, "\n## Results\n");
        let _ = writeln!(
            md,
            "| Measure | Rate | Ratio to ceiling | p50 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|"
        );
        let row = |md: &mut String, name: &str, phase: &Phase, ratio: Option<String>| {
            let l = &phase.latency;
            let _ = writeln!(
                md,
                "| {name} | {}/s | {} | {} ms | {} ms | {} ms | {} ms |",
                figure(phase.per_second),
                ratio.unwrap_or_else(|| "–".into()),
                figure(l.p50_ms),
                figure(l.p99_ms),
                figure(l.p999_ms),
                figure(l.max_ms)
            );
        };
        row(&mut md, "POST /follows (graph load)", &self.follows, None);
        row(
            &mut md,
            "POST /posts, maximum load",
            &self.posts,
            Some(format!(
                "{:.2} × produce",
                self.posts.per_second / c.broker.produce_per_second
            )),
        );
        row(
            &mut md,
            "GET /feeds, cache hits",
            &self.reads_hit.requests,
            Some(format!(
                "{:.2} × Redis",
                self.reads_hit.ratio_to_redis_ceiling
            )),
        );
        row(
            &mut md,
            "GET /feeds, cache misses",
            &self.reads_miss.requests,
            Some(format!(
                "{:.2} × Redis",
                self.reads_miss.ratio_to_redis_ceiling
            )),
        );
        let m = &self.materialization;
        let _ = writeln!(
            md,
            "| feed changes into PostgreSQL | {}/s | {:.2} × produce | | | | |",
            figure(m.postgres_per_second),
            m.ratio_to_produce_ceiling
        );
        let _ = writeln!(
            md,
            "| feed changes into Redis | {}/s | {:.2} × produce | | | | |",
            figure(m.redis_per_second),
            m.redis_per_second / c.broker.produce_per_second
        );
        let v = &self.visibility.latency;
        let _ = writeln!(
            md,
            "| post → visible in a follower's feed, at {}/s | | | {} ms | {} ms | {} ms | {} ms |",
            figure(self.visibility.target_posts_per_second),
            figure(v.p50_ms),
            figure(v.p99_ms),
            figure(v.p999_ms),
            figure(v.max_ms)
        );
        let e = &self.visibility_exactly_once.latency;
        let _ = writeln!(
            md,
            "| the same under exactly_once_v2 | | | {} ms | {} ms | {} ms | {} ms |",
            figure(e.p50_ms),
            figure(e.p99_ms),
            figure(e.p999_ms),
            figure(e.max_ms)
        );
        let r = &self.restore;
        let _ = writeln!(
            md,
            "| state restore ({} changelog records) | {}/s | {:.2} × consume | | | | |",
            figure(r.records),
            figure(r.per_second),
            r.ratio_to_consume_ceiling
        );
        let b = &self.replay;
        let _ = writeln!(
            md,
            "| `process` on a backlog of {} input records: records written ({} changelog, {:.2} per input record) | {}/s | {:.2} × produce | | | | |",
            figure(b.input_records),
            figure(b.changelog_records),
            b.changelog_per_input_record,
            figure(b.written_per_second),
            b.ratio_to_produce_ceiling
        );
        let x = &self.replay_exactly_once;
        let _ = writeln!(
            md,
            "| the same backlog under exactly_once_v2 ({} changelog) | {}/s | {:.2} × produce | | | | |",
            figure(x.changelog_records),
            figure(x.written_per_second),
            x.ratio_to_produce_ceiling
        );
        let _ = writeln!(
            md,
            "\nThe backlog took {:.1} s; the replaying `process` used {:.1} CPU-seconds (peak \
             RSS {:.1} MB), and its tasks waited for their other input {} times, {:.1} s in all \
             (summed over tasks).\n",
            b.seconds,
            b.cpu_seconds,
            b.peak_rss_mb,
            figure(b.input_waits),
            b.input_wait_seconds
        );
        for (name, replay) in [("at-least-once", b), ("exactly_once_v2", x)] {
            let c = &replay.cycle;
            let _ = writeln!(
                md,
                "Its cycles under {name} ({} with work, `stage_cycle_seconds`): reading {:.1} s, \
                 work {:.1} s (applying records {:.1} s, waiting for the broker's \
                 acknowledgements or transaction {:.1} s), committing offsets {:.1} s, \
                 checkpoints and metrics {:.1} s.\n",
                figure(c.cycles),
                c.read,
                c.work,
                c.apply,
                (c.work - c.apply).max(0.0),
                c.commit,
                c.finish
            );
        }
        let _ = writeln!(
            md,
            "**Cost of exactly-once** (a transaction per batch): on the backlog, {:.2} × the \
             records written per second of at-least-once ({:.1} s, {:.1} CPU-seconds against \
             {:.1} s, {:.1}); post → visible p50 {:.2} ×, p99 {:.2} × at-least-once's.\n",
            x.written_per_second / b.written_per_second.max(1e-9),
            x.seconds,
            x.cpu_seconds,
            b.seconds,
            b.cpu_seconds,
            e.p50_ms / v.p50_ms.max(1e-9),
            e.p99_ms / v.p99_ms.max(1e-9)
        );
        let t = &self.transactions;
        let _ = writeln!(
            md,
            "In the half-rate phase the exactly-once processor committed {} transactions \
             and aborted {} (it restored {} changelog records); a batch took {:.0} ms on \
             average.\n",
            figure(t.committed),
            figure(t.aborted),
            figure(t.restored_records),
            t.mean_batch_seconds * 1000.0
        );
        let p = &self.processor;
        let _ = writeln!(
            md,
            "\n**Processor cost**: {} feed entries ({} feed changes from {} input records, \
             which wrote {} changelog records: {:.2} per input record) in {:.2} CPU-seconds \
             of `process`: **{} entries per CPU-second**; peak RSS **{:.1} MB**. In the \
             maximum-load phase alone: {} entries in {:.2} CPU-seconds, **{} entries per \
             CPU-second**.\n",
            figure(p.feed_entries),
            figure(p.feed_changes),
            figure(p.input_records),
            figure(p.changelog_records),
            p.changelog_records / p.input_records.max(1.0),
            p.cpu_seconds,
            figure(p.entries_per_cpu_second),
            p.peak_rss_mb,
            figure(self.materialization.feed_entries),
            p.max_load_cpu_seconds,
            figure(p.max_load_entries_per_cpu_second),
        );
        let _ = writeln!(
            md,
            "The maximum-load phase took {:.1} s to accept {} posts and {:.1} s until every \
             feed held them: {} posts/s end to end, so the visibility phase posts at half \
             that, {}/s ({} probes, {} not seen within 30 s). Reads: {} hits and {} misses \
             by the API's own counters in the hit phase; {} misses in the miss phase. \
             The restarted processor ran every task again {:.1} s after it started.\n",
            self.posts.seconds,
            self.posts.succeeded,
            m.seconds,
            figure(m.end_to_end_posts_per_second),
            figure(self.visibility.target_posts_per_second),
            self.visibility.probes,
            self.visibility.lost_probes,
            self.reads_hit.cache_hits,
            self.reads_hit.cache_misses,
            self.reads_miss.cache_misses,
            r.seconds_until_running
        );

        let memory = &self.redis_memory;
        let _ = writeln!(
            md,
            "**Redis memory** (`MEMORY USAGE` of {} feeds and {} post bodies after the hit \
             phase): **{:.1} bytes per cached feed entry**, **{:.1} bytes per cached post \
             body**; Redis used {:.1} MB in all.\n",
            memory.sampled_feeds,
            memory.sampled_post_bodies,
            memory.bytes_per_feed_entry,
            memory.bytes_per_post_body,
            memory.used_memory_bytes / 1e6
        );

        let _ = writeln!(md, "## What the rate limiter costs a cached page\n");
        let _ = writeln!(
            md,
            "The hit phase, then the same reads on a second API with `--read-rate-limit off`, \
             then on the first again (A/B/A in one run).\n"
        );
        let _ = writeln!(
            md,
            "| Phase | Rate limits | Pages/s | p99 ms | API CPU µs/page | Redis CPU µs/page |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|");
        for run in &self.rate_limiter.runs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.0} | {:.0} |",
                run.phase,
                if run.rate_limits { "on" } else { "off" },
                figure(run.pages_per_second),
                run.p99_ms,
                run.api_cpu_us_per_page,
                run.redis_cpu_us_per_page
            );
        }
        let _ = writeln!(md);

        let _ = writeln!(md, "## Where the time goes\n");
        let _ = writeln!(
            md,
            "CPU-seconds per process and phase, from /proc (2 cores = 2 CPU-seconds per \
             second of wall time).\n"
        );
        let names: std::collections::BTreeSet<&String> = self
            .cpu
            .iter()
            .flat_map(|phase| phase.cpu_seconds.keys())
            .collect();
        let _ = write!(md, "| Phase | Wall s |");
        for name in &names {
            let _ = write!(md, " {name} |");
        }
        let _ = write!(md, "\n|---|---|");
        for _ in &names {
            let _ = write!(md, "---|");
        }
        let _ = writeln!(md);
        for phase in &self.cpu {
            let _ = write!(md, "| {} | {:.1} |", phase.phase, phase.wall_seconds);
            for name in &names {
                let _ = write!(
                    md,
                    " {:.1} |",
                    phase.cpu_seconds.get(*name).copied().unwrap_or(0.0)
                );
            }
            let _ = writeln!(md);
        }

        let _ = writeln!(md, "\n## What one operation costs\n");
        let _ = writeln!(
            md,
            "CPU-µs per operation of the phase, per process (from the table above), and the \
             rates that CPU allows: with every core, and with Redis's one thread on a core of \
             its own. A phase's rate cannot exceed either.\n"
        );
        let _ = write!(md, "| Phase | Operation | Count |");
        for name in &names {
            let _ = write!(md, " {name} |");
        }
        let _ = writeln!(md, " all µs | all-cores ceiling /s | Redis ceiling /s |");
        let _ = write!(md, "|---|---|---|");
        for _ in &names {
            let _ = write!(md, "---|");
        }
        let _ = writeln!(md, "---|---|---|");
        for cost in &self.operation_costs {
            let _ = write!(
                md,
                "| {} | {} | {} |",
                cost.phase,
                cost.operation,
                figure(cost.operations)
            );
            for name in &names {
                let _ = write!(
                    md,
                    " {:.0} |",
                    cost.cpu_us.get(*name).copied().unwrap_or(0.0)
                );
            }
            let _ = writeln!(
                md,
                " {:.0} | {} | {} |",
                cost.total_cpu_us,
                figure(cost.all_cores_ceiling),
                cost.redis_ceiling.map_or("–".to_string(), figure)
            );
        }
        let _ = writeln!(md, "\n## Plots\n");
        let _ = writeln!(md, "![POST latency](posts-latency.svg)\n");
        let _ = writeln!(md, "![Throughput](throughput.svg)\n");
        let _ = writeln!(md, "![Visibility latency](visibility-latency.svg)");
        md
    }
}

/// A figure with thousands separators (integers) or two decimals (small numbers).
pub fn figure(value: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    if value.abs() < 100.0 && value.fract() != 0.0 {
        return format!("{value:.2}");
    }
    let rounded = value.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if rounded < 0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_grouped_or_rounded() {
        assert_eq!(figure(1234567.4), "1,234,567");
        assert_eq!(figure(999.0), "999");
        assert_eq!(figure(12.345), "12.35");
        assert_eq!(figure(-4500.0), "-4,500");
        assert_eq!(figure(f64::NAN), "–");
    }
}
