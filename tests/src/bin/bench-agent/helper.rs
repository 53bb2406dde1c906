//! The child side of the benchmarks: small daemons that run *under* the init being measured
//! (tini, mini-init, peerkeep-agent) and report what they observe through a FIFO, one line per
//! event, so the benchmark can time events in another process to the microsecond.
//!
//! Every helper blocks the signals it waits for and takes them with `sigwait`, so an event is
//! reported the moment it is delivered (no shell `trap`, which only runs between commands).
//! SIGTERM and SIGINT end every long-running helper with exit code 0.

use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use nix::sys::signal::{SigSet, Signal};

/// Longest a helper waits for its go file before giving up.
const GO_WAIT_LIMIT: Duration = Duration::from_secs(120);

/// Most events one helper handles (a bound on its loop; benchmarks send far fewer).
const MAX_EVENTS: usize = 1_000_000;

/// The helper programs (`bench-agent helper <mode>`).
#[derive(Debug, Subcommand)]
pub enum Helper {
    /// Writes `ready`, then `usr1` for every SIGUSR1 it receives; exits 0 on TERM/INT.
    Usr1 {
        /// FIFO to report to.
        #[arg(long)]
        fifo: PathBuf,
    },
    /// Optionally waits for a file to appear, then listens on a loopback TCP port (a daemon
    /// whose p2p port starts answering at a known instant), reporting `waiting`, `listening`
    /// and `accepted` for every connection; exits 0 on TERM/INT.
    Listen {
        /// Port on 127.0.0.1.
        #[arg(long)]
        port: u16,
        /// Listen only once this file exists.
        #[arg(long)]
        go: Option<PathBuf>,
        /// FIFO to report `waiting` and `listening` to.
        #[arg(long)]
        fifo: Option<PathBuf>,
    },
    /// Starts a process that spawns `count` short-lived children and exits at once, so they
    /// become orphans of the nearest subreaper; then waits for TERM/INT and exits 0.
    Orphans {
        /// How many orphans.
        #[arg(long)]
        count: usize,
        /// FIFO the orphans' pids are reported to (`pids <pid>...`).
        #[arg(long)]
        fifo: PathBuf,
    },
    /// The intermediate process of `orphans`: spawns `count` `/bin/true`, reports their pids,
    /// exits without waiting for them.
    SpawnOrphans {
        /// How many children.
        #[arg(long)]
        count: usize,
        /// FIFO to report the pids to.
        #[arg(long)]
        fifo: PathBuf,
    },
}

/// Runs a helper; returns only on error (helpers exit the process themselves).
pub fn run(helper: Helper) -> Result<()> {
    match helper {
        Helper::Usr1 { fifo } => usr1(&fifo),
        Helper::Listen { port, go, fifo } => listen(port, go.as_deref(), fifo.as_deref()),
        Helper::Orphans { count, fifo } => orphans(count, &fifo),
        Helper::SpawnOrphans { count, fifo } => spawn_orphans(count, &fifo),
    }
}

/// Blocks `signals` in this (single) thread so that they queue for [`SigSet::wait`].
fn block(signals: &[Signal]) -> Result<SigSet> {
    let mut set = SigSet::empty();
    for s in signals {
        set.add(*s);
    }
    set.thread_block().context("blocking signals")?;
    Ok(set)
}

/// Opens the FIFO for writing (blocks until the benchmark reads it).
fn open_fifo(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening FIFO {}", path.display()))
}

fn note(fifo: &mut File, line: &str) -> Result<()> {
    fifo.write_all(format!("{line}\n").as_bytes())
        .context("writing to the FIFO")
}

/// Waits for TERM or INT, ignoring anything else in `set`, then exits 0.
fn wait_for_stop(set: &SigSet) -> Result<()> {
    for _ in 0..MAX_EVENTS {
        match set.wait().context("sigwait")? {
            Signal::SIGTERM | Signal::SIGINT => std::process::exit(0),
            _ => {}
        }
    }
    bail!("more than {MAX_EVENTS} signals without TERM")
}

fn usr1(fifo: &Path) -> Result<()> {
    let set = block(&[Signal::SIGUSR1, Signal::SIGTERM, Signal::SIGINT])?;
    let mut out = open_fifo(fifo)?;
    note(&mut out, "ready")?;
    for _ in 0..MAX_EVENTS {
        match set.wait().context("sigwait")? {
            Signal::SIGUSR1 => note(&mut out, "usr1")?,
            _ => std::process::exit(0),
        }
    }
    bail!("more than {MAX_EVENTS} signals without TERM")
}

fn listen(port: u16, go: Option<&Path>, fifo: Option<&Path>) -> Result<()> {
    let set = block(&[Signal::SIGTERM, Signal::SIGINT])?;
    let mut out = fifo.map(open_fifo).transpose()?;
    if let Some(out) = out.as_mut() {
        note(out, "waiting")?;
    }
    if let Some(go) = go {
        let end = Instant::now() + GO_WAIT_LIMIT;
        while !go.exists() {
            if Instant::now() > end {
                bail!("{} did not appear within {GO_WAIT_LIMIT:?}", go.display());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let listener = TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    if let Some(out) = out.as_mut() {
        note(out, "listening")?;
    }
    // The thread inherits the blocked mask, so TERM still reaches the sigwait below. Each
    // accepted connection is reported (`accepted`) and closed at once: the agent's probe only
    // connects.
    let mut accepted = out
        .as_ref()
        .map(File::try_clone)
        .transpose()
        .context("duplicating the FIFO")?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(_) => {
                    if let Some(out) = accepted.as_mut() {
                        // The reader may be gone (benchmark over); only the report is lost.
                        let _ = note(out, "accepted");
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    wait_for_stop(&set)
}

fn orphans(count: usize, fifo: &Path) -> Result<()> {
    let set = block(&[Signal::SIGTERM, Signal::SIGINT])?;
    let me = std::env::current_exe().context("own executable path")?;
    let status = Command::new(me)
        .args(["helper", "spawn-orphans", "--count", &count.to_string()])
        .arg("--fifo")
        .arg(fifo)
        .status()
        .context("running spawn-orphans")?;
    if !status.success() {
        bail!("spawn-orphans failed: {status}");
    }
    wait_for_stop(&set)
}

fn spawn_orphans(count: usize, fifo: &Path) -> Result<()> {
    let mut pids = Vec::with_capacity(count);
    for _ in 0..count {
        let child = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning /bin/true")?;
        // Deliberately not waited for: this process exits next and the children become
        // orphans (running or already zombies) of the nearest subreaper.
        pids.push(child.id().to_string());
    }
    let mut out = open_fifo(fifo)?;
    note(&mut out, &format!("pids {}", pids.join(" ")))?;
    std::process::exit(0)
}
