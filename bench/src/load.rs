//! HTTP load against the API: closed-loop workers (as many requests in flight as
//! connections) and an open-loop paced phase with probes that watch a post arrive in a
//! follower's feed. Latencies go to HDR histograms, per phase and per second.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::graph::Op;

/// Largest latency a histogram holds (60 s, in microseconds); slower ones are clamped.
const MAX_MICROS: u64 = 60_000_000;

#[derive(Clone)]
pub struct Target {
    http: reqwest::Client,
    base: String,
    /// `Authorization` values of users 1..=n, at index user - 1: minted once, so that
    /// the load generator spends no CPU on signing while it measures.
    authorizations: Arc<Vec<String>>,
}

/// What the API answered.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Target {
    /// A client of the API at `base` for users 1..=`users`.
    pub fn new(base: &str, connections: usize, users: u64) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        let authorizations = (1..=users)
            .map(|user| Ok(format!("Bearer {}", feedstream_harness::token(user)?)))
            .collect::<anyhow::Result<Vec<String>>>()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            authorizations: Arc::new(authorizations),
        })
    }

    /// The `Authorization` of `user`; none for a user beyond the workload's, whom the
    /// API then refuses.
    fn authorization(&self, user: u64) -> &str {
        usize::try_from(user.wrapping_sub(1))
            .ok()
            .and_then(|index| self.authorizations.get(index))
            .map_or("", String::as_str)
    }

    pub async fn send(&self, op: Op, index: usize) -> Result<Answer, reqwest::Error> {
        let (request, caller) = match op {
            Op::Follow { follower, followee } => (
                self.http
                    .post(format!("{}/follows", self.base))
                    .body(format!(r#"{{"followee_id":"{followee}"}}"#)),
                follower,
            ),
            Op::Unfollow { follower, followee } => (
                self.http
                    .delete(format!("{}/follows/{followee}", self.base)),
                follower,
            ),
            Op::Post { author } => (
                self.http.post(format!("{}/posts", self.base)).body(format!(
                    r#"{{"content":"bench post {index} by {author}: the quick brown fox jumps over the lazy dog"}}"#
                )),
                author,
            ),
            Op::Read { user } => (
                self.http.get(format!("{}/feeds/{user}?limit=20", self.base)),
                user,
            ),
        };
        let response = request
            .header("authorization", self.authorization(caller))
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?.to_vec();
        Ok(Answer { status, body })
    }
}

/// Latencies of successful requests (overall and per second since `started`), and the
/// count of every answer by status.
#[derive(Clone)]
pub struct Recorder {
    started: Instant,
    all: Histogram<u64>,
    windows: Vec<Histogram<u64>>,
    pub statuses: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub elapsed: Duration,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3)
        .unwrap_or_else(|error| unreachable!("constant histogram bounds are valid: {error}"))
}

impl Recorder {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            all: histogram(),
            windows: Vec::new(),
            statuses: BTreeMap::new(),
            transport_errors: 0,
            elapsed: Duration::ZERO,
        }
    }

    /// A success that took `latency` and ended at `ended`.
    pub fn record(&mut self, ended: Instant, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, MAX_MICROS);
        self.all.saturating_record(micros);
        let second = ended.saturating_duration_since(self.started).as_secs() as usize;
        if self.windows.len() <= second {
            self.windows.resize_with(second + 1, histogram);
        }
        self.windows[second].saturating_record(micros);
    }

    /// Sends `op` and records its answer, and its latency if it succeeded.
    async fn send(&mut self, target: &Target, op: Op, index: usize) {
        let sent = Instant::now();
        match target.send(op, index).await {
            Ok(answer) => {
                self.answered(answer.status);
                if (200..300).contains(&answer.status) {
                    let ended = Instant::now();
                    self.record(ended, ended - sent);
                }
            }
            Err(_) => self.transport_errors += 1,
        }
    }

    pub fn answered(&mut self, status: u16) {
        *self.statuses.entry(status).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.all.add(&other.all);
        if self.windows.len() < other.windows.len() {
            self.windows.resize_with(other.windows.len(), histogram);
        }
        for (mine, theirs) in self.windows.iter_mut().zip(&other.windows) {
            let _ = mine.add(theirs);
        }
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_default() += count;
        }
        self.transport_errors += other.transport_errors;
        self.elapsed = self.elapsed.max(other.elapsed);
    }

    pub fn successes(&self) -> u64 {
        self.all.len()
    }

    pub fn failures(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(status, _)| !(200..300).contains(*status))
            .map(|(_, count)| count)
            .sum::<u64>()
            + self.transport_errors
    }

    pub fn throughput(&self) -> f64 {
        self.successes() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn summary(&self) -> Latency {
        Latency::of(&self.all)
    }

    /// One point per second of the phase: successes, p50 and p99.
    pub fn timeline(&self) -> Vec<Window> {
        self.windows
            .iter()
            .enumerate()
            .map(|(second, window)| Window {
                second: second as u64,
                count: window.len(),
                p50_ms: millis(window.value_at_quantile(0.5)),
                p99_ms: millis(window.value_at_quantile(0.99)),
            })
            .collect()
    }
}

fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: millis(histogram.value_at_quantile(0.5)),
            p99_ms: millis(histogram.value_at_quantile(0.99)),
            p999_ms: millis(histogram.value_at_quantile(0.999)),
            max_ms: millis(histogram.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub second: u64,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `connections` workers each send the next operation `next(i)` as soon as their last
/// one is answered, until `next` returns None.
pub async fn closed_loop<F>(target: &Target, connections: usize, next: F) -> Recorder
where
    F: Fn(usize) -> Option<Op> + Send + Sync + 'static,
{
    let started = Instant::now();
    let next = Arc::new(next);
    let counter = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (target, next, counter) = (target.clone(), next.clone(), counter.clone());
            tokio::spawn(async move {
                let mut recorder = Recorder::new(started);
                loop {
                    let index = counter.fetch_add(1, Ordering::Relaxed);
                    let Some(op) = next(index) else { break };
                    recorder.send(&target, op, index).await;
                }
                recorder
            })
        })
        .collect();
    let mut total = Recorder::new(started);
    for worker in workers {
        if let Ok(recorder) = worker.await {
            total.merge(&recorder);
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// What the paced phase measured.
pub struct Paced {
    pub posts: Recorder,
    pub visibility: Recorder,
    /// Probe posts the API accepted.
    pub probe_posts: u64,
    /// Accepted probe posts not seen in the follower's feed within the deadline.
    pub lost_probes: u64,
}

/// How long a probe waits for its post to appear before counting it lost.
const PROBE_DEADLINE: Duration = Duration::from_secs(30);
/// How often a probe reads the follower's feed at first.
const PROBE_POLL: Duration = Duration::from_millis(20);
/// Beyond `PROBE_POLL`, a probe pauses this fraction of the time it has waited so far,
/// so a latency is measured to within this fraction and a probe that waits `w` reads
/// about `w / PROBE_POLL` times up to 0.4 s, then `ln(w / 0.4 s) / PROBE_BACKOFF` more.
/// With a fixed interval, the reads grew with the wait: a lagging pipeline drew ever
/// more reads (8 s behind: 400 per probe, 8,000/s), whose CPU made it lag further.
const PROBE_BACKOFF: f64 = 0.05;
/// Most background requests in flight: beyond it the phase is not open-loop any more,
/// and the report shows a lower achieved rate.
const MAX_IN_FLIGHT: usize = 1024;

/// Posts by `author_of(i)` at `rate` per second for `duration` (open loop: the schedule
/// does not wait for answers), plus one probe every `probe_every`: a post by a probe
/// author, then reads of one follower's feed until the post is in it.
pub async fn paced(
    target: &Target,
    rate: f64,
    duration: Duration,
    author_of: impl Fn(usize) -> u64,
    probes: &[(u64, u64)],
    probe_every: Duration,
) -> Paced {
    let started = Instant::now();
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<Recorder>();
    // Each send's recorder holds a whole histogram: merge them as they come, so that
    // memory stays bounded by the sends in flight, not by the length of the phase.
    let merged = tokio::spawn(async move {
        let mut posts = Recorder::new(started);
        while let Some(recorder) = sent_rx.recv().await {
            posts.merge(&recorder);
        }
        posts
    });
    let mut probe_tasks = Vec::new();
    let mut next_probe = started;
    let mut index = 0usize;
    loop {
        let due = started + Duration::from_secs_f64(index as f64 / rate.max(1e-3));
        if due >= started + duration {
            break;
        }
        while next_probe <= due && !probes.is_empty() {
            let (author, follower) = probes[probe_tasks.len() % probes.len()];
            let target = target.clone();
            probe_tasks.push(tokio::spawn(async move {
                probe(&target, author, follower, started).await
            }));
            next_probe += probe_every;
        }
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (target, sent_tx) = (target.clone(), sent_tx.clone());
        let op = Op::Post {
            author: author_of(index),
        };
        tokio::spawn(async move {
            let mut recorder = Recorder::new(started);
            recorder.send(&target, op, index).await;
            drop(permit);
            let _ = sent_tx.send(recorder);
        });
        index += 1;
    }
    drop(sent_tx);
    let mut posts = merged.await.unwrap_or_else(|_| Recorder::new(started));
    posts.elapsed = started.elapsed();
    let mut visibility = Recorder::new(started);
    let (mut probe_posts, mut lost_probes) = (0, 0);
    for task in probe_tasks {
        match task.await {
            Ok(Probe::Seen { at, after }) => {
                probe_posts += 1;
                visibility.record(at, after);
            }
            Ok(Probe::Lost) => {
                probe_posts += 1;
                lost_probes += 1;
            }
            Ok(Probe::NotPosted) | Err(_) => {}
        }
    }
    visibility.elapsed = started.elapsed();
    Paced {
        posts,
        visibility,
        probe_posts,
        lost_probes,
    }
}

enum Probe {
    /// The post was in the feed at `at`, `after` it was sent.
    Seen {
        at: Instant,
        after: Duration,
    },
    /// Accepted, but not seen within the deadline.
    Lost,
    NotPosted,
}

/// Posts as `author`, then reads `follower`'s feed until the post is in it.
async fn probe(target: &Target, author: u64, follower: u64, started: Instant) -> Probe {
    let sent = Instant::now();
    let post_id = match target
        .send(Op::Post { author }, started.elapsed().as_nanos() as usize)
        .await
    {
        Ok(answer) if (200..300).contains(&answer.status) => {
            serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|body| Some(body["post_id"].as_str()?.to_string()))
        }
        _ => None,
    };
    let Some(post_id) = post_id else {
        return Probe::NotPosted;
    };
    let needle = format!(r#""id":"{post_id}""#);
    while sent.elapsed() < PROBE_DEADLINE {
        let seen = target.send(Op::Read { user: follower }, 0).await;
        if seen.is_ok_and(|feed| feed.status == 200 && contains(&feed.body, needle.as_bytes())) {
            let at = Instant::now();
            return Probe::Seen {
                at,
                after: at - sent,
            };
        }
        tokio::time::sleep(probe_pause(sent.elapsed())).await;
    }
    Probe::Lost
}

/// How long a probe that has waited `waited` pauses before its next read.
fn probe_pause(waited: Duration) -> Duration {
    PROBE_POLL.max(waited.mul_f64(PROBE_BACKOFF))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_pauses_for_a_bounded_fraction_of_its_wait() {
        assert_eq!(probe_pause(Duration::ZERO), PROBE_POLL);
        assert_eq!(probe_pause(Duration::from_millis(100)), PROBE_POLL);
        assert_eq!(
            probe_pause(Duration::from_secs(8)),
            Duration::from_millis(400)
        );
    }

    #[test]
    fn a_recorder_keeps_percentiles_and_one_window_per_second() {
        let started = Instant::now();
        let mut recorder = Recorder::new(started);
        for millis in 1..=100 {
            recorder.record(started, Duration::from_millis(millis));
        }
        recorder.record(started + Duration::from_secs(2), Duration::from_millis(7));
        recorder.answered(202);
        recorder.answered(503);
        let summary = recorder.summary();
        assert_eq!(summary.count, 101);
        assert!((49.0..=51.0).contains(&summary.p50_ms), "{summary:?}");
        assert!((99.0..=101.0).contains(&summary.p99_ms), "{summary:?}");
        let timeline = recorder.timeline();
        assert_eq!(
            timeline.iter().map(|w| w.count).collect::<Vec<_>>(),
            [100, 0, 1]
        );
        assert_eq!(recorder.failures(), 1);

        let mut merged = Recorder::new(started);
        merged.merge(&recorder);
        merged.merge(&recorder);
        assert_eq!(merged.successes(), 202);
        assert_eq!(merged.statuses[&503], 2);
    }

    #[test]
    fn contains_finds_a_post_id_in_a_feed_body() {
        let body = br#"[{"id":"12","author_id":"3"},{"id":"123","author_id":"4"}]"#;
        assert!(contains(body, br#""id":"123""#));
        assert!(!contains(body, br#""id":"1234""#));
    }
}
