//! The master CLI: `show proc` and confirmed reloads.
//!
//! In HAProxy 2.6 the master's `reload` command answers nothing (a status reply came in 2.7),
//! so success is observed instead: the master's reload counter went up, its failed-reload
//! counter did not, and a worker that did not exist before is running.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::socket::{SocketError, exchange};

/// How long one master CLI exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `show proc` is polled while a reload is being confirmed.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// One worker in `show proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    /// Its pid.
    pub pid: u32,
    /// Reloads it has survived: 0 for the newest worker.
    pub reloads: u32,
}

/// The parsed answer of `show proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcList {
    /// The master's pid.
    pub master_pid: u32,
    /// Reloads since the master started.
    pub reloads: u32,
    /// Reloads that failed.
    pub failed: u32,
    /// Running workers, current and old.
    pub workers: Vec<Worker>,
}

impl ProcList {
    /// The newest worker, if any.
    pub fn current_worker(&self) -> Option<Worker> {
        self.workers.iter().copied().find(|w| w.reloads == 0)
    }
}

/// Talking to the master failed.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The socket exchange failed.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The answer to `show proc` was not understood.
    #[error("unexpected answer to `show proc`: {0:?}")]
    Parse(String),
    /// The master counted the reload as failed (the old workers keep serving).
    #[error("haproxy reported the reload as failed (failed reloads {before} -> {after})")]
    ReloadFailed {
        /// Failed reloads before.
        before: u32,
        /// Failed reloads after.
        after: u32,
    },
    /// No new worker appeared in time.
    #[error("reload not confirmed within {0:?}: no new worker in `show proc`")]
    Unconfirmed(Duration),
}

/// Parses `show proc` output.
pub fn parse_show_proc(text: &str) -> Result<ProcList, MasterError> {
    let bad = || MasterError::Parse(text.chars().take(300).collect());
    let mut master = None;
    let mut workers = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [pid, "master", reloads, "[failed:", failed, ..] => {
                let failed = failed.trim_end_matches(']');
                master = Some((
                    pid.parse().map_err(|_| bad())?,
                    reloads.parse().map_err(|_| bad())?,
                    failed.parse().map_err(|_| bad())?,
                ));
            }
            [pid, "worker", reloads, ..] => workers.push(Worker {
                pid: pid.parse().map_err(|_| bad())?,
                reloads: reloads.parse().map_err(|_| bad())?,
            }),
            _ => {}
        }
    }
    let (master_pid, reloads, failed) = master.ok_or_else(bad)?;
    Ok(ProcList {
        master_pid,
        reloads,
        failed,
        workers,
    })
}

/// A client of the master CLI socket (`-S`).
#[derive(Debug, Clone)]
pub struct MasterCli {
    path: PathBuf,
}

impl MasterCli {
    /// A client for the socket at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// `show proc`.
    pub async fn show_proc(&self) -> Result<ProcList, MasterError> {
        let text = exchange(&self.path, "show proc\n", EXCHANGE_TIMEOUT).await?;
        parse_show_proc(&text)
    }

    /// Waits until the master answers `show proc` (after start), up to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<ProcList, MasterError> {
        let end = Instant::now() + timeout;
        loop {
            match self.show_proc().await {
                Ok(p) if p.current_worker().is_some() => return Ok(p),
                Ok(_) | Err(_) if Instant::now() < end => tokio::time::sleep(POLL_INTERVAL).await,
                Ok(_) => return Err(MasterError::Unconfirmed(timeout)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reloads and waits up to `timeout` for a new worker; returns the new process list.
    pub async fn reload(&self, timeout: Duration) -> Result<ProcList, MasterError> {
        let before = self.show_proc().await?;
        // The master re-executes itself and drops the connection: the answer is empty or cut.
        let _ = exchange(&self.path, "reload\n", EXCHANGE_TIMEOUT).await;
        let end = Instant::now() + timeout;
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            // While the master re-executes, its socket may refuse connections.
            if let Ok(now) = self.show_proc().await {
                if now.failed > before.failed {
                    return Err(MasterError::ReloadFailed {
                        before: before.failed,
                        after: now.failed,
                    });
                }
                let new_worker = now
                    .current_worker()
                    .is_some_and(|w| !before.workers.iter().any(|b| b.pid == w.pid));
                if now.reloads > before.reloads && new_worker {
                    return Ok(now);
                }
            }
            if Instant::now() >= end {
                return Err(MasterError::Unconfirmed(timeout));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_2_6_show_proc() {
        let text = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
26588           master          1 [failed: 0]   0d00h00m12s     2.6.12-1+deb12u4\n\
# workers\n\
27983           worker          0               0d00h00m01s     2.6.12-1+deb12u4\n\
26626           worker          1               0d00h00m12s     2.6.12-1+deb12u4\n\
# programs\n\n";
        let p = parse_show_proc(text).expect("parses");
        assert_eq!((p.master_pid, p.reloads, p.failed), (26588, 1, 0));
        assert_eq!(p.workers.len(), 2);
        assert_eq!(p.current_worker().map(|w| w.pid), Some(27983));
        assert!(parse_show_proc("Unknown command\n").is_err());
    }
}
