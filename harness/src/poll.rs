//! Waiting for a condition with a deadline: the only way tests and the benchmark wait
//! (never a bare sleep).

use std::future::Future;
use std::time::Duration;

use anyhow::bail;

/// Polls `check` every 200 ms until it returns true or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
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
    Fut: Future<Output = anyhow::Result<bool>>,
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
