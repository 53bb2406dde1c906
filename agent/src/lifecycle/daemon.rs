//! The daemon: its command line and environment, and how the agent asks whether it answers.
//!
//! With a node adapter, "answers" means its probe succeeds, and the same round reads the peers
//! and the sync state. With `--adapter none` it means a TCP connect to the p2p port succeeds
//! (the daemon accepts peers), and neither peers nor sync are known, so readiness reduces to
//! reachability.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::adapter::{AdapterError, NodeAdapter, Peer};
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeReport {
    /// The daemon's synced claim, if the adapter reports it.
    pub synced: Option<bool>,
    /// Age of the best block, if the adapter reports it.
    pub lag: Option<Duration>,
    /// The daemon's peers, if the adapter reports them.
    pub peers: Option<Vec<Peer>>,
}

/// How to ask the daemon whether it answers.
#[derive(Debug, Clone)]
pub enum DaemonProbe {
    /// Through its API: probe, then peers and sync state.
    Adapter(Arc<dyn NodeAdapter>),
    /// Connect to this address (the p2p port on the private address).
    Tcp(SocketAddr),
    /// No p2p endpoint and no adapter: a running daemon counts as answering.
    Running,
}

impl DaemonProbe {
    /// One probe, bounded by `PROBE_TIMEOUT` (three times that through an adapter).
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
            Self::Adapter(adapter) => {
                let bounded = async {
                    adapter.probe().await.map_err(|e| e.to_string())?;
                    let peers = optional(adapter.peers().await)?;
                    let sync = optional(adapter.sync_status().await)?;
                    Ok(ProbeReport {
                        synced: sync.map(|s| s.synced),
                        lag: sync.and_then(|s| s.lag),
                        peers,
                    })
                };
                // Adapters bound each call themselves; this bounds the three together.
                tokio::time::timeout(PROBE_TIMEOUT * 3, bounded)
                    .await
                    .unwrap_or_else(|_| Err("node API did not answer in time".to_owned()))
            }
        }
    }
}

/// A call the adapter cannot make is "unknown"; any other failure fails the probe, since a
/// half-answering API is not a daemon to send traffic to.
fn optional<T>(r: Result<T, AdapterError>) -> Result<Option<T>, String> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(AdapterError::Unsupported { .. }) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}
