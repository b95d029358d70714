//! How long to wait before retrying a failed step, and when to give up on a record.
//!
//! Transient failures (a dependency down or slow) are retried without end: giving up
//! would skip input. Only a failure a record keeps causing by itself is bounded, by
//! `max_attempts`, after which the record is dead-lettered.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Factor between successive ceilings.
    pub multiplier: f64,
    /// Largest ceiling.
    pub max: Duration,
    /// Attempts a record gets before a failure of its own sends it to the dead-letter topic.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(10),
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    /// The most to wait after failed attempt number `attempt` (1-based):
    /// `initial × multiplier^(attempt-1)`, capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let seconds = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        Duration::from_secs_f64(seconds.min(self.max.as_secs_f64()))
    }

    /// The wait after failed attempt `attempt`, drawn uniformly below the ceiling ("full
    /// jitter"), so that many clients failing together do not retry together.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(fastrand::f64())
    }

    /// Whether a record that failed `attempts` times by itself is to be dead-lettered.
    pub fn exhausted(&self, attempts: u32) -> bool {
        attempts >= self.max_attempts.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_from_the_initial_delay_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let ceilings: Vec<u128> = (1..=10)
            .map(|attempt| policy.ceiling(attempt).as_millis())
            .collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn delays_stay_below_their_ceiling() {
        let policy = RetryPolicy::default();
        for attempt in 1..=12 {
            for _ in 0..100 {
                assert!(policy.delay(attempt) <= policy.ceiling(attempt));
            }
        }
    }

    #[test]
    fn a_record_gets_max_attempts_and_at_least_one() {
        let policy = RetryPolicy::default();
        assert!(!policy.exhausted(4));
        assert!(policy.exhausted(5));
        let none = RetryPolicy {
            max_attempts: 0,
            ..policy
        };
        assert!(none.exhausted(1));
    }
}
