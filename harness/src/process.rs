//! Child processes of `feedstream`.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `command` (a `feedstream api` or `run`) and returns it once it prints
/// [`feedstream_api::LISTENING_ON`], with the base URL it printed. Its stdout is drained
/// afterwards so the child never blocks on a full pipe.
pub async fn serve(mut command: Command) -> anyhow::Result<(Child, String)> {
    let mut child = command.stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().context("the api's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.strip_prefix(feedstream_api::LISTENING_ON) {
                return Ok(url.trim().to_string());
            }
        }
        bail!("the api exited before listening")
    })
    .await
    .context("the api did not listen within 60 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url))
}

/// Asks a process to stop gracefully (SIGTERM), without waiting for it.
pub fn terminate(child: &Child) -> anyhow::Result<()> {
    let pid = child.id().context("the process already exited")?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
    Ok(())
}

/// Kills a process (SIGKILL) and reaps it.
pub async fn kill(child: &mut Child) -> anyhow::Result<()> {
    child.start_kill()?;
    child.wait().await?;
    Ok(())
}

/// A port nothing listens on now, on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
