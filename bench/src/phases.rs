//! The measured phases after the graph is loaded: reads that miss and hit the cache,
//! posts at maximum load, posts at half the sustained load with visibility probes, a
//! state restore, and a replay of every input record by a second processor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::Child;
use tokio::sync::watch;

use crate::graph::{Graph, Op};
use crate::load::{self, closed_loop, Target};
use crate::report::{
    CycleTime, Materialization, Phase, RatePoint, Reads, RedisMemory, Replay, Restore, Visibility,
};
use feedstream_harness::Scrape;
use feedstream_read::layout;

use crate::system;
use crate::{say, Args, Bench, Ceilings, DRAIN_DEADLINE};

const POSTGRES: &str = "sink=\"postgres\"";
const REDIS: &str = "sink=\"redis\"";
const APPLIED: &str = "sink_feed_changes_applied_total";
/// ENTRY_ADDED the processor produced.
const ENTRIES: &str = "fanout_entries_total";

impl Bench {
    /// Every user's first page once, with the read cache emptied first (feeds, follows,
    /// merged posts, bodies): each read goes to PostgreSQL and fills the cache.
    pub(crate) async fn reads_miss(
        &mut self,
        args: &Args,
        target: &Target,
        ceilings: &Ceilings,
    ) -> anyhow::Result<Reads> {
        for pattern in layout::cache_key_patterns(&self.redis_prefix) {
            delete_keys(&self.redis_url, &pattern).await?;
        }
        let users = args.users as usize;
        self.reads(target, ceilings, move |i| {
            (i < users).then_some(Op::Read { user: i as u64 + 1 })
        })
        .await
    }

    /// First pages of random users for `read_seconds`, all cached by now.
    pub(crate) async fn reads_hit(
        &mut self,
        args: &Args,
        target: &Target,
        ceilings: &Ceilings,
    ) -> anyhow::Result<Reads> {
        let until = Instant::now() + Duration::from_secs(args.read_seconds);
        let users = args.users;
        self.reads(target, ceilings, move |i| {
            (Instant::now() < until).then(|| Op::Read {
                user: spread(i as u64, users),
            })
        })
        .await
    }

    async fn reads<F>(
        &mut self,
        target: &Target,
        ceilings: &Ceilings,
        next: F,
    ) -> anyhow::Result<Reads>
    where
        F: Fn(usize) -> Option<Op> + Send + Sync + 'static,
    {
        let before = self.scrape(&self.api_url).await?;
        let recorder = closed_loop(target, self.connections, next).await;
        let after = self.scrape(&self.api_url).await?;
        let delta = |name| after.sum(name, "") - before.sum(name, "");
        Ok(Reads {
            requests: Phase::from(&recorder),
            cache_hits: delta("feed_cache_hits_total"),
            cache_misses: delta("feed_cache_misses_total"),
            ratio_to_redis_ceiling: recorder.throughput() / ceilings.redis.per_second,
        })
    }

    /// The phase's operations as fast as the connections allow, then the time until the
    /// sink has materialized everything they caused.
    pub(crate) async fn max_load(
        &mut self,
        target: &Target,
        ops: Arc<Vec<Op>>,
        ceilings: &Ceilings,
    ) -> anyhow::Result<(Phase, Materialization)> {
        let before = self.scrape(&self.sink_url).await?;
        let entries_before = self.scrape(&self.process_url).await?.sum(ENTRIES, "");
        let started = Instant::now();
        let (stop, stopped) = watch::channel(false);
        let sampler = tokio::spawn(sample_sink(
            self.http.clone(),
            self.sink_url.clone(),
            started,
            stopped,
        ));
        let list = ops.clone();
        let recorder = closed_loop(target, self.connections, move |i| list.get(i).copied()).await;
        self.accepted += recorder.successes();
        self.await_drained().await?;
        let seconds = started.elapsed().as_secs_f64();
        let _ = stop.send(true);
        let samples = sampler.await?;
        let after = self.scrape(&self.sink_url).await?;
        let feed_entries = self.scrape(&self.process_url).await?.sum(ENTRIES, "") - entries_before;
        let postgres_changes = after.sum(APPLIED, POSTGRES) - before.sum(APPLIED, POSTGRES);
        let redis_changes = after.sum(APPLIED, REDIS) - before.sum(APPLIED, REDIS);
        let posts = ops
            .iter()
            .filter(|op| matches!(op, Op::Post { .. }))
            .count();
        let postgres_per_second = postgres_changes / seconds;
        let materialization = Materialization {
            postgres_changes,
            redis_changes,
            feed_entries,
            seconds,
            postgres_per_second,
            redis_per_second: redis_changes / seconds,
            ratio_to_produce_ceiling: postgres_per_second / ceilings.broker.produce_per_second,
            end_to_end_posts_per_second: posts as f64 / seconds,
            timeline: rates(&samples),
        };
        Ok((Phase::from(&recorder), materialization))
    }

    /// Posts at `rate` (open loop) with probes, (author, follower) pairs, that time a
    /// post's arrival in the follower's feed.
    pub(crate) async fn visibility(
        &mut self,
        args: &Args,
        target: &Target,
        graph: &Graph,
        probes: &[(u64, u64)],
        rate: f64,
    ) -> anyhow::Result<Visibility> {
        let users = graph.users;
        let paced = load::paced(
            target,
            rate,
            Duration::from_secs(args.visibility_seconds),
            move |i| spread(i as u64, users),
            probes,
            Duration::from_millis(50),
        )
        .await;
        self.accepted += paced.posts.successes() + paced.probe_posts;
        self.await_drained().await?;
        Ok(Visibility {
            target_posts_per_second: rate,
            posts: Phase::from(&paced.posts),
            probes: paced.probe_posts,
            lost_probes: paced.lost_probes,
            latency: paced.visibility.summary(),
            timeline: paced.visibility.timeline(),
        })
    }

    /// Stops the processor, wipes its state directory and starts it again: it restores
    /// every store of every task from the changelogs before it runs.
    pub(crate) async fn restore(
        &mut self,
        args: &Args,
        processor: &mut Child,
        ceilings: &Ceilings,
    ) -> anyhow::Result<Restore> {
        self.stop(processor).await?;
        system::remove_dir(&self.state_dir)?;
        let started = Instant::now();
        *processor = self
            .feedstream
            .spawn(&["process"], "process-restored.log")?;
        self.watch("process (restoring)", processor);
        self.await_tasks(args.partitions).await?;
        let seconds_until_running = started.elapsed().as_secs_f64();
        let metrics = self.scrape(&self.process_url).await?;
        let records = metrics.sum("state_restore_records_total", "");
        let seconds = metrics.sum("state_restore_duration_seconds_sum", "");
        let per_second = records / seconds.max(1e-9);
        Ok(Restore {
            records,
            seconds,
            per_second,
            ratio_to_consume_ceiling: per_second / ceilings.broker.consume_per_second,
            seconds_until_running,
        })
    }

    /// Stops the processor and starts it again with `extra` arguments; what the stopped
    /// one processed is kept for [`Bench::await_drained`].
    pub(crate) async fn restart_processor(
        &mut self,
        processor: &mut Child,
        extra: &[&str],
        log: &str,
    ) -> anyhow::Result<()> {
        let metrics = self.scrape(&self.process_url).await?;
        self.processed_before.0 += metrics.sum("processor_records_total", "");
        self.processed_before.1 += metrics.sum("processor_feed_changes_total", "");
        self.stop(processor).await?;
        let mut args = vec!["process"];
        args.extend_from_slice(extra);
        *processor = self.feedstream.spawn(&args, log)?;
        self.watch("process", processor);
        Ok(())
    }

    /// Starts a processor of another application, `application` (its own consumer
    /// group, changelogs and state), with `extra` arguments, that reads every input
    /// record from the beginning: a pre-produced backlog of `input_records`. Done when
    /// it has processed them all. The bench's own processor and sink are stopped.
    pub(crate) async fn replay(
        &mut self,
        partitions: i32,
        input_records: f64,
        ceilings: &Ceilings,
        application: &str,
        extra: &[&str],
    ) -> anyhow::Result<Replay> {
        let port = feedstream_harness::free_port()?;
        let env = [
            ("FEEDSTREAM_APPLICATION_ID", application.to_string()),
            (
                "FEEDSTREAM_STATE_DIR",
                self.state_dir
                    .with_file_name(format!("{application}-state"))
                    .display()
                    .to_string(),
            ),
            (
                "FEEDSTREAM_PROCESS_METRICS_LISTEN",
                format!("127.0.0.1:{port}"),
            ),
        ];
        // The inputs exist; this creates the replaying application's changelogs.
        let partitions = partitions.to_string();
        self.feedstream
            .run_with(
                &["topics", "create", "--partitions", &partitions],
                "topics-create-replay.log",
                &env,
            )
            .await?;
        let started = Instant::now();
        let mut args = vec!["process"];
        args.extend_from_slice(extra);
        let mut replaying =
            self.feedstream
                .spawn_with(&args, &format!("process-{application}.log"), &env)?;
        self.watch("process (replaying)", &replaying);
        let url = format!("http://127.0.0.1:{port}");
        feedstream_harness::poll_until(
            DRAIN_DEADLINE,
            crate::POLL,
            "the replaying processor to process every input record",
            || async {
                Ok(self
                    .scrape(&url)
                    .await
                    .map(|metrics| metrics.sum("processor_records_total", ""))
                    .unwrap_or(0.0)
                    >= input_records)
            },
        )
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        let metrics = self.scrape(&url).await?;
        let changelog_records = metrics.sum("processor_changelog_records_total", "");
        let records_written = changelog_records
            + metrics.sum("processor_feed_changes_total", "")
            + metrics.sum("dlq_messages_total", "");
        let cpu_seconds = replaying.id().and_then(system::cpu_seconds).unwrap_or(0.0);
        let peak_rss_mb = replaying.id().and_then(system::peak_rss_bytes).unwrap_or(0) as f64 / 1e6;
        self.stop(&mut replaying).await?;
        let written_per_second = records_written / seconds.max(1e-9);
        Ok(Replay {
            input_records,
            seconds,
            records_written,
            changelog_records,
            changelog_per_input_record: changelog_records / input_records.max(1.0),
            written_per_second,
            ratio_to_produce_ceiling: written_per_second / ceilings.broker.produce_per_second,
            cpu_seconds,
            peak_rss_mb,
            input_waits: metrics.sum("processor_input_wait_seconds_count", ""),
            input_wait_seconds: metrics.sum("processor_input_wait_seconds_sum", ""),
            cycle: cycle_time(&metrics),
        })
    }

    pub(crate) async fn await_tasks(&self, partitions: i32) -> anyhow::Result<()> {
        feedstream_harness::poll_until(
            DRAIN_DEADLINE,
            crate::POLL,
            "the processor to run its tasks",
            || async {
                Ok(self
                    .scrape(&self.process_url)
                    .await
                    .map(|metrics| metrics.sum("processor_active_tasks", ""))
                    .unwrap_or(0.0)
                    >= f64::from(partitions))
            },
        )
        .await
    }

    /// Removes every Redis key the run made.
    pub(crate) async fn cleanup(&self) {
        if let Err(error) = delete_keys(&self.redis_url, &format!("{}*", self.redis_prefix)).await {
            say(&format!(
                "could not remove the bench's Redis keys: {error:#}"
            ));
        }
    }
}

/// A deterministic, well-spread user for the i-th request (Fibonacci hashing).
fn spread(i: u64, users: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % users + 1
}

/// (seconds since `started`, PostgreSQL changes, Redis changes) every second.
async fn sample_sink(
    http: reqwest::Client,
    sink_url: String,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<(f64, f64, f64)> {
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    while !*stop.borrow() {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => break,
        }
        if let Ok(metrics) = Scrape::of(&http, &sink_url).await {
            samples.push((
                started.elapsed().as_secs_f64(),
                metrics.sum(APPLIED, POSTGRES),
                metrics.sum(APPLIED, REDIS),
            ));
        }
    }
    samples
}

fn rates(samples: &[(f64, f64, f64)]) -> Vec<RatePoint> {
    samples
        .windows(2)
        .map(|pair| {
            let ((t0, pg0, r0), (t1, pg1, r1)) = (pair[0], pair[1]);
            let span = (t1 - t0).max(1e-9);
            RatePoint {
                second: t1,
                postgres_per_second: (pg1 - pg0) / span,
                redis_per_second: (r1 - r0) / span,
            }
        })
        .collect()
}

/// Deletes the keys matching `pattern`, a SCAN page at a time.
impl Bench {
    /// Bytes per cached feed entry and per cached post body, from a sample of keys.
    pub(crate) async fn redis_memory(&self) -> anyhow::Result<RedisMemory> {
        const SAMPLE: usize = 500;
        let mut redis = connect_redis(&self.redis_url).await?;
        let feeds = scan_some(
            &mut redis,
            &layout::feed_key_pattern(&self.redis_prefix),
            SAMPLE,
        )
        .await?;
        let posts = scan_some(
            &mut redis,
            &layout::post_key_pattern(&self.redis_prefix),
            SAMPLE,
        )
        .await?;
        let (mut feed_bytes, mut entries) = (0u64, 0u64);
        for key in &feeds {
            let (bytes, count): (Option<u64>, u64) = redis::pipe()
                .cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .arg("SAMPLES")
                .arg(0)
                .cmd("ZCARD")
                .arg(key)
                .query_async(&mut redis)
                .await?;
            feed_bytes += bytes.unwrap_or(0);
            entries += count;
        }
        let mut post_bytes = 0u64;
        for key in &posts {
            let bytes: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .query_async(&mut redis)
                .await?;
            post_bytes += bytes.unwrap_or(0);
        }
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut redis)
            .await?;
        let used = info
            .lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        Ok(RedisMemory {
            used_memory_bytes: used,
            sampled_feeds: feeds.len() as u64,
            sampled_feed_entries: entries,
            bytes_per_feed_entry: feed_bytes as f64 / entries.max(1) as f64,
            sampled_post_bodies: posts.len() as u64,
            bytes_per_post_body: post_bytes as f64 / posts.len().max(1) as f64,
        })
    }
}

/// Up to `limit` keys matching `pattern`.
async fn scan_some(
    redis: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
    limit: usize,
) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(redis)
            .await?;
        found.extend(keys);
        if next == 0 || found.len() >= limit {
            found.truncate(limit);
            return Ok(found);
        }
        cursor = next;
    }
}

async fn delete_keys(url: &str, pattern: &str) -> anyhow::Result<()> {
    let mut redis = connect_redis(url).await?;
    let keys = scan_some(&mut redis, pattern, usize::MAX).await?;
    for chunk in keys.chunks(1000) {
        redis::cmd("DEL")
            .arg(chunk)
            .query_async::<()>(&mut redis)
            .await?;
    }
    Ok(())
}

async fn connect_redis(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).context("the Redis URL")?;
    client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {url}"))
}

/// Where the processor's cycles spent their wall time, from its `/metrics`.
fn cycle_time(metrics: &Scrape) -> CycleTime {
    let step = |step: &str| {
        metrics.sum(
            "stage_cycle_seconds_total",
            &format!("stage=\"processor\",step=\"{step}\""),
        )
    };
    CycleTime {
        cycles: metrics.sum("processor_batch_duration_seconds_count", ""),
        read: step("read"),
        work: step("work"),
        apply: metrics.sum("event_processing_duration_seconds_sum", ""),
        commit: step("commit"),
        finish: step("finish"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_stays_among_the_users_and_reaches_most_of_them() {
        let users = 5_000;
        let seen: std::collections::HashSet<u64> = (0..50_000).map(|i| spread(i, users)).collect();
        assert!(seen.iter().all(|user| (1..=users).contains(user)));
        assert!(seen.len() > 4_900, "{} users reached", seen.len());
    }

    #[test]
    fn rates_are_deltas_over_time() {
        let points = rates(&[(0.0, 0.0, 0.0), (0.5, 100.0, 50.0), (1.0, 100.0, 60.0)]);
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].postgres_per_second, 200.0);
        assert_eq!(points[0].redis_per_second, 100.0);
        assert_eq!(points[1].postgres_per_second, 0.0);
        assert_eq!(points[1].second, 1.0);
    }
}
