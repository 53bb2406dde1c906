//! The PID 1 basics side by side: Debian's `tini` (subreaper mode `-s`, with and without `-g`),
//! the `mini-init` example of peerkeep-supervise, and `peerkeep-agent run --adapter none` with a
//! real etcd. All run as subreapers (not PID 1), in the same run, trials interleaved, so the
//! ratios hold even on a noisy machine.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;
use peerkeep_tests::Etcd;
use peerkeep_tests::proc::free_addr;

use crate::procs::{Bins, Fifo, Proc, agent_command, exists, log_to, poll, temp_dir};
use crate::stats::{Samples, ms_opt, ratio};

/// How long anything here may take before the trial fails.
const LIMIT: Duration = Duration::from_secs(20);

/// Makes agent clusters unique within the run.
static INSTANCE: AtomicUsize = AtomicUsize::new(0);

/// An init under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contestant {
    /// `tini -s --`.
    Tini,
    /// `tini -s -g --` (signals go to the child's process group).
    TiniGroup,
    /// `mini-init --`.
    MiniInit,
    /// `peerkeep-agent run --adapter none ... --`.
    Agent,
}

impl Contestant {
    /// Every contestant; the first is the reference for ratios.
    pub const ALL: [Contestant; 4] = [
        Contestant::Tini,
        Contestant::TiniGroup,
        Contestant::MiniInit,
        Contestant::Agent,
    ];

    fn label(self) -> &'static str {
        match self {
            Contestant::Tini => "`tini -s`",
            Contestant::TiniGroup => "`tini -s -g`",
            Contestant::MiniInit => "`mini-init`",
            Contestant::Agent => "`peerkeep-agent run --adapter none`",
        }
    }

    /// The init's command line up to and including `--`; the caller appends the child.
    fn command(self, bins: &Bins, etcd: &Etcd) -> Command {
        match self {
            Contestant::Tini | Contestant::TiniGroup => {
                let mut c = Command::new(&bins.tini);
                c.arg("-s");
                if self == Contestant::TiniGroup {
                    c.arg("-g");
                }
                c.arg("--");
                c
            }
            Contestant::MiniInit => {
                let mut c = Command::new(&bins.mini_init);
                c.args(["--stop-timeout-ms", "5000", "--"]);
                c
            }
            Contestant::Agent => {
                let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
                let mut c = agent_command(
                    bins,
                    etcd,
                    &format!("pid1-{n:05}"),
                    "bench",
                    free_addr(),
                    &[
                        "--adapter",
                        "none",
                        "--drain-delay",
                        "0s",
                        "--stop-timeout",
                        "5s",
                    ],
                );
                c.arg("--");
                c
            }
        }
    }
}

fn header(first: &str) {
    let names: Vec<&str> = Contestant::ALL.iter().map(|i| i.label()).collect();
    println!("| {first} | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(names.len()));
}

/// A row of timings with each contestant's ratio to the first.
fn timing_row(name: &str, values: &[Option<Duration>]) {
    let cells: Vec<String> = values
        .iter()
        .map(|v| format!("{} ({})", ms_opt(*v), ratio(*v, values[0])))
        .collect();
    println!("| {name} | {} |", cells.join(" | "));
}

/// Exit code propagation: what each init exits with for the same child.
pub fn exit_codes(bins: &Bins, etcd: &Etcd) -> Result<()> {
    struct Case {
        name: &'static str,
        child: &'static [&'static str],
        /// Send TERM to the init once the child wrote `child.pid`.
        term_init: bool,
        expected: i32,
    }
    let cases = [
        Case {
            name: "child exits 0 (`true`)",
            child: &["/bin/true"],
            term_init: false,
            expected: 0,
        },
        Case {
            name: "child exits 3",
            child: &["/bin/sh", "-c", "exit 3"],
            term_init: false,
            expected: 3,
        },
        Case {
            name: "child killed by TERM",
            child: &["/bin/sh", "-c", "kill -TERM $$"],
            term_init: false,
            expected: 143,
        },
        Case {
            name: "child killed by KILL",
            child: &["/bin/sh", "-c", "kill -KILL $$"],
            term_init: false,
            expected: 137,
        },
        Case {
            name: "TERM to the init, child with default TERM handling",
            child: &["/bin/sh", "-c", "echo $$ > child.pid; exec /bin/sleep 3600"],
            term_init: true,
            expected: 143,
        },
        Case {
            name: "program not found",
            child: &["/nonexistent/daemon"],
            term_init: false,
            expected: 127,
        },
    ];
    println!("\n### Exit code propagation (✓ = expected code)\n");
    header("case (expected)");
    let mut all_ok = true;
    for case in &cases {
        let mut cells = Vec::new();
        for init in Contestant::ALL {
            let dir = temp_dir()?;
            let mut cmd = init.command(bins, etcd);
            cmd.args(case.child).current_dir(dir.path());
            log_to(&mut cmd, dir.path(), "init")?;
            let mut p = Proc::spawn(&mut cmd, init.label())?;
            if case.term_init {
                let pid_file = dir.path().join("child.pid");
                poll("child.pid", LIMIT, Duration::from_millis(5), || {
                    pid_file.exists().then_some(())
                })?;
                std::thread::sleep(Duration::from_millis(100));
                p.signal(Signal::SIGTERM)?;
            }
            let code = p.wait_exit(LIMIT)?.code();
            let ok = code == Some(case.expected);
            all_ok &= ok;
            cells.push(match code {
                Some(c) => format!("{c} {}", if ok { "✓" } else { "✗" }),
                None => "killed ✗".to_owned(),
            });
        }
        println!(
            "| {} ({}) | {} |",
            case.name,
            case.expected,
            cells.join(" | ")
        );
    }
    if !all_ok {
        eprintln!("exit codes: at least one init did not pass a code through (see the table)");
    }
    Ok(())
}

/// Reaping: a child whose own child spawns `count` processes and exits at once, so they
/// become orphans (running or already zombies) of the init. Times from the orphans' pids being
/// known until none of them exists any more (all reaped), then stops the init and checks it
/// exits 0.
pub fn reaping(bins: &Bins, etcd: &Etcd, rounds: usize, count: usize) -> Result<()> {
    let mut samples = vec![Samples::default(); Contestant::ALL.len()];
    let mut reaped = vec![0usize; Contestant::ALL.len()];
    let mut clean_exits = vec![0usize; Contestant::ALL.len()];
    for _ in 0..rounds {
        for (i, init) in Contestant::ALL.into_iter().enumerate() {
            let r = reap_round(bins, etcd, init, count)
                .with_context(|| format!("reaping round under {}", init.label()))?;
            if let Some(d) = r.all_gone {
                samples[i].push(d);
            }
            reaped[i] += r.reaped;
            clean_exits[i] += usize::from(r.exit_code == Some(0));
        }
    }
    println!(
        "\n### Reaping: {count} orphans per round, {rounds} rounds (time until all are reaped)\n"
    );
    header("measure");
    let cells = |f: &dyn Fn(usize) -> String| -> String {
        (0..Contestant::ALL.len())
            .map(f)
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!(
        "| orphans reaped | {} |",
        cells(&|i| format!("{}/{}", reaped[i], rounds * count))
    );
    timing_row(
        "all reaped, p50 ms",
        &samples.iter().map(Samples::p50).collect::<Vec<_>>(),
    );
    timing_row(
        "all reaped, max ms",
        &samples.iter().map(Samples::max).collect::<Vec<_>>(),
    );
    println!(
        "| exit 0 after TERM | {} |",
        cells(&|i| format!("{}/{rounds}", clean_exits[i]))
    );
    Ok(())
}

struct ReapResult {
    all_gone: Option<Duration>,
    reaped: usize,
    exit_code: Option<i32>,
}

fn reap_round(bins: &Bins, etcd: &Etcd, init: Contestant, count: usize) -> Result<ReapResult> {
    let dir = temp_dir()?;
    let fifo = Fifo::create(&dir.path().join("notes"))?;
    let mut cmd = init.command(bins, etcd);
    cmd.arg(&bins.me)
        .args(["helper", "orphans", "--count", &count.to_string()])
        .args(["--fifo", "notes"])
        .current_dir(dir.path());
    log_to(&mut cmd, dir.path(), "init")?;
    let mut p = Proc::spawn(&mut cmd, init.label())?;
    let (line, t0) = fifo
        .lines
        .wait_for("orphan pids", LIMIT, |l| l.starts_with("pids"))?;
    let pids: Vec<i32> = line
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().map_err(|_| anyhow!("bad pid {p:?}")))
        .collect::<Result<_>>()?;
    let end = t0 + Duration::from_secs(5);
    let mut left = pids.clone();
    let all_gone = loop {
        left.retain(|pid| exists(*pid));
        if left.is_empty() {
            break Some(t0.elapsed());
        }
        if Instant::now() > end {
            break None;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    p.signal(Signal::SIGTERM)?;
    let status = p.wait_exit(LIMIT)?;
    Ok(ReapResult {
        all_gone,
        reaped: pids.len() - left.len(),
        exit_code: status.code(),
    })
}

/// Signal forwarding: USR1 sent to the init → the child has taken it from `sigwait` and
/// reported it. All inits run at once; signals go round-robin, one at a time.
pub fn forwarding(bins: &Bins, etcd: &Etcd, signals: usize) -> Result<()> {
    let mut runs = Vec::new();
    for init in Contestant::ALL {
        let dir = temp_dir()?;
        let fifo = Fifo::create(&dir.path().join("notes"))?;
        let mut cmd = init.command(bins, etcd);
        cmd.arg(&bins.me)
            .args(["helper", "usr1", "--fifo", "notes"])
            .current_dir(dir.path());
        log_to(&mut cmd, dir.path(), "init")?;
        let p = Proc::spawn(&mut cmd, init.label())?;
        runs.push((init, p, fifo, dir));
    }
    for (init, _, fifo, _) in &runs {
        fifo.lines
            .wait_for("`ready`", LIMIT, |l| l == "ready")
            .with_context(|| format!("helper under {}", init.label()))?;
    }
    // Let the agent finish its start (registration) so it is in its steady loop.
    std::thread::sleep(Duration::from_millis(500));
    let mut samples = vec![Samples::default(); runs.len()];
    for _ in 0..signals {
        for (i, (init, p, fifo, _)) in runs.iter().enumerate() {
            let t = Instant::now();
            p.signal(Signal::SIGUSR1)?;
            let (_, at) = fifo
                .lines
                .wait_for("`usr1`", Duration::from_secs(2), |l| l == "usr1")
                .with_context(|| format!("USR1 through {}", init.label()))?;
            samples[i].push(at.saturating_duration_since(t));
            // Separate deliveries, so no two signals coalesce.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let mut clean = Vec::new();
    for (_, p, _, _) in &mut runs {
        p.signal(Signal::SIGTERM)?;
        clean.push(p.wait_exit(LIMIT)?.code() == Some(0));
    }
    println!("\n### Signal forwarding: USR1 to the init → child has it ({signals} signals each)\n");
    header("measure");
    for (name, p) in [("p50 ms", 50.0), ("p99 ms", 99.0)] {
        timing_row(
            name,
            &samples.iter().map(|s| s.percentile(p)).collect::<Vec<_>>(),
        );
    }
    timing_row(
        "max ms",
        &samples.iter().map(Samples::max).collect::<Vec<_>>(),
    );
    let cells: Vec<&str> = clean
        .iter()
        .map(|c| if *c { "yes" } else { "no" })
        .collect();
    println!(
        "| child exits 0 on TERM, init passes it on | {} |",
        cells.join(" | ")
    );
    Ok(())
}

/// Wall time of `<init> /bin/true`, `runs` times each, interleaved, with plain `/bin/true` as
/// the spawn baseline.
pub fn true_wall_time(bins: &Bins, etcd: &Etcd, runs: usize) -> Result<()> {
    let mut base = Samples::default();
    let mut samples = vec![Samples::default(); Contestant::ALL.len()];
    let dir = temp_dir()?;
    for _ in 0..runs {
        base.push(time_true(Command::new("/bin/true"), dir.path())?);
        for (i, init) in Contestant::ALL.into_iter().enumerate() {
            let mut cmd = init.command(bins, etcd);
            cmd.arg("/bin/true");
            samples[i].push(time_true(cmd, dir.path()).with_context(|| init.label())?);
        }
    }
    println!(
        "\n### Wall time of `<init> /bin/true` ({runs} runs each, interleaved; `/bin/true` alone: p50 {} ms)\n",
        ms_opt(base.p50())
    );
    header("measure");
    timing_row(
        "p50 ms",
        &samples.iter().map(Samples::p50).collect::<Vec<_>>(),
    );
    timing_row(
        "mean ms",
        &samples.iter().map(Samples::mean).collect::<Vec<_>>(),
    );
    timing_row(
        "p95 ms",
        &samples
            .iter()
            .map(|s| s.percentile(95.0))
            .collect::<Vec<_>>(),
    );
    Ok(())
}

fn time_true(mut cmd: Command, dir: &Path) -> Result<Duration> {
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let t = Instant::now();
    let mut p = Proc::spawn(&mut cmd, "init with /bin/true")?;
    let status = p.wait_exit(LIMIT)?;
    let took = t.elapsed();
    if !status.success() {
        bail!("exited with {status}");
    }
    Ok(took)
}
