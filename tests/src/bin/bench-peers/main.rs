//! `bench-peers`: peer-keeping benchmark of issue 6, run by `scripts/bench peers`.
//!
//! Starts N devnodes, each under a real `peerkeep-agent`, against one real etcd on loopback, and
//! measures for two policies in the same run — peerkeep's keeper and a re-implementation of the
//! wavelet-stack script ([`wavelet`]) — how long the fleet takes to converge (every node at ≥ K
//! peers; for peerkeep also ≤ its maximum), how long survivors take to recover after kill -9 of
//! a share of the nodes, and what a converged fleet costs while nothing changes (connect calls
//! per node per hour, agent CPU). The result is a Markdown table on stdout, also written into
//! `docs/benchmarks-peers.md`.
//!
//! Runs of both policies are interleaved (size by size, run by run) so that both see the same
//! machine load. Everything started is killed on the way out, also on Ctrl-C or SIGTERM: the
//! signal drops the running benchmark, and every fixture kills its processes when dropped.
//!
//! Exit codes: 0 done; 1 error (including a run that did not converge); 2 usage; 130
//! interrupted.

mod observe;
mod report;
mod scenario;
mod wavelet;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use peerkeep_registry::EtcdOptions;
use peerkeep_tests::Etcd;
use peerkeep_tests::proc::workspace_bin;

use report::{Cell, RunContext};
use scenario::{IdleConfig, Policy, RunConfig};
use wavelet::WaveletParams;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "bench-peers",
    about = "Peer-keeping benchmark: peerkeep's keeper vs the wavelet-stack script"
)]
struct Args {
    /// Fleet sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
    sizes: Vec<usize>,
    /// Runs per policy and size (p50 and max are taken over them).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Policies to measure.
    #[arg(long, value_delimiter = ',', default_value = "peerkeep,wavelet-stack")]
    policies: Vec<PolicyArg>,
    /// K, the target peer count.
    #[arg(long, default_value_t = 3)]
    k: usize,
    /// Share of the nodes killed with SIGKILL for the recovery measurement.
    #[arg(long, default_value_t = 0.3)]
    kill_fraction: f64,
    /// Longest wait for convergence, and again for recovery, in one run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "90s")]
    timeout: Duration,
    /// Idle window for the connect rate and agent CPU (first run of each policy and size).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    idle_window: Duration,
    /// Wait after convergence before the idle window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    settle: Duration,
    /// Skip the idle measurement.
    #[arg(long)]
    no_idle: bool,
    /// The agents' lease TTL.
    #[arg(long, default_value = "10s")]
    lease_ttl: String,
    /// The script's sleep between rounds (the original: 10 s + 0–9 s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    wavelet_period: Duration,
    /// The random part of the script's sleep, uniform in 0..=JITTER.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    wavelet_jitter: Duration,
    /// The document whose generated block receives the results.
    #[arg(long, default_value = "docs/benchmarks-peers.md")]
    doc: PathBuf,
    /// Print the results only; leave the document alone.
    #[arg(long)]
    no_doc: bool,
    /// While waiting, print once a second how many nodes are below or above their bounds.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PolicyArg {
    /// peerkeep-agent's keeper.
    Peerkeep,
    /// The wavelet-stack script.
    #[value(name = "wavelet-stack", alias = "wavelet")]
    Wavelet,
}

impl From<PolicyArg> for Policy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Peerkeep => Policy::Peerkeep,
            PolicyArg::Wavelet => Policy::Wavelet,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-peers: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        tokio::select! {
            r = bench(args) => match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench-peers: {e:#}");
                    ExitCode::FAILURE
                }
            },
            sig = interrupted() => {
                // Leaving select! has dropped the benchmark: every node and etcd are killed.
                eprintln!("bench-peers: {sig}: stopped, everything started was killed");
                ExitCode::from(130)
            }
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM, with the signal's name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

async fn bench(args: Args) -> anyhow::Result<()> {
    check_prerequisites()?;
    if args.sizes.iter().any(|&n| n < 2) || args.runs == 0 || args.k == 0 {
        bail!("--sizes must be at least 2 each, --runs and --k at least 1");
    }
    if !(0.0..1.0).contains(&args.kill_fraction) {
        bail!("--kill-fraction must be in [0, 1)");
    }
    let ctx = context(&args);
    let etcd = tokio::task::block_in_place(Etcd::start);
    let registry = peerkeep_registry::connect(&EtcdOptions::new([etcd.endpoint()])).await?;
    let http = observe::client().context("building the HTTP client")?;

    let policies: Vec<Policy> = args.policies.iter().map(|p| Policy::from(*p)).collect();
    let mut cells: Vec<Cell> = Vec::new();
    for &n in &args.sizes {
        for &policy in &policies {
            cells.push(Cell {
                policy,
                nodes: n,
                runs: Vec::new(),
            });
        }
        for run in 0..args.runs {
            for &policy in &policies {
                check_alive(&etcd)?;
                let cfg = RunConfig {
                    policy,
                    nodes: n,
                    k: args.k,
                    kill_fraction: args.kill_fraction,
                    timeout: args.timeout,
                    idle: (run == 0 && !args.no_idle).then_some(IdleConfig {
                        settle: args.settle,
                        window: args.idle_window,
                    }),
                    wavelet: WaveletParams {
                        k: args.k,
                        period: args.wavelet_period,
                        jitter: args.wavelet_jitter,
                    },
                    etcd_url: etcd.endpoint(),
                    cluster: format!("bench-{}-n{n}-r{run}", short(policy)),
                    lease_ttl: args.lease_ttl.clone(),
                    verbose: args.verbose,
                };
                let result = run_with_retries(&cfg, &http, &registry).await?;
                eprintln!("{}", progress(&cfg, run + 1, args.runs, &result));
                if let Some(cell) = cells
                    .iter_mut()
                    .find(|c| c.policy == policy && c.nodes == n)
                {
                    cell.runs.push(result);
                }
            }
        }
    }
    drop(etcd);

    let generated = report::section(&ctx, &cells);
    println!("{generated}");
    if !args.no_doc {
        report::write_section(&args.doc, &generated)?;
        eprintln!("bench-peers: results written to {}", args.doc.display());
    }
    let failed = cells
        .iter()
        .flat_map(|c| &c.runs)
        .filter(|r| r.convergence.is_none() || r.recovery.is_none())
        .count();
    if failed > 0 {
        bail!("{failed} run(s) timed out (see the table)");
    }
    Ok(())
}

/// Runs one measurement, repeating it (at most [`HARNESS_RETRIES`] times) when a node died on
/// its own: that is the test machine's fault, not the policy's.
async fn run_with_retries(
    cfg: &RunConfig,
    http: &reqwest::Client,
    registry: &peerkeep_registry::Etcd,
) -> anyhow::Result<scenario::RunResult> {
    let mut attempt = 0;
    loop {
        match scenario::run(cfg, http, registry).await {
            Err(e) if attempt < HARNESS_RETRIES && e.is::<scenario::NodeExited>() => {
                attempt += 1;
                eprintln!(
                    "[{} N={}] {e:#}\n    repeating the run ({attempt}/{HARNESS_RETRIES})",
                    cfg.policy.name(),
                    cfg.nodes
                );
            }
            other => return other,
        }
    }
}

/// How often a run is repeated after a node died on its own.
const HARNESS_RETRIES: usize = 2;

fn short(p: Policy) -> &'static str {
    match p {
        Policy::Peerkeep => "pk",
        Policy::Wavelet => "ws",
    }
}

fn progress(cfg: &RunConfig, run: usize, runs: usize, r: &scenario::RunResult) -> String {
    let t = |d: Option<Duration>| {
        d.map_or("timeout".to_owned(), |d| {
            format!("{:.2} s", d.as_secs_f64())
        })
    };
    let mut line = format!(
        "[{} N={} run {run}/{runs}] convergence {} (peers {}), recovery {}",
        cfg.policy.name(),
        cfg.nodes,
        t(r.convergence),
        r.degrees
            .map_or("–".to_owned(), |(lo, hi)| format!("{lo}–{hi}")),
        t(r.recovery),
    );
    if let Some(p) = &r.problem {
        line.push_str(&format!("\n    {p}"));
    }
    if let Some(i) = r.idle {
        line.push_str(&format!(
            ", idle: {:.0} connects/node/h, agent CPU {:.2} %/node",
            i.connects_per_node_hour, i.agent_cpu_percent
        ));
    }
    line
}

/// Fails when the bench's etcd is gone: something outside killed it (on a shared machine, another
/// test run's clean-up), and every later run would measure a fleet without a registry.
fn check_alive(etcd: &Etcd) -> anyhow::Result<()> {
    let pid = etcd.pid().context("etcd is not running")?;
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ")?.1.chars().next());
    match state {
        Some(s) if s != 'Z' && s != 'X' => Ok(()),
        _ => bail!(
            "etcd (pid {pid}) was killed from outside the bench (another test run's clean-up?); \
             stopping without results"
        ),
    }
}

/// Fails early, with what to do, when a binary the bench starts is missing.
fn check_prerequisites() -> anyhow::Result<()> {
    for bin in ["peerkeep-agent", "devnode"] {
        let path = workspace_bin(bin);
        if !path.exists() {
            bail!(
                "{} is missing; build it first (scripts/bench peers does)",
                path.display()
            );
        }
    }
    let etcd = std::process::Command::new("etcd").arg("--version").output();
    if !etcd.is_ok_and(|o| o.status.success()) {
        bail!("etcd is not installed (Debian: apt-get install etcd-server)");
    }
    Ok(())
}

fn context(args: &Args) -> RunContext {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                Some(
                    l.strip_prefix("model name")?
                        .split_once(':')?
                        .1
                        .trim()
                        .to_owned(),
                )
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let profile = if workspace_bin("peerkeep-agent")
        .components()
        .any(|c| c.as_os_str() == "release")
    {
        "release"
    } else {
        "debug"
    };
    let command = std::env::var("PEERKEEP_BENCH_COMMAND")
        .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
    let k = args.k;
    RunContext {
        command,
        date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        machine: format!(
            "{cores} cores ({model}), shared with other builds and tests (load average at start: {load}); {profile} binaries"
        ),
        settings: format!(
            "K = {k}; peerkeep with production defaults (max 2K = {max}, --peer-poll 1s); lease TTL {ttl}; \
             kill -9 of {kill:.0} % of the nodes (agent and devnode); {runs} run(s) per row, both \
             policies interleaved; sweeps of every node's `/ledger` every {sweep} ms. The \
             wavelet-stack script sleeps {period:?} + 0..={jitter:?} before each round (the \
             original: 10 s + 0–9 s). Idle columns: first run of each row, {window:?} window after \
             {settle:?} of settling; connects extrapolated to one hour.",
            max = 2 * k,
            ttl = args.lease_ttl,
            kill = args.kill_fraction * 100.0,
            runs = args.runs,
            sweep = scenario::SWEEP_INTERVAL.as_millis(),
            period = args.wavelet_period,
            jitter = args.wavelet_jitter,
            window = args.idle_window,
            settle = args.settle,
        ),
    }
}
