//! Retrying a step of a stage while its failures are transient: the one retry loop of
//! the runtimes. The delays come from the pure [`RetryPolicy`]; the wait ends early at
//! shutdown.

use std::future::Future;
use std::time::Duration;

use feedstream_core::retry::RetryPolicy;
use tokio::sync::watch;

/// A failure that says whether trying again later can succeed.
pub trait Retriable: std::fmt::Display {
    fn is_retriable(&self) -> bool;
}

/// A failed attempt about to be retried: what failed, which attempt it was (1-based)
/// and how long the wait before the next one is.
pub struct Retry<'e, E> {
    pub error: &'e E,
    pub attempt: u32,
    pub delay: Duration,
}

/// Runs `step` until it succeeds, fails for good, or shutdown is asked for; after each
/// transient failure `on_retry` hears of it (for logs and metrics) and the policy's
/// backoff is waited. At shutdown the last failure is returned, so the caller leaves
/// its work uncommitted.
pub async fn retry_transient<T, E, F, Fut>(
    policy: &RetryPolicy,
    shutdown: &watch::Receiver<bool>,
    mut on_retry: impl FnMut(Retry<'_, E>),
    mut step: F,
) -> Result<T, E>
where
    E: Retriable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt: u32 = 0;
    let mut shutdown = shutdown.clone();
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_retriable() && !*shutdown.borrow() => {
                attempt = attempt.saturating_add(1);
                let delay = policy.delay(attempt);
                on_retry(Retry {
                    error: &error,
                    attempt,
                    delay,
                });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Err(error),
                }
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[derive(Debug)]
    struct Failure {
        transient: bool,
    }

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "transient: {}", self.transient)
        }
    }

    impl Retriable for Failure {
        fn is_retriable(&self) -> bool {
            self.transient
        }
    }

    fn quick() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            ..RetryPolicy::default()
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_the_step_succeeds() {
        let (_stop, shutdown) = watch::channel(false);
        let calls = Cell::new(0);
        let mut heard = Vec::new();
        let result: Result<u32, Failure> = retry_transient(
            &quick(),
            &shutdown,
            |retry| heard.push(retry.attempt),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n < 4 {
                        Err(Failure { transient: true })
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(result.ok(), Some(4));
        assert_eq!(heard, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_permanent_failure_ends_at_once() {
        let (_stop, shutdown) = watch::channel(false);
        let calls = Cell::new(0);
        let result: Result<(), Failure> = retry_transient(
            &quick(),
            &shutdown,
            |_| panic!("a permanent failure is not retried"),
            || {
                calls.set(calls.get() + 1);
                async { Err(Failure { transient: false }) }
            },
        )
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait_with_the_last_failure() {
        let (stop, shutdown) = watch::channel(false);
        let policy = RetryPolicy {
            initial: Duration::from_secs(3600),
            max: Duration::from_secs(3600),
            ..RetryPolicy::default()
        };
        let result: Result<(), Failure> = retry_transient(
            &policy,
            &shutdown,
            |_| {
                stop.send_replace(true);
            },
            || async { Err(Failure { transient: true }) },
        )
        .await;
        assert!(result.is_err_and(|error| error.transient));
    }
}
