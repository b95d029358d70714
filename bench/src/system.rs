//! The system under test: `feedstream api`, `process` and `sink` as child processes of
//! the bench, and what /proc says of every process's CPU time and
//! memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// How to run `feedstream`: the binary and the environment every command shares.
pub struct Feedstream {
    pub binary: PathBuf,
    pub env: Vec<(&'static str, String)>,
    /// Where child processes write their logs.
    pub logs: PathBuf,
}

impl Feedstream {
    /// `feedstream ARGS` with the shared environment, then `env` over it.
    fn command(&self, args: &[&str], log: &str, env: &[(&str, String)]) -> anyhow::Result<Command> {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .envs(self.env.iter().map(|(key, value)| (*key, value)))
            .envs(env.iter().map(|(key, value)| (*key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.logs.join(log))?)
            .kill_on_drop(true);
        Ok(command)
    }

    /// Runs a one-off command (topics create, migrate) to success.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        self.run_with(args, &format!("{}.log", args.join("-")), &[])
            .await
    }

    /// Runs a one-off command with `env` over the shared environment to success.
    pub async fn run_with(
        &self,
        args: &[&str],
        log: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        let status = self.command(args, log, env)?.status().await?;
        if !status.success() {
            bail!(
                "`feedstream {}` failed; see {}",
                args.join(" "),
                self.logs.join(log).display()
            );
        }
        Ok(())
    }

    /// Starts a long-running command.
    pub fn spawn(&self, args: &[&str], log: &str) -> anyhow::Result<Child> {
        self.spawn_with(args, log, &[])
    }

    /// Starts a long-running command with `env` over the shared environment.
    pub fn spawn_with(
        &self,
        args: &[&str],
        log: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Child> {
        Ok(self.command(args, log, env)?.spawn()?)
    }

    /// Starts `feedstream api` on a free port, with `env` over the shared environment;
    /// returns it with its base URL.
    pub async fn spawn_api(
        &self,
        log: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<(Child, String)> {
        feedstream_harness::serve(self.command(&["api", "--listen", "127.0.0.1:0"], log, env)?)
            .await
            .with_context(|| format!("the api did not start; see {log}"))
    }
}

/// Asks a child to stop (SIGTERM) and waits for it.
pub async fn terminate(child: &mut Child, within: Duration) -> anyhow::Result<()> {
    feedstream_harness::terminate(child)?;
    tokio::time::timeout(within, child.wait())
        .await
        .context("the child did not stop in time")??;
    Ok(())
}

/// A process (or group of processes) whose CPU time the report accounts for.
#[derive(Debug, Clone)]
pub enum Component {
    Pid(u32),
    /// Every process with this command name (PostgreSQL's backends, say).
    Named(&'static str),
}

/// CPU seconds each process of each component had used at one moment. Kept per pid:
/// a component whose process was replaced (a restarted processor) or whose processes
/// come and go (PostgreSQL's backends) counts a new process from zero, where a
/// component-wide sum would fall and hide the new process's time.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot(BTreeMap<String, BTreeMap<u32, f64>>);

pub fn cpu_snapshot(components: &[(String, Component)]) -> CpuSnapshot {
    CpuSnapshot(
        components
            .iter()
            .map(|(name, component)| {
                let pids = match component {
                    Component::Pid(pid) => vec![*pid],
                    Component::Named(comm) => pids_named(comm),
                };
                let used = pids
                    .into_iter()
                    .filter_map(|pid| Some((pid, cpu_seconds(pid)?)))
                    .collect();
                (name.clone(), used)
            })
            .collect(),
    )
}

impl CpuSnapshot {
    /// Adds what a process that has since stopped had used.
    pub fn record(&mut self, name: String, pid: u32, seconds: f64) {
        self.0.entry(name).or_default().insert(pid, seconds);
    }

    /// CPU seconds of each component between `earlier` and this snapshot. What a process
    /// used between `earlier` and its exit is not seen.
    pub fn since(&self, earlier: &CpuSnapshot) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .map(|(name, now)| {
                let before = earlier.0.get(name);
                let used = now
                    .iter()
                    .map(|(pid, seconds)| {
                        let was = before.and_then(|b| b.get(pid)).copied().unwrap_or(0.0);
                        (seconds - was).max(0.0)
                    })
                    // Not sum(): the sum of no f64 is -0.0, which the report would print.
                    .fold(0.0, |sum, seconds| sum + seconds);
                (name.clone(), used)
            })
            .collect()
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU time (user and system) a process has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    Some(cpu_ticks(pid)? as f64 / clock_ticks_per_second())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The peak resident set size of a process (VmHWM), in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim() == comm)
        })
        .collect()
}

/// The machine, for the report.
pub fn machine() -> BTreeMap<&'static str, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    BTreeMap::from([
        ("cpu", model),
        ("cores", cores.to_string()),
        ("memory", memory),
        ("kernel", kernel.trim().to_string()),
    ])
}

pub fn remove_dir(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_a_peak_rss() {
        let pid = std::process::id();
        let busy = (0..2_000_000u64).fold(0u64, |acc, n| acc.wrapping_mul(31).wrapping_add(n));
        assert_ne!(busy, 1);
        assert!(cpu_ticks(pid).is_some());
        assert!(peak_rss_bytes(pid).is_some_and(|bytes| bytes > 0));
        assert!(cpu_ticks(u32::MAX).is_none());
    }
}
