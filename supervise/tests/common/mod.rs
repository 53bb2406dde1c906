//! Shared helpers for the supervise integration tests.
//!
//! Every test binary in this directory owns one supervisor for the whole process (only one may
//! own `waitpid`), created in a shared runtime. nextest runs each test in its own process;
//! under `cargo test` the tests of a binary share it, which the supervisor is built for.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use peerkeep_supervise::Supervisor;
use tokio::runtime::Runtime;

/// Generous upper bound for anything that should take milliseconds, on a loaded 2-core box.
pub const DEADLINE: Duration = Duration::from_secs(10);

static SHARED: LazyLock<(Runtime, Supervisor)> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime");
    let supervisor = {
        let _entered = runtime.enter();
        Supervisor::new().expect("the test process' supervisor")
    };
    (runtime, supervisor)
});

/// Runs `test` on the shared runtime with the process' supervisor.
pub fn with_supervisor<F, Fut>(test: F) -> Fut::Output
where
    F: FnOnce(Supervisor) -> Fut,
    Fut: Future,
{
    let (runtime, supervisor) = &*SHARED;
    runtime.block_on(test(supervisor.clone()))
}

/// `sh -c <script>` with `$D` set to `dir`.
pub fn sh(dir: &Path, script: &str) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script).env("D", dir);
    cmd
}

/// Kills a process group when dropped, so a failing test leaves nothing running.
pub struct KillGroupOnDrop(pub Pid);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}

/// Polls `cond` every 10 ms until it yields `Some`, panicking with `what` after [`DEADLINE`].
pub async fn eventually<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = cond() {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Blocking [`eventually`], for tests that do not run a supervisor.
pub fn eventually_blocking<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = cond() {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `path` exists.
pub async fn file_appears(path: &Path) {
    eventually(&format!("{} to exist", path.display()), || {
        path.exists().then_some(())
    })
    .await;
}

/// Reads a pid written by a test script.
pub fn read_pid(path: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok().map(Pid::from_raw)
}

/// State letter and parent pid of `pid` from `/proc/<pid>/stat`, or `None` once it is gone.
pub fn proc_state(pid: Pid) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Pids of this process' children that are zombies right now.
pub fn our_zombies() -> Vec<Pid> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .map(Pid::from_raw)
        .filter(|&pid| matches!(proc_state(pid), Some(('Z', ppid)) if ppid == me))
        .collect()
}

/// Path of an example binary built next to this test's `deps/` directory.
///
/// Cargo builds examples for a plain `cargo nextest run -p peerkeep-supervise`, but not when
/// targets are selected (`--test mini_init`): then the binary may be missing or stale, and
/// this says so instead of testing old code.
pub fn example_bin(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    let rebuild = "build it with `cargo build -p peerkeep-supervise --examples`";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {rebuild}", path.display()));
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let newest_source = ["src", "examples"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(crate_dir.join(sub)).unwrap())
        .filter_map(|entry| entry.ok()?.metadata().ok()?.modified().ok())
        .max()
        .unwrap();
    assert!(
        built >= newest_source,
        "{} is older than its sources: {rebuild}",
        path.display()
    );
    path
}
