//! Processes of a benchmark run: where the measured binaries are, a guard that stops what it
//! started, FIFOs and etcd watches whose lines are time-stamped on arrival, the agent's command
//! line, and what `/proc` says about a process.
//!
//! Nothing started here outlives the run: every child gets a parent-death signal and its own
//! process group ([`die_with_test`]), [`Proc`] stops its process when dropped (two TERMs, then
//! KILL), and the benchmark process is a child subreaper, so [`sweep_strays`] finds whatever a
//! killed init left behind.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use peerkeep_tests::Etcd;
use peerkeep_tests::proc::die_with_test;

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `peerkeep-agent`.
    pub agent: PathBuf,
    /// `devnode`, the reference daemon.
    pub devnode: PathBuf,
    /// The `mini-init` example of peerkeep-supervise.
    pub mini_init: PathBuf,
    /// Debian's `tini`.
    pub tini: PathBuf,
    /// This program (its `helper` subcommand runs under the inits).
    pub me: PathBuf,
}

impl Bins {
    /// Finds the binaries in `dir` (default: next to this program), `mini-init` in
    /// `dir/examples`, and `tini` as given (looked up in `PATH` when it has no slash).
    pub fn locate(dir: Option<PathBuf>, tini: &str) -> Result<Self> {
        let me = std::env::current_exe().context("own executable path")?;
        let dir = match dir {
            Some(d) => d,
            None => me
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| anyhow!("{} has no parent directory", me.display()))?,
        };
        // Absolute: the processes under test run in their own working directories.
        let dir = dir
            .canonicalize()
            .with_context(|| format!("binary directory {}", dir.display()))?;
        let tini = if tini.contains('/') {
            PathBuf::from(tini)
        } else {
            which(tini).ok_or_else(|| anyhow!("{tini} not found in PATH (apt-get install tini)"))?
        };
        let bins = Self {
            agent: dir.join("peerkeep-agent"),
            devnode: dir.join("devnode"),
            mini_init: dir.join("examples").join("mini-init"),
            tini,
            me,
        };
        for p in [&bins.agent, &bins.devnode, &bins.mini_init, &bins.tini] {
            if !p.is_file() {
                bail!(
                    "{} is missing: run scripts/bench-agent, which builds it",
                    p.display()
                );
            }
        }
        Ok(bins)
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A started process, stopped when dropped.
pub struct Proc {
    child: Option<Child>,
    what: String,
}

impl Proc {
    /// Spawns `cmd` with a parent-death signal and its own process group.
    pub fn spawn(cmd: &mut Command, what: &str) -> Result<Self> {
        die_with_test(cmd);
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Self {
            child: Some(child),
            what: what.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .and_then(|c| i32::try_from(c.id()).ok())
            .unwrap_or(0)
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        kill(Pid::from_raw(self.pid()), sig).with_context(|| format!("{sig} to {}", self.what))
    }

    /// Waits for the exit, polling every 200 µs (so the exit time is known to that); fails
    /// after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{} already reaped", self.what))?;
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().context("try_wait")? {
                self.child = None;
                return Ok(st);
            }
            if Instant::now() > end {
                bail!("{} did not exit within {limit:?}", self.what);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        // Two TERMs: the agent's second one skips its drain and stop waits.
        let _ = kill(pid, Signal::SIGTERM);
        std::thread::sleep(Duration::from_millis(20));
        let _ = kill(pid, Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Kills and reaps whatever is still a child of this process (orphans that came to this
/// subreaper). Call only when no [`Proc`] is alive: it waits for any child.
pub fn sweep_strays() -> usize {
    let me = nix::unistd::getpid().as_raw();
    let strays = children_of(me);
    for pid in &strays {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(_) => {}
            Err(_) => break, // ECHILD: nothing left
        }
    }
    strays.len()
}

/// Pids whose parent is `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat_fields(*pid).is_some_and(|f| f.get(1) == Some(&parent.to_string())))
        .collect()
}

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, pgrp, ...
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Whether `pid` still exists, running or as a zombie (i.e. it has not been reaped).
pub fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// utime + stime of `pid` (all its threads, dead ones included), in clock ticks.
pub fn cpu_ticks(pid: i32) -> Result<u64> {
    let f = stat_fields(pid).ok_or_else(|| anyhow!("/proc/{pid}/stat unreadable"))?;
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let field = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat field {i} unreadable"))
    };
    Ok(field(11)? + field(12)?)
}

/// Clock ticks per second in `/proc`: Linux fixes USER_HZ at 100 for user space.
pub const TICKS_PER_SEC: f64 = 100.0;

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, `RssAnon`...), or `Threads`.
pub fn status_field(pid: i32, name: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("{name} missing from /proc/{pid}/status"))
}

/// Lines from another process, each stamped with the instant it was read.
pub struct Lines {
    rx: Receiver<(String, Instant)>,
}

impl Lines {
    /// Reads `reader` on a thread until EOF.
    fn from_reader(reader: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send((line, Instant::now())).is_err() {
                    break;
                }
            }
        });
        Self { rx }
    }

    /// Waits for the next line for which `want` holds (others are skipped) and returns when it
    /// arrived; fails after `limit` or at EOF.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Result<(String, Instant)> {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((line, at)) if want(&line) => return Ok((line, at)),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => bail!("no {what} within {limit:?}"),
                Err(RecvTimeoutError::Disconnected) => bail!("stream ended before {what}"),
            }
        }
    }
}

/// A FIFO a helper reports to.
pub struct Fifo {
    path: PathBuf,
    /// What the helper wrote.
    pub lines: Lines,
}

impl Fifo {
    /// Creates the FIFO and starts reading it (the read side opens as soon as a writer does).
    pub fn create(path: &Path) -> Result<Self> {
        nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR)
            .with_context(|| format!("mkfifo {}", path.display()))?;
        let (tx, rx) = channel();
        let p = path.to_path_buf();
        std::thread::spawn(move || {
            let Ok(file) = std::fs::File::open(&p) else {
                return;
            };
            for line in BufReader::new(file).lines() {
                let Ok(line) = line else { break };
                if tx.send((line, Instant::now())).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            path: path.to_path_buf(),
            lines: Lines { rx },
        })
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        // A reader still blocked in open() (no helper ever came) is released by a writer that
        // opens and closes at once; its read then sees EOF and the thread ends.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(&self.path);
    }
}

/// `etcdctl watch --prefix`, its output lines time-stamped.
pub struct Watch {
    _proc: Proc,
    /// What etcdctl printed (`PUT`, key, value, ...).
    pub lines: Lines,
}

impl Watch {
    /// Watches `prefix` and returns once the watch provably sees writes: a sentinel key
    /// `<prefix>-sentinel` (inside the watched range, outside any cluster's keys) is put until
    /// the watch reports it.
    pub fn start(etcd: &Etcd, prefix: &str) -> Result<Self> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", etcd.endpoint()))
            .args(["watch", "--prefix", prefix])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut proc = Proc::spawn(&mut cmd, "etcdctl watch")?;
        let out = proc
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .ok_or_else(|| anyhow!("etcdctl stdout not piped"))?;
        let watch = Self {
            _proc: proc,
            lines: Lines::from_reader(out),
        };
        let sentinel = format!("{prefix}-sentinel");
        for _ in 0..50 {
            etcd.put(&sentinel, "x");
            if watch
                .lines
                .wait_for("sentinel", Duration::from_millis(100), |l| l == sentinel)
                .is_ok()
            {
                return Ok(watch);
            }
        }
        bail!("etcdctl watch on {prefix} never reported the sentinel")
    }
}

/// The etcd key of a node record.
pub fn node_key(cluster: &str, id: &str) -> String {
    format!("/peerkeep/v1/clusters/{cluster}/nodes/{id}")
}

/// The record of `id` in `cluster` as raw JSON, if present.
pub fn record(etcd: &Etcd, cluster: &str, id: &str) -> Option<String> {
    let out = etcd.etcdctl(&["get", &node_key(cluster, id), "--print-value-only"]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// Polls `cond` every `every` until it holds; fails with `what` after `limit`.
pub fn poll<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> Result<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, limit: Duration) -> Result<()> {
    poll(
        &format!("{addr} to accept"),
        limit,
        Duration::from_millis(10),
        || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok(),
    )
    .map(drop)
}

/// `peerkeep-agent run` with the flags every benchmark uses: its own cluster, a loopback
/// health port, loopback addresses allowed. `extra` flags come next; the caller adds
/// `-- <daemon>`. Production defaults otherwise (lease TTL, peer poll, log level).
pub fn agent_command(
    bins: &Bins,
    etcd: &Etcd,
    cluster: &str,
    id: &str,
    health: SocketAddr,
    extra: &[&str],
) -> Command {
    let mut cmd = Command::new(&bins.agent);
    cmd.args(["run", "--etcd-endpoints", &etcd.endpoint()])
        .args(["--cluster", cluster, "--node-id", id, "--allow-loopback"])
        .args(["--private-addr", "ip:127.0.0.1"])
        .args(["--health-listen", &health.to_string()])
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("PEERKEEP_HEALTH_LISTEN")
        .stdin(Stdio::null());
    cmd
}

/// Sends output of `cmd` to `dir/<name>.log`.
pub fn log_to(cmd: &mut Command, dir: &Path, name: &str) -> Result<()> {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).context("log file")?;
    cmd.stdout(log.try_clone().context("dup log")?).stderr(log);
    Ok(())
}

/// A fresh temporary directory for one process under test.
pub fn temp_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("peerkeep-bench-")
        .tempdir()
        .context("temp dir")
}
