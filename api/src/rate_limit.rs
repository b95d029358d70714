//! Rate limits per user and class of route, shared by every API instance: a GCRA
//! (generic cell rate algorithm) whose one value per user and class, the theoretical
//! arrival time, lives in Redis and is updated by a script, on Redis's clock (so
//! instances need not agree on the time). The step is `feedstream_read::rate_step`'s:
//! a feed page takes it within its page script, every other request in a script of
//! its own, one round trip either way.
//!
//! A policy of `quota` requests per `window` lets a quiet user send the whole quota at
//! once, then one request every `window / quota`. When Redis does not answer, requests
//! pass (fail open) and `api_rate_limit_errors_total` counts them: a cache outage must
//! not become an API outage.

use std::time::Duration;

use feedstream_read::rate_step::{RateStep, StepAnswer, GCRA_LUA};
use redis::aio::ConnectionManager;
use redis::Script;

/// Both classes, in the order of [`RateLimits::policies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    Writes,
    Reads,
}

impl RouteClass {
    pub fn name(self) -> &'static str {
        match self {
            Self::Writes => "writes",
            Self::Reads => "reads",
        }
    }
}

/// `quota` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub quota: u32,
    pub window: Duration,
}

impl Policy {
    fn interval_micros(self) -> u64 {
        (self.window.as_micros() / u128::from(self.quota.max(1))).max(1) as u64
    }
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub class: RouteClass,
    pub policy: Policy,
    pub allowed: bool,
    /// Requests the user may still send at once.
    pub remaining: u32,
    /// Seconds until the whole quota is available again.
    pub reset_seconds: u64,
    /// Seconds until a refused request may be sent again (0 when allowed).
    pub retry_after_seconds: u64,
}

impl Decision {
    /// `RateLimit-Policy` of draft-ietf-httpapi-ratelimit-headers: quota per window.
    pub fn policy_header(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.class.name(),
            self.policy.quota,
            self.policy.window.as_secs().max(1)
        )
    }

    /// Both headers of the draft, as every limited answer carries them.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            ("ratelimit-policy", self.policy_header()),
            ("ratelimit", self.limit_header()),
        ]
    }

    /// `RateLimit` of the same draft: what remains, and when the quota is whole again.
    pub fn limit_header(&self) -> String {
        format!(
            "\"{}\";r={};t={}",
            self.class.name(),
            self.remaining,
            self.reset_seconds
        )
    }
}

/// One GCRA step ([`GCRA_LUA`]). KEYS[1]: the user's key for a class. ARGV[1]: the
/// emission interval, ARGV[2]: the window, both in microseconds.
const CHECK: &str = "return gcra(KEYS[1], ARGV[1], ARGV[2])";

/// The limits of each class; `None`: unlimited.
#[derive(Clone)]
pub struct RateLimits {
    redis: ConnectionManager,
    prefix: String,
    writes: Option<Policy>,
    reads: Option<Policy>,
    script: Script,
}

/// The Redis URL of the limiter is not a URL: a configuration error, never retriable.
#[derive(Debug, thiserror::Error)]
#[error("the rate limiter's Redis URL is not valid: {0}")]
pub struct InvalidRedisUrl(#[source] redis::RedisError);

impl InvalidRedisUrl {
    pub fn is_retriable(&self) -> bool {
        false
    }
}

impl RateLimits {
    /// Limits kept in the Redis at `url` under `prefix`; nothing connects before the
    /// first request.
    pub fn connect(
        url: &str,
        prefix: &str,
        writes: Option<Policy>,
        reads: Option<Policy>,
    ) -> Result<Self, InvalidRedisUrl> {
        let client = redis::Client::open(url).map_err(InvalidRedisUrl)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(0);
        let redis =
            ConnectionManager::new_lazy_with_config(client, config).map_err(InvalidRedisUrl)?;
        Ok(Self {
            redis,
            prefix: prefix.to_string(),
            writes,
            reads,
            script: Script::new(&format!("{GCRA_LUA}{CHECK}")),
        })
    }

    fn policy(&self, class: RouteClass) -> Option<Policy> {
        match class {
            RouteClass::Writes => self.writes,
            RouteClass::Reads => self.reads,
        }
    }

    /// The step that counts one request of `user` in `class`; `None` when the class is
    /// unlimited. The feed route has the page script take it ([`feedstream_read`]);
    /// [`Self::check`] takes it alone.
    pub fn step(&self, class: RouteClass, user: u64) -> Option<RateStep> {
        let policy = self.policy(class)?;
        Some(RateStep {
            key: format!("{}ratelimit:{}:{user}", self.prefix, class.name()),
            interval_micros: policy.interval_micros(),
            window_micros: policy.window.as_micros() as u64,
        })
    }

    /// What a step of `class` answered means for its request.
    pub fn decision(&self, class: RouteClass, answer: StepAnswer) -> Option<Decision> {
        let policy = self.policy(class)?;
        Some(decide(
            class,
            policy,
            answer.allowed,
            answer.wait_micros,
            answer.used_micros,
        ))
    }

    /// Counts one request of `user` in `class`: `Ok(None)` when the class is unlimited,
    /// `Err` when Redis did not answer (the caller lets the request pass).
    pub async fn check(
        &self,
        class: RouteClass,
        user: u64,
    ) -> Result<Option<Decision>, redis::RedisError> {
        let Some(step) = self.step(class, user) else {
            return Ok(None);
        };
        let mut redis = self.redis.clone();
        let answer: Vec<i64> = self
            .script
            .key(&step.key)
            .arg(step.interval_micros)
            .arg(step.window_micros)
            .invoke_async(&mut redis)
            .await?;
        let answer = StepAnswer::of(&answer).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "the GCRA step answered no triple",
            ))
        })?;
        Ok(self.decision(class, answer))
    }
}

/// The decision of a GCRA step's answer (microseconds, from [`GCRA`]).
fn decide(class: RouteClass, policy: Policy, allowed: bool, wait: i64, used: i64) -> Decision {
    let interval = policy.interval_micros() as i64;
    let window = policy.window.as_micros() as i64;
    let free = (window - used.max(0)).max(0);
    let seconds_up = |micros: i64| (micros.max(0) as u64).div_ceil(1_000_000);
    Decision {
        class,
        policy,
        allowed,
        remaining: u32::try_from(free / interval).unwrap_or(u32::MAX),
        reset_seconds: seconds_up(used),
        retry_after_seconds: if allowed { 0 } else { seconds_up(wait).max(1) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    /// The script's arithmetic, in Rust, on a clock of our own: the reference the
    /// property below checks `decide` against.
    struct Model {
        tat: i64,
    }

    impl Model {
        fn step(&mut self, policy: Policy, now: i64) -> (bool, i64, i64) {
            let interval = policy.interval_micros() as i64;
            let window = policy.window.as_micros() as i64;
            let tat = self.tat.max(now);
            let next = tat + interval;
            if next - window > now {
                return (false, next - window - now, tat - now);
            }
            self.tat = next;
            (true, 0, next - now)
        }
    }

    #[test]
    fn a_quiet_user_may_send_the_whole_quota_at_once_then_one_per_interval() {
        let policy = Policy {
            quota: 3,
            window: MINUTE,
        };
        let mut model = Model { tat: 0 };
        let now = 1_000_000_000;
        let decisions: Vec<Decision> = (0..4)
            .map(|_| {
                let (allowed, wait, used) = model.step(policy, now);
                decide(RouteClass::Writes, policy, allowed, wait, used)
            })
            .collect();
        let allowed: Vec<bool> = decisions.iter().map(|d| d.allowed).collect();
        assert_eq!(allowed, [true, true, true, false]);
        let remaining: Vec<u32> = decisions.iter().map(|d| d.remaining).collect();
        assert_eq!(remaining, [2, 1, 0, 0]);
        assert_eq!(decisions[3].retry_after_seconds, 20);
        assert_eq!(decisions[2].reset_seconds, 60);
        // One interval later, one more passes.
        let (allowed, _, _) = model.step(policy, now + 20_000_000);
        assert!(allowed);
    }

    #[test]
    fn headers_follow_the_draft() {
        let policy = Policy {
            quota: 100,
            window: MINUTE,
        };
        let decision = decide(RouteClass::Reads, policy, true, 0, 1_200_000);
        assert_eq!(decision.policy_header(), "\"reads\";q=100;w=60");
        assert_eq!(decision.limit_header(), "\"reads\";r=98;t=2");
    }

    #[test]
    fn over_any_schedule_admissions_stay_within_the_burst_plus_the_refill() {
        let policy = Policy {
            quota: 5,
            window: Duration::from_secs(10),
        };
        let interval = policy.interval_micros() as i64;
        let mut rng = fastrand::Rng::with_seed(3);
        let mut model = Model { tat: 0 };
        let mut now = 0i64;
        let mut admitted = Vec::new();
        for _ in 0..3_000 {
            now += rng.i64(0..3_000_000);
            if model.step(policy, now).0 {
                admitted.push(now);
            }
        }
        assert!(admitted.len() > 100, "{} admitted", admitted.len());
        // From any admission on, the quota at once plus one per interval since.
        for (i, first) in admitted.iter().enumerate() {
            for (count, last) in (1..).zip(&admitted[i..]) {
                let bound = i64::from(policy.quota) + (last - first) / interval;
                assert!(count <= bound, "{count} admitted from {first} to {last}");
            }
        }
    }
}
