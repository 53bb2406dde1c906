//! The agent's own targets (issue 4): steady-state memory and idle CPU, `health` wall time,
//! daemon answering → record visible in etcd, and SIGTERM → exit.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use peerkeep_tests::Etcd;
use peerkeep_tests::proc::{free_addr, free_port};
use tempfile::TempDir;

use crate::procs::{
    Bins, Fifo, Proc, TICKS_PER_SEC, Watch, agent_command, cpu_ticks, log_to, node_key, poll,
    record, status_field, temp_dir, wait_listening,
};
use crate::stats::{Samples, ms, ms_opt, verdict};

/// How long to wait for things that normally take well under a second.
const LIMIT: Duration = Duration::from_secs(20);

/// Range of the random delay before a daemon starts answering, in µs: several of the agent's
/// pre-answer probe intervals (100 ms), so every phase is sampled.
const ANSWER_JITTER_US: u64 = 300_000;

/// Attempts per trial: a trial can fail for reasons outside the agent (a picked port taken
/// by another process in the meantime); failed attempts are reported, never hidden.
const ATTEMPTS: usize = 3;

/// Runs `trial` until it succeeds, at most [`ATTEMPTS`] times; each failure is printed to
/// stderr and counted in `failures`.
fn with_retries<T>(
    what: &str,
    failures: &mut Vec<String>,
    mut trial: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match trial() {
            Ok(v) => return Ok(v),
            Err(e) => {
                eprintln!("{what}: attempt failed: {e:#}");
                failures.push(
                    format!("{what}: {e:#}")
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
                last = Some(e);
            }
        }
    }
    Err(last.map_or_else(
        || anyhow::anyhow!("{what}: no attempt"),
        |e| e.context(format!("{what}: {ATTEMPTS} attempts failed")),
    ))
}

/// The last lines of `dir/agent.log` (the daemon's output is in it too), for errors: the
/// directory is gone once the trial's guards drop.
fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    format!(
        "last lines of the agent's log:\n{}",
        lines[lines.len().saturating_sub(15)..].join("\n")
    )
}

/// Prints the failed attempts under a table.
fn print_failures(failures: &[String]) {
    if failures.is_empty() {
        return;
    }
    println!("\nRepeated after a failed attempt ({}):\n", failures.len());
    for f in failures {
        println!("- {f}");
    }
}

/// The settings of the agent benchmarks.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time after registration before measuring.
    pub warmup: Duration,
    /// CPU measurement window.
    pub idle: Duration,
    /// `peerkeep-agent health` runs.
    pub health_runs: usize,
    /// Trials of the registration and stop measurements.
    pub trials: usize,
}

/// One agent under test with the temp dir it runs in. Fields drop in this order: the agent
/// first, then the FIFO (which needs its path to release a blocked reader), then the dir.
struct Node {
    proc: Proc,
    /// What the listener daemon reports (`waiting`, `listening`, `accepted`), when started
    /// with `go`.
    fifo: Option<Fifo>,
    dir: TempDir,
    health: SocketAddr,
    cluster: String,
    id: String,
}

/// Which daemon an agent supervises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Daemon {
    /// devnode through `--adapter wavelet` (the peer keeper polls its API every second).
    Wavelet,
    /// A plain TCP listener through `--adapter none` (the agent probes the p2p port).
    Listener,
}

impl Daemon {
    fn label(self) -> &'static str {
        match self {
            Daemon::Wavelet => "devnode, `--adapter wavelet`",
            Daemon::Listener => "TCP listener, `--adapter none`",
        }
    }
}

/// Starts an agent supervising `daemon`. With `go`, the daemon starts answering only once
/// the file `go` exists in the agent's directory.
fn start_node(
    bins: &Bins,
    etcd: &Etcd,
    cluster: &str,
    daemon: Daemon,
    go: bool,
    extra: &[&str],
) -> Result<Node> {
    let dir = temp_dir()?;
    let id = "bench";
    let health = free_addr();
    let p2p = free_port();
    let p2p_flag = format!("p2p=:{p2p}");
    let mut flags = vec!["--endpoint", &p2p_flag];
    let mut fifo = None;
    let api_url;
    let daemon_argv: Vec<String> = match daemon {
        Daemon::Wavelet => {
            std::fs::write(dir.path().join("token"), "bench-token\n").context("token file")?;
            let api = free_port();
            api_url = format!("http://127.0.0.1:{api}");
            flags.extend([
                "--adapter",
                "wavelet",
                "--node-api",
                &api_url,
                "--node-api-token-file",
                "token",
            ]);
            let devnode = format!(
                "exec '{}' --id {id} --p2p-listen 127.0.0.1:{p2p} --api-listen 127.0.0.1:{api} \
                 --api-token-file token --ready-file ready.json",
                bins.devnode.display()
            );
            let script = if go {
                // Bounded: 12 000 × 10 ms.
                format!(
                    "i=0; while [ ! -e go ] && [ $i -lt 12000 ]; do sleep 0.01; i=$((i+1)); done; {devnode}"
                )
            } else {
                devnode
            };
            vec!["/bin/sh".into(), "-c".into(), script]
        }
        Daemon::Listener => {
            flags.extend(["--adapter", "none"]);
            let mut argv = vec![
                bins.me.display().to_string(),
                "helper".into(),
                "listen".into(),
                "--port".into(),
                p2p.to_string(),
            ];
            if go {
                // Made before the agent starts, so the helper finds it.
                fifo = Some(Fifo::create(&dir.path().join("notes"))?);
                argv.extend(["--go".into(), "go".into(), "--fifo".into(), "notes".into()]);
            }
            argv
        }
    };
    flags.extend_from_slice(extra);
    let mut cmd = agent_command(bins, etcd, cluster, id, health, &flags);
    cmd.arg("--").args(&daemon_argv).current_dir(dir.path());
    log_to(&mut cmd, dir.path(), "agent")?;
    let proc = Proc::spawn(&mut cmd, "peerkeep-agent run")?;
    Ok(Node {
        proc,
        health,
        dir,
        cluster: cluster.to_owned(),
        id: id.to_owned(),
        fifo,
    })
}

impl Node {
    /// The last lines of the agent's log.
    fn log_tail(&self) -> String {
        log_tail(self.dir.path())
    }

    fn wait_registered(&self, etcd: &Etcd) -> Result<()> {
        poll(
            &format!("record of {} in etcd", self.cluster),
            LIMIT,
            Duration::from_millis(50),
            || record(etcd, &self.cluster, &self.id),
        )
        .map(drop)
        .with_context(|| self.log_tail())
    }
}

/// Steady state: RSS and idle CPU of one agent per daemon kind, both running at once, then
/// `peerkeep-agent health` against one of them.
pub fn steady_state(bins: &Bins, etcd: &Etcd, s: &Settings) -> Result<()> {
    let nodes = [Daemon::Wavelet, Daemon::Listener]
        .into_iter()
        .map(|d| {
            let cluster = format!("steady-{}", if d == Daemon::Wavelet { "w" } else { "l" });
            start_node(bins, etcd, &cluster, d, false, &[]).map(|n| (d, n))
        })
        .collect::<Result<Vec<_>>>()?;
    for (_, n) in &nodes {
        n.wait_registered(etcd)?;
    }
    eprintln!(
        "steady state: registered; warming up {:?}, then measuring {:?}",
        s.warmup, s.idle
    );
    std::thread::sleep(s.warmup);
    let start: Vec<u64> = nodes
        .iter()
        .map(|(_, n)| cpu_ticks(n.proc.pid()))
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    let mut max_rss = vec![0u64; nodes.len()];
    // One RSS sample per second over the window.
    while t0.elapsed() < s.idle {
        for (i, (_, n)) in nodes.iter().enumerate() {
            max_rss[i] = max_rss[i].max(status_field(n.proc.pid(), "VmRSS")?);
        }
        std::thread::sleep(Duration::from_secs(1).min(s.idle.saturating_sub(t0.elapsed())));
    }
    let window = t0.elapsed();
    println!(
        "\n### Steady state (one daemon, after {:?} warm-up)\n",
        s.warmup
    );
    println!(
        "| agent with | VmRSS | VmRSS max over window | RssAnon / RssFile | VmHWM | threads | CPU over {:.0} s | target RSS < 10 MiB | target CPU < 0.5 % |",
        window.as_secs_f64()
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, (d, n)) in nodes.iter().enumerate() {
        let pid = n.proc.pid();
        let ticks = cpu_ticks(pid)? - start[i];
        let cpu_pct = ticks as f64 / TICKS_PER_SEC / window.as_secs_f64() * 100.0;
        let rss = status_field(pid, "VmRSS")?;
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.1} / {:.1} MiB | {:.1} MiB | {} | {cpu_pct:.2} % ({ticks} ticks) | {} | {} |",
            d.label(),
            mib(rss),
            mib(max_rss[i]),
            mib(status_field(pid, "RssAnon")?),
            mib(status_field(pid, "RssFile")?),
            mib(status_field(pid, "VmHWM")?),
            status_field(pid, "Threads")?,
            verdict(mib(max_rss[i].max(rss)) < 10.0),
            verdict(cpu_pct < 0.5),
        );
    }
    let (_, listener) = &nodes[1];
    health_wall_time(bins, listener.health, s.health_runs)
}

/// `peerkeep-agent health` (live and ready probes) against a running agent, interleaved with
/// `/bin/true` as the cost of spawning any process on this machine.
fn health_wall_time(bins: &Bins, health: SocketAddr, runs: usize) -> Result<()> {
    let addr = health.to_string();
    let variants: [(&str, Vec<&str>); 3] = [
        ("`/bin/true` (spawn baseline)", vec![]),
        ("`peerkeep-agent health`", vec!["health", "--addr", &addr]),
        (
            "`peerkeep-agent health --probe ready`",
            vec!["health", "--probe", "ready", "--addr", &addr],
        ),
    ];
    let mut samples = vec![Samples::default(); variants.len()];
    let mut failures = vec![0usize; variants.len()];
    for _ in 0..runs {
        for (i, (_, args)) in variants.iter().enumerate() {
            let program = if args.is_empty() {
                Path::new("/bin/true")
            } else {
                bins.agent.as_path()
            };
            let t = Instant::now();
            let st = Command::new(program)
                .args(args)
                .env_remove("PEERKEEP_HEALTH_LISTEN")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running the health command")?;
            samples[i].push(t.elapsed());
            if !st.success() {
                failures[i] += 1;
            }
        }
    }
    println!("\n### `peerkeep-agent health` wall time ({runs} runs each, interleaved)\n");
    println!(
        "| command | p50 ms | p95 ms | max ms | mean ms | non-zero exits | target p95 < 20 ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, (name, args)) in variants.iter().enumerate() {
        let p95 = samples[i].percentile(95.0);
        let target = if args.is_empty() {
            "–"
        } else {
            verdict(p95.is_some_and(|d| d < Duration::from_millis(20)))
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {target} |",
            ms_opt(samples[i].p50()),
            ms_opt(p95),
            ms_opt(samples[i].max()),
            ms_opt(samples[i].mean()),
            failures[i],
        );
    }
    Ok(())
}

/// Daemon starts answering → its record is visible to an etcd watch, for both daemon kinds,
/// trials interleaved. For the listener, the time is also split at the agent's first probe
/// that reaches it (the listener reports each accepted connection).
pub fn registration_latency(bins: &Bins, etcd: &Etcd, s: &Settings) -> Result<()> {
    let kinds = [Daemon::Listener, Daemon::Wavelet];
    let mut total = vec![Samples::default(); kinds.len()];
    let mut to_probe = vec![Samples::default(); kinds.len()];
    let mut to_record = vec![Samples::default(); kinds.len()];
    let mut failures = Vec::new();
    for trial in 0..s.trials {
        for (k, kind) in kinds.iter().enumerate() {
            let mut attempt = 0;
            let what = format!("registration trial {trial}, {}", kind.label());
            let t = with_retries(&what, &mut failures, || {
                attempt += 1;
                let cluster = format!("reg-{k}-{trial:04}-{attempt}");
                answer_to_record(bins, etcd, &cluster, *kind)
            })?;
            total[k].push(t.total);
            if let Some(p) = t.first_probe {
                to_probe[k].push(p);
                to_record[k].push(t.total.saturating_sub(p));
            }
        }
    }
    println!(
        "\n### Daemon answering → record visible to an etcd watch ({} trials each, interleaved)\n",
        s.trials
    );
    println!(
        "| daemon | p50 ms | p99 ms | max ms | of which: answering → first probe, p50 / max ms | first probe → record visible, p50 / p99 / max ms | target p99 < 200 ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (k, kind) in kinds.iter().enumerate() {
        let p99 = total[k].percentile(99.0);
        println!(
            "| {} | {} | {} | {} | {} / {} | {} / {} / {} | {} |",
            kind.label(),
            ms_opt(total[k].p50()),
            ms_opt(p99),
            ms_opt(total[k].max()),
            ms_opt(to_probe[k].p50()),
            ms_opt(to_probe[k].max()),
            ms_opt(to_record[k].p50()),
            ms_opt(to_record[k].percentile(99.0)),
            ms_opt(to_record[k].max()),
            verdict(p99.is_some_and(|d| d < Duration::from_millis(200))),
        );
    }
    print_failures(&failures);
    Ok(())
}

/// One registration trial's timings.
struct AnswerToRecord {
    /// Daemon answering → record seen by the watch.
    total: Duration,
    /// Daemon answering → the agent's first probe reached it (listener only).
    first_probe: Option<Duration>,
}

/// One trial: the daemon waits for `go`; the agent is up and idle-probing; `go` is created;
/// the time runs from the daemon answering to the watch printing the record's key.
fn answer_to_record(
    bins: &Bins,
    etcd: &Etcd,
    cluster: &str,
    kind: Daemon,
) -> Result<AnswerToRecord> {
    let watch = Watch::start(etcd, &format!("/peerkeep/v1/clusters/{cluster}"))?;
    let node = start_node(bins, etcd, cluster, kind, true, &["--drain-delay", "0s"])?;
    answer_to_record_with(&watch, &node).with_context(|| node.log_tail())
}

/// The part of [`answer_to_record`] after the agent has started.
fn answer_to_record_with(watch: &Watch, node: &Node) -> Result<AnswerToRecord> {
    wait_listening(node.health, LIMIT)?;
    if let Some(f) = &node.fifo {
        f.lines.wait_for("`waiting`", LIMIT, |l| l == "waiting")?;
    }
    // Let the agent settle into its pre-answer probing (etcd connected, view loaded), then
    // wait a random extra time: the agent probes on a fixed tick from its start, and a fixed
    // delay here would always hit the same phase of that tick.
    let jitter = Duration::from_micros(rand::random_range(0..ANSWER_JITTER_US));
    std::thread::sleep(Duration::from_millis(500) + jitter);
    std::fs::write(node.dir.path().join("go"), "").context("go file")?;
    let (answered, first_probe) = match &node.fifo {
        Some(f) => {
            let (_, answered) = f
                .lines
                .wait_for("`listening`", LIMIT, |l| l == "listening")?;
            let (_, probed) = f.lines.wait_for("`accepted`", LIMIT, |l| l == "accepted")?;
            (answered, Some(probed.saturating_duration_since(answered)))
        }
        None => {
            // devnode writes it once its API listener is bound.
            let ready = node.dir.path().join("ready.json");
            let answered = poll(
                "devnode ready file",
                LIMIT,
                Duration::from_micros(200),
                || ready.exists().then(Instant::now),
            )?;
            (answered, None)
        }
    };
    let key = node_key(&node.cluster, &node.id);
    let (_, seen) = watch
        .lines
        .wait_for("the record in the watch", LIMIT, |l| l == key)?;
    Ok(AnswerToRecord {
        total: seen.saturating_duration_since(answered),
        first_probe,
    })
}

/// SIGTERM → agent exit with a daemon that stops at once (`sleep`, killed by TERM), for
/// `--drain-delay 500ms` (the target) and `0s` (the floor).
pub fn stop_latency(bins: &Bins, etcd: &Etcd, s: &Settings) -> Result<()> {
    let delays = [Duration::from_millis(500), Duration::ZERO];
    let mut samples = vec![Samples::default(); delays.len()];
    let mut failures = Vec::new();
    for trial in 0..s.trials {
        for (k, delay) in delays.iter().enumerate() {
            let what = format!("stop trial {trial}, drain delay {delay:?}");
            let mut attempt = 0;
            let d = with_retries(&what, &mut failures, || {
                attempt += 1;
                let cluster = format!("stop-{k}-{trial:04}-{attempt}");
                term_to_exit(bins, etcd, &cluster, *delay)
            })?;
            samples[k].push(d);
        }
    }
    println!(
        "\n### SIGTERM → agent exit, daemon that stops at once ({} trials each, interleaved)\n",
        s.trials
    );
    println!(
        "| `--drain-delay` | p50 ms | p99 ms | max ms | max − drain delay | target max < drain-delay + 100 ms |"
    );
    println!("|---|---|---|---|---|---|");
    for (k, delay) in delays.iter().enumerate() {
        let max = samples[k].max();
        println!(
            "| {} | {} | {} | {} | {} ms | {} |",
            humantime::format_duration(*delay),
            ms_opt(samples[k].p50()),
            ms_opt(samples[k].percentile(99.0)),
            ms_opt(max),
            max.map_or_else(|| "–".to_owned(), |m| ms(m.saturating_sub(*delay))),
            verdict(max.is_some_and(|m| m < *delay + Duration::from_millis(100))),
        );
    }
    print_failures(&failures);
    Ok(())
}

fn term_to_exit(bins: &Bins, etcd: &Etcd, cluster: &str, drain: Duration) -> Result<Duration> {
    let dir = temp_dir()?;
    let health = free_addr();
    let drain_flag = humantime::format_duration(drain).to_string();
    let drain_flag = if drain.is_zero() {
        "0s".to_owned()
    } else {
        drain_flag
    };
    let mut cmd = agent_command(
        bins,
        etcd,
        cluster,
        "bench",
        health,
        &["--adapter", "none", "--drain-delay", &drain_flag],
    );
    cmd.args(["--", "/bin/sleep", "3600"])
        .current_dir(dir.path());
    log_to(&mut cmd, dir.path(), "agent")?;
    let mut proc = Proc::spawn(&mut cmd, "peerkeep-agent run")?;
    poll("record in etcd", LIMIT, Duration::from_millis(50), || {
        record(etcd, cluster, "bench")
    })
    .with_context(|| log_tail(dir.path()))?;
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    proc.signal(Signal::SIGTERM)?;
    let status = proc.wait_exit(LIMIT)?;
    let took = t.elapsed();
    if status.code() != Some(143) {
        bail!(
            "agent exited with {status}, expected 143 (sleep killed by TERM); {}",
            log_tail(dir.path())
        );
    }
    Ok(took)
}
