//! One benchmark run: start a fleet under one policy, time convergence, optionally measure the
//! idle cost, kill -9 a share of the nodes, time recovery, and tear everything down.
//!
//! Every node is a real `peerkeep-agent` supervising a real `devnode` ([`FleetNode`]); the
//! policies differ only in who keeps the peers:
//!
//! - [`Policy::Peerkeep`]: the agents' own keeper, with production defaults (K, max 2K, 1 s poll).
//! - [`Policy::Wavelet`]: the agents run with `--min-peers 0 --max-peers 1000`, so their keeper
//!   never connects and never trims (it still disconnects `draining` peers, which never occur
//!   here); [`wavelet::Driver`] runs the wavelet-stack script's loop for every node instead.
//!   `--min-peers 0` alone would not do: the maximum defaults to 2K = 0, and the keeper would
//!   trim every peer the script connects.
//!
//! All timing loops are bounded by the run's timeout and poll every [`SWEEP_INTERVAL`].

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use peerkeep_registry::{ClusterName, DEFAULT_PREFIX, Etcd, Keyspace, NodeId};
use peerkeep_tests::fleet::{FleetConfig, FleetNode};
use rand::seq::SliceRandom;

use crate::observe::{self, Bounds, Target};
use crate::wavelet::{Driver, ScriptNode, WaveletParams};

/// Pause between two sweeps of the fleet (the resolution of the timings, plus a sweep's time).
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Longest wait for the keepers to finish their connects before the idle window starts.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// Who keeps the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Policy {
    /// peerkeep-agent's keeper.
    Peerkeep,
    /// The wavelet-stack script, re-implemented in [`crate::wavelet`].
    Wavelet,
}

impl Policy {
    /// The name used in flags and tables.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Peerkeep => "peerkeep",
            Policy::Wavelet => "wavelet-stack",
        }
    }
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The policy under test.
    pub policy: Policy,
    /// Number of nodes.
    pub nodes: usize,
    /// K.
    pub k: usize,
    /// Share of the nodes killed for the recovery measurement.
    pub kill_fraction: f64,
    /// Longest wait for convergence, and again for recovery.
    pub timeout: Duration,
    /// When set, after convergence: settle this long, then measure idle cost over `idle_window`.
    pub idle: Option<IdleConfig>,
    /// The script's timing (used by [`Policy::Wavelet`] only).
    pub wavelet: WaveletParams,
    /// etcd client URL.
    pub etcd_url: String,
    /// The cluster this run registers in (one per run, so runs never see each other).
    pub cluster: String,
    /// The agents' `--lease-ttl`.
    pub lease_ttl: String,
    /// Print how the fleet stands once a second while waiting.
    pub verbose: bool,
}

/// The idle measurement.
#[derive(Debug, Clone, Copy)]
pub struct IdleConfig {
    /// Wait after convergence before the window starts.
    pub settle: Duration,
    /// Length of the window.
    pub window: Duration,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Start of all agents → every node within bounds; `None`: not within the timeout.
    pub convergence: Option<Duration>,
    /// Least and greatest peer count at convergence.
    pub degrees: Option<(usize, usize)>,
    /// First kill -9 → every survivor at ≥ K live peers; `None`: not within the timeout (or
    /// not measured because the fleet never converged).
    pub recovery: Option<Duration>,
    /// The idle cost, when measured.
    pub idle: Option<IdleResult>,
    /// Why a measurement timed out: the nodes still outside the bounds.
    pub problem: Option<String>,
}

/// Idle cost of a converged fleet.
#[derive(Debug, Clone, Copy)]
pub struct IdleResult {
    /// Connect calls per node per hour, extrapolated from the window.
    pub connects_per_node_hour: f64,
    /// Mean agent CPU per node, in percent of one core.
    pub agent_cpu_percent: f64,
}

/// A started fleet and, for the wavelet policy, the script beside it.
struct Fleet {
    // Field order is drop order: the script stops before the nodes are killed.
    driver: Option<Driver>,
    nodes: Vec<FleetNode>,
}

impl Fleet {
    fn targets(&self) -> Vec<Target> {
        self.nodes
            .iter()
            .map(|n| Target {
                id: n.id.clone(),
                api: n.api,
            })
            .collect()
    }

    fn connects_total(&self, values: &[Option<f64>]) -> f64 {
        match &self.driver {
            Some(d) => d
                .counts()
                .connects
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
            None => values.iter().map(|v| v.unwrap_or(0.0)).sum(),
        }
    }
}

/// Runs one measurement. `http` is the observer's client, `etcd` the script's registry client.
pub async fn run(
    cfg: &RunConfig,
    http: &reqwest::Client,
    etcd: &Etcd,
) -> anyhow::Result<RunResult> {
    let fleet_cfg = FleetConfig {
        etcd: cfg.etcd_url.clone(),
        min_peers: match cfg.policy {
            Policy::Peerkeep => cfg.k,
            Policy::Wavelet => 0,
        },
        lease_ttl: cfg.lease_ttl.clone(),
        agent_args: match cfg.policy {
            Policy::Peerkeep => vec!["--cluster".into(), cfg.cluster.clone()],
            Policy::Wavelet => vec![
                "--cluster".into(),
                cfg.cluster.clone(),
                "--max-peers".into(),
                "1000".into(),
            ],
        },
    };
    let mut driver = match cfg.policy {
        Policy::Peerkeep => None,
        Policy::Wavelet => {
            let cluster: ClusterName = cfg
                .cluster
                .parse()
                .with_context(|| format!("cluster name {:?}", cfg.cluster))?;
            let keyspace = Keyspace::new(DEFAULT_PREFIX, cluster)?;
            Some(Driver::new(
                etcd.clone(),
                keyspace,
                http.clone(),
                cfg.wavelet,
            ))
        }
    };

    let started = Instant::now();
    let mut nodes = Vec::with_capacity(cfg.nodes);
    for i in 0..cfg.nodes {
        let id = format!("n{i}");
        let node = tokio::task::block_in_place(|| FleetNode::start(&fleet_cfg, &id, false));
        if let Some(d) = driver.as_mut() {
            d.start(ScriptNode {
                id: id
                    .parse::<NodeId>()
                    .with_context(|| format!("node id {id:?}"))?,
                api: node.api,
                token: node.api_token().context("the node's API token file")?,
            });
        }
        nodes.push(node);
    }
    let mut fleet = Fleet { driver, nodes };

    let max_total = match cfg.policy {
        Policy::Peerkeep => Some(2 * cfg.k),
        // The script has no maximum; the daemon's own cap (devnode: 32) is the only one.
        Policy::Wavelet => None,
    };
    let bounds = Bounds {
        min_live: cfg.k,
        max_total,
    };
    let targets = fleet.targets();
    let live: BTreeSet<String> = targets.iter().map(|t| t.id.clone()).collect();
    let (took, degrees) = match wait_within(
        http,
        &mut fleet.nodes,
        &targets,
        &live,
        bounds,
        started,
        cfg.timeout,
        cfg.verbose,
    )
    .await
    {
        Ok(r) => r,
        Err(WaitError::Exited(e)) => return Err(e.into()),
        Err(WaitError::Timeout(outside)) => {
            return Ok(RunResult {
                convergence: None,
                degrees: None,
                recovery: None,
                idle: None,
                problem: Some(format!("not converged: {outside}")),
            });
        }
    };

    let idle = match cfg.idle {
        Some(idle) => Some(measure_idle(&fleet, http, cfg.policy, idle).await?),
        None => None,
    };

    let recovery = kill_and_recover(&mut fleet, http, cfg).await?;
    Ok(RunResult {
        convergence: Some(took),
        degrees: Some(degrees),
        recovery: recovery.as_ref().ok().copied(),
        idle,
        problem: recovery
            .err()
            .map(|outside| format!("not recovered: {outside}")),
    })
}

/// A node's agent exited on its own during a run (a port taken by another process between
/// choosing and binding it, on a machine shared with other tests): the run measures nothing
/// and is repeated.
#[derive(Debug, thiserror::Error)]
#[error("node {id}'s agent exited on its own; its log ends with:\n{log_tail}")]
pub struct NodeExited {
    /// The node.
    pub id: String,
    /// The last lines of its agent's (and devnode's) log.
    pub log_tail: String,
}

/// Why [`wait_within`] gave up.
enum WaitError {
    /// The timeout passed; the nodes still outside the bounds.
    Timeout(String),
    /// A node's agent exited.
    Exited(NodeExited),
}

/// The first node whose agent has exited, if any.
fn exited(nodes: &mut [FleetNode]) -> Option<NodeExited> {
    let node = nodes.iter_mut().find_map(|n| (!n.running()).then_some(n))?;
    let log = node.log();
    let lines: Vec<&str> = log.lines().collect();
    Some(NodeExited {
        id: node.id.clone(),
        log_tail: lines[lines.len().saturating_sub(8)..].join("\n"),
    })
}

/// A wait longer than this shows, with `--verbose`, what the last nodes to get there logged.
const SLOW: Duration = Duration::from_secs(5);

/// Prints the peer-keeping log lines of (at most two) nodes that `sweep` finds outside `bounds`.
fn show_stragglers(
    nodes: &[FleetNode],
    sweep: &[Option<Vec<String>>],
    live: &BTreeSet<String>,
    bounds: Bounds,
) {
    let outside = nodes.iter().zip(sweep).filter(|(_, peers)| {
        peers.as_ref().is_none_or(|ps| {
            ps.iter().filter(|p| live.contains(*p)).count() < bounds.min_live
                || bounds.max_total.is_some_and(|m| ps.len() > m)
        })
    });
    for (node, _) in outside.take(2) {
        let log = node.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("connect")).collect();
        eprintln!(
            "    last to get there: {}; its keeper's last connect/disconnect lines:\n      {}",
            node.id,
            lines[lines.len().saturating_sub(6)..].join("\n      ")
        );
    }
}

/// Sweeps until every target is within `bounds`; returns the time since `since` and the degree
/// range, or after `timeout` the nodes that were still outside. Stops early when a node that
/// does not answer has exited.
#[allow(clippy::too_many_arguments)]
async fn wait_within(
    http: &reqwest::Client,
    nodes: &mut [FleetNode],
    targets: &[Target],
    live: &BTreeSet<String>,
    bounds: Bounds,
    since: Instant,
    timeout: Duration,
    verbose: bool,
) -> Result<(Duration, (usize, usize)), WaitError> {
    let mut last: Vec<Option<Vec<String>>> = Vec::new();
    let mut shown = Duration::ZERO;
    while since.elapsed() < timeout {
        let sweep = observe::sweep(http, targets).await;
        if let Some(range) = observe::within(&sweep, live, bounds) {
            if verbose && since.elapsed() > SLOW {
                show_stragglers(nodes, &last, live, bounds);
            }
            return Ok((since.elapsed(), range));
        }
        last = sweep;
        if last.iter().any(Option::is_none)
            && let Some(e) = exited(nodes)
        {
            return Err(WaitError::Exited(e));
        }
        if verbose && since.elapsed() >= shown + Duration::from_secs(1) {
            shown = since.elapsed();
            let (answering, below, above) = observe::tally(&last, live, bounds);
            let outside = if below + above <= 5 {
                format!(" ({})", observe::outliers(targets, &last, live, bounds))
            } else {
                String::new()
            };
            eprintln!(
                "    {:>6.2} s: {answering}/{} answer, {below} below the minimum, {above} above the maximum{outside}",
                shown.as_secs_f64(),
                targets.len()
            );
        }
        tokio::time::sleep(SWEEP_INTERVAL).await;
    }
    Err(WaitError::Timeout(observe::outliers(
        targets, &last, live, bounds,
    )))
}

async fn measure_idle(
    fleet: &Fleet,
    http: &reqwest::Client,
    policy: Policy,
    idle: IdleConfig,
) -> anyhow::Result<IdleResult> {
    if policy == Policy::Peerkeep {
        // Steady state starts when no keeper has a connect in flight.
        let end = Instant::now() + SETTLE_LIMIT;
        while Instant::now() < end {
            let counts = futures::future::join_all(
                fleet
                    .nodes
                    .iter()
                    .map(|n| observe::in_flight(http, n.health)),
            )
            .await;
            if counts.iter().all(|c| *c == Some(0)) {
                break;
            }
            tokio::time::sleep(SWEEP_INTERVAL).await;
        }
    }
    tokio::time::sleep(idle.settle).await;

    let pids: Vec<u32> = fleet
        .nodes
        .iter()
        .filter_map(FleetNode::agent_pid)
        .collect();
    if pids.len() != fleet.nodes.len() {
        bail!("an agent exited before the idle window");
    }
    let ticks = |pids: &[u32]| -> Option<u64> { pids.iter().map(|p| observe::cpu_ticks(*p)).sum() };
    let connects = || {
        futures::future::join_all(
            fleet
                .nodes
                .iter()
                .map(|n| observe::metric(http, n.health, "peerkeep_agent_peer_connects_total")),
        )
    };
    let (c0, t0, at0) = (connects().await, ticks(&pids), Instant::now());
    tokio::time::sleep(idle.window).await;
    let (c1, t1, window) = (connects().await, ticks(&pids), at0.elapsed());
    let (Some(t0), Some(t1)) = (t0, t1) else {
        bail!("an agent exited during the idle window");
    };

    let n = fleet.nodes.len() as f64;
    let secs = window.as_secs_f64();
    let cpu_secs = t1.saturating_sub(t0) as f64 / observe::clock_ticks_per_sec() as f64;
    let calls = (fleet.connects_total(&c1) - fleet.connects_total(&c0)).max(0.0);
    Ok(IdleResult {
        connects_per_node_hour: calls / n / secs * 3600.0,
        agent_cpu_percent: cpu_secs / n / secs * 100.0,
    })
}

/// Kills `kill_fraction` of the nodes (at random; at least one, at least one survivor) and waits
/// until every survivor has ≥ K live peers. The clock starts before the first kill. On timeout,
/// the survivors still short of peers.
async fn kill_and_recover(
    fleet: &mut Fleet,
    http: &reqwest::Client,
    cfg: &RunConfig,
) -> Result<Result<Duration, String>, NodeExited> {
    let n = fleet.nodes.len();
    let victims = ((n as f64 * cfg.kill_fraction).round() as usize).clamp(1, n.saturating_sub(1));
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rng());
    let doomed: BTreeSet<usize> = order.into_iter().take(victims).collect();

    let started = Instant::now();
    let mut dead = Vec::with_capacity(victims);
    for (i, node) in std::mem::take(&mut fleet.nodes).into_iter().enumerate() {
        if doomed.contains(&i) {
            dead.push(node);
        } else {
            fleet.nodes.push(node);
        }
    }
    for node in &mut dead {
        if let (Some(d), Ok(id)) = (fleet.driver.as_mut(), node.id.parse::<NodeId>()) {
            d.stop(&id);
        }
        tokio::task::block_in_place(|| node.kill9());
    }
    let targets = fleet.targets();
    let live: BTreeSet<String> = targets.iter().map(|t| t.id.clone()).collect();
    let bounds = Bounds {
        min_live: cfg.k.min(live.len().saturating_sub(1)),
        max_total: None,
    };
    let result = wait_within(
        http,
        &mut fleet.nodes,
        &targets,
        &live,
        bounds,
        started,
        cfg.timeout,
        cfg.verbose,
    )
    .await;
    drop(dead);
    match result {
        Ok((took, _)) => Ok(Ok(took)),
        Err(WaitError::Timeout(outside)) => Ok(Err(outside)),
        Err(WaitError::Exited(e)) => Err(e),
    }
}
