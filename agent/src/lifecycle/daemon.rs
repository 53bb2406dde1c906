//! The daemon: its command line and environment, and how the agent asks whether it answers.
//!
//! The probe is the seam where node adapters plug in: with `--adapter none` "answers" means a
//! TCP connect to the p2p port succeeds (the daemon accepts peers), and neither peers nor sync
//! lag are known, so readiness reduces to reachability.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::daemon_env::DaemonFacts;

/// Bound on one probe, so a hung daemon cannot stall the lifecycle loop.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The daemon's command: program, substituted arguments, and the facts in its environment.
/// `None` when `daemon` is empty (clap requires it, so only a caller bug gets here).
pub fn command(daemon: &[OsString], facts: &DaemonFacts) -> Option<Command> {
    let (program, args) = daemon.split_first()?;
    let mut cmd = Command::new(program);
    cmd.args(args.iter().map(|a| facts.substitute(a)));
    cmd.envs(facts.env());
    Some(cmd)
}

/// What one probe learned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// Sync lag, if the adapter reports it.
    pub lag: Option<u64>,
    /// Peer count, if the adapter reports it.
    pub peers: Option<usize>,
}

/// How to ask the daemon whether it answers.
#[derive(Debug, Clone)]
pub enum DaemonProbe {
    /// Connect to this address (the p2p port on the private address).
    Tcp(SocketAddr),
    /// No p2p endpoint and no adapter: a running daemon counts as answering.
    Running,
}

impl DaemonProbe {
    /// One probe, bounded by [`PROBE_TIMEOUT`].
    pub async fn check(&self) -> Result<ProbeReport, String> {
        match self {
            Self::Tcp(addr) => {
                match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
                    .await
                {
                    Ok(Ok(_)) => Ok(ProbeReport::default()),
                    Ok(Err(e)) => Err(format!("connect to {addr}: {e}")),
                    Err(_) => Err(format!("connect to {addr}: timed out")),
                }
            }
            Self::Running => Ok(ProbeReport::default()),
        }
    }
}
