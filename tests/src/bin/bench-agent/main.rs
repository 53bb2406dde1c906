//! `bench-agent`: the benchmarks of peerkeep-agent (issue 4), printed as Markdown tables.
//!
//! `bench-agent run` starts a real etcd on loopback and measures the release binaries next to
//! it (`scripts/bench-agent` builds them and runs this):
//!
//! - steady-state RSS and idle CPU of `peerkeep-agent run` with one daemon (devnode through
//!   the Wavelet adapter, and a TCP listener through `--adapter none`);
//! - `peerkeep-agent health` wall time against a running agent;
//! - daemon starts answering → record visible to an `etcdctl watch`;
//! - SIGTERM → agent exit for a daemon that stops at once;
//! - the PID 1 basics (exit codes, reaping, signal forwarding, `<init> true` wall time) side
//!   by side with Debian's `tini` and the `mini-init` example.
//!
//! Timings between processes are taken where they are observed: helpers running under an init
//! (`bench-agent helper ...`) report events through a FIFO and the benchmark stamps each line
//! as it arrives. Alternatives are measured in the same run, interleaved, and reported as
//! ratios, because the machines this runs on are shared and noisy.

mod agent;
mod helper;
mod pid1;
mod procs;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use peerkeep_tests::Etcd;

/// Benchmarks of peerkeep-agent and its PID 1 duties (issue 4), printed as Markdown.
#[derive(Debug, Parser)]
#[command(name = "bench-agent")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the benchmarks and print the tables to stdout (progress goes to stderr).
    Run(RunArgs),
    /// A program the benchmarks run under an init (internal).
    #[command(subcommand, hide = true)]
    Helper(helper::Helper),
}

/// A group of measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    /// RSS, idle CPU, `health` wall time.
    Steady,
    /// Daemon answering → record in etcd.
    Register,
    /// SIGTERM → exit.
    Stop,
    /// Exit codes, reaping, forwarding, `<init> true`, against tini.
    Pid1,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Directory with peerkeep-agent, devnode and examples/mini-init. Default: this
    /// program's directory (target/release when built by scripts/bench-agent).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The tini binary (Debian package `tini`).
    #[arg(long, default_value = "tini")]
    tini: String,
    /// Sections to run (repeatable). Default: all.
    #[arg(long = "only", value_enum)]
    only: Vec<Section>,
    /// Warm-up after registration before the steady-state measurements.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Window over which idle CPU is measured.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Runs of `peerkeep-agent health`, and of `<init> /bin/true` per init.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Trials of the registration and stop measurements (each per variant).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..1000))]
    trials: u16,
    /// Rounds of the reaping comparison (per init).
    #[arg(long, default_value_t = 5)]
    reap_rounds: usize,
    /// Orphans per reaping round.
    #[arg(long, default_value_t = 100)]
    orphans: usize,
    /// USR1 signals per init in the forwarding comparison.
    #[arg(long, default_value_t = 200)]
    signals: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Helper(h) => helper::run(h),
        Cmd::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    // Orphans of a killed init come here, so the sweep at the end can stop them.
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    let bins = procs::Bins::locate(args.bin_dir.clone(), &args.tini)?;
    let result = measure(&bins, &args);
    let strays = procs::sweep_strays();
    if strays > 0 {
        eprintln!("bench-agent: killed {strays} leftover process(es)");
    }
    result
}

fn measure(bins: &procs::Bins, args: &RunArgs) -> Result<()> {
    let wants = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let settings = agent::Settings {
        warmup: args.warmup,
        idle: args.idle,
        health_runs: args.runs,
        trials: usize::from(args.trials),
    };
    print_header(bins)?;
    let etcd = Etcd::start();
    if wants(Section::Steady) {
        eprintln!("== steady state and health");
        agent::steady_state(bins, &etcd, &settings)?;
    }
    if wants(Section::Register) {
        eprintln!("== registration latency");
        agent::registration_latency(bins, &etcd, &settings)?;
    }
    if wants(Section::Stop) {
        eprintln!("== stop latency");
        agent::stop_latency(bins, &etcd, &settings)?;
    }
    if wants(Section::Pid1) {
        eprintln!("== PID 1 basics against tini");
        pid1::exit_codes(bins, &etcd)?;
        pid1::reaping(bins, &etcd, args.reap_rounds, args.orphans)?;
        pid1::forwarding(bins, &etcd, args.signals)?;
        pid1::true_wall_time(bins, &etcd, args.runs)?;
    }
    println!("\nLoad average at the end: {}", load_average());
    Ok(())
}

fn print_header(bins: &procs::Bins) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let tini = std::process::Command::new(&bins.tini)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("## peerkeep-agent benchmarks\n");
    println!(
        "- date: {}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    println!(
        "- machine: {cpus} CPUs, shared (other builds and tests may run), load average at start: {}",
        load_average()
    );
    println!("- agent: {}", bins.agent.display());
    println!("- mini-init: {}", bins.mini_init.display());
    println!("- tini: {} ({tini})", bins.tini.display());
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}
