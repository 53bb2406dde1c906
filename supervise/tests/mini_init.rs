//! The `mini-init` example as a real init: signals are sent to it from outside, so these tests
//! need no supervisor in the test process (and use std's own `wait` on mini-init itself).
//!
//! The PID 1 tests start mini-init in a new pid namespace with `unshare`, which needs root (or
//! CAP_SYS_ADMIN); they fail with that explanation otherwise.
// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{DEADLINE, eventually_blocking, example_bin, read_pid};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

/// mini-init running `/bin/sh -c <script>` with `$D` set to a fresh temp dir. Kills mini-init
/// and the script's process group (the script writes its pid to `$D/child.pid`) when dropped.
struct MiniInit {
    process: Child,
    dir: TempDir,
    /// Started in its own pid namespace: the script's `$$` means nothing out here, and the
    /// namespace dies with its init.
    own_pid_namespace: bool,
}

impl MiniInit {
    fn start(init_args: &[&str], script: &str) -> Self {
        Self::start_with(None, init_args, script)
    }

    /// As PID 1 of a new pid namespace (with its own /proc), killed with it when dropped.
    fn start_as_pid1(init_args: &[&str], script: &str) -> Self {
        let probe = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "true"])
            .status()
            .unwrap();
        assert!(
            probe.success(),
            "these tests need a pid namespace: run them as root (CAP_SYS_ADMIN)"
        );
        Self::start_with(Some("unshare"), init_args, script)
    }

    fn start_with(wrapper: Option<&str>, init_args: &[&str], script: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = format!("echo $$ > $D/child.pid; {script}");
        let mut cmd = match wrapper {
            Some(unshare) => {
                let mut cmd = Command::new(unshare);
                cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
                    .arg(example_bin("mini-init"));
                cmd
            }
            None => Command::new(example_bin("mini-init")),
        };
        cmd.args(init_args)
            .args(["--", "/bin/sh", "-c", &script])
            .env("D", dir.path())
            .stderr(File::create(dir.path().join("stderr")).unwrap())
            .process_group(0);
        let process = cmd.spawn().unwrap();
        Self {
            process,
            dir,
            own_pid_namespace: wrapper.is_some(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.process.id() as i32), sig).unwrap();
    }

    /// Waits for mini-init to exit and returns its exit code.
    fn exit_code(&mut self) -> i32 {
        let status = eventually_blocking("mini-init to exit", || self.process.try_wait().unwrap());
        status
            .code()
            .unwrap_or_else(|| panic!("mini-init died: {status:?}"))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("stderr")).unwrap()
    }
}

impl Drop for MiniInit {
    fn drop(&mut self) {
        if !self.own_pid_namespace
            && let Some(child) = read_pid(&self.path("child.pid"))
        {
            let _ = killpg(child, Signal::SIGKILL);
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn wait_for_file(path: &Path) {
    eventually_blocking(&format!("{} to exist", path.display()), || {
        path.exists().then_some(())
    });
}

fn wait_for_line(path: &Path, line: &str) {
    eventually_blocking(&format!("{line:?} in {}", path.display()), || {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().any(|l| l == line).then_some(())
    });
}

#[test]
fn exit_code_of_the_command_is_passed_through() {
    let mut init = MiniInit::start(&[], "exit 3");
    assert_eq!(init.exit_code(), 3);
}

#[test]
fn command_killed_by_a_signal_exits_128_plus_signal() {
    let mut init = MiniInit::start(&[], "kill -KILL $$");
    assert_eq!(init.exit_code(), 137);
}

#[test]
fn missing_program_exits_127_with_its_name() {
    let mut process = Command::new(example_bin("mini-init"))
        .arg("/nonexistent/daemon")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = process.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut process.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(127));
    assert!(stderr.contains("/nonexistent/daemon"), "{stderr}");
}

#[test]
fn non_executable_program_exits_126() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-executable");
    std::fs::write(&file, "#!/bin/sh\n").unwrap();
    let status = Command::new(example_bin("mini-init"))
        .arg(&file)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(126));
}

#[test]
fn hup_usr1_usr2_quit_winch_are_forwarded_to_the_child() {
    let script = "for s in HUP USR1 USR2 QUIT WINCH; do trap \"echo $s >> $D/got\" $s; done; \
                  touch $D/ready; while :; do sleep 0.05; done";
    let mut init = MiniInit::start(&[], script);
    wait_for_file(&init.path("ready"));
    for (sig, name) in [
        (Signal::SIGHUP, "HUP"),
        (Signal::SIGUSR1, "USR1"),
        (Signal::SIGUSR2, "USR2"),
        (Signal::SIGQUIT, "QUIT"),
        (Signal::SIGWINCH, "WINCH"),
    ] {
        init.signal(sig);
        wait_for_line(&init.path("got"), name);
    }
    init.signal(Signal::SIGTERM);
    assert_eq!(init.exit_code(), 143);
}

#[test]
fn forwarded_signals_reach_the_child_but_not_its_process_group() {
    // A second process in the child's group traps USR1 and USR2. The child, on USR1, sends it
    // USR2. Had our USR1 gone to the whole group, the member would have had USR1 pending
    // before that USR2, and sh runs pending traps in signal-number order: "bg USR1" would show.
    let script = "sh -c 'trap \"echo bg USR1 >> $D/got\" USR1; trap \"echo bg USR2 >> $D/got\" USR2; \
                  touch $D/bgready; while :; do sleep 0.05; done' & bg=$!; \
                  while [ ! -e $D/bgready ]; do sleep 0.01; done; \
                  trap 'echo child USR1 >> $D/got; kill -USR2 $bg' USR1; \
                  touch $D/ready; while :; do sleep 0.05; done";
    let mut init = MiniInit::start(&[], script);
    wait_for_file(&init.path("ready"));
    init.signal(Signal::SIGUSR1);
    wait_for_line(&init.path("got"), "bg USR2");
    let got = std::fs::read_to_string(init.path("got")).unwrap();
    assert_eq!(got, "child USR1\nbg USR2\n");
    init.signal(Signal::SIGTERM);
    assert_eq!(init.exit_code(), 143);
}

#[test]
fn term_stops_the_child_and_exits_with_its_status() {
    let mut init = MiniInit::start(&[], "touch $D/ready; exec sleep 30");
    wait_for_file(&init.path("ready"));
    let started = Instant::now();
    init.signal(Signal::SIGTERM);
    assert_eq!(init.exit_code(), 143);
    assert!(started.elapsed() < DEADLINE);
}

#[test]
fn int_is_not_forwarded_but_stops_the_child_with_term() {
    let script = "trap 'echo INT >> $D/got' INT; trap 'echo TERM >> $D/got; exit 0' TERM; \
                  touch $D/ready; while :; do sleep 0.05; done";
    let mut init = MiniInit::start(&[], script);
    wait_for_file(&init.path("ready"));
    init.signal(Signal::SIGINT);
    assert_eq!(init.exit_code(), 0);
    assert_eq!(std::fs::read_to_string(init.path("got")).unwrap(), "TERM\n");
}

#[test]
fn child_ignoring_term_is_killed_after_the_stop_timeout() {
    let timeout = Duration::from_millis(300);
    let mut init = MiniInit::start(
        &["--stop-timeout-ms", "300"],
        "trap '' TERM; touch $D/ready; exec sleep 30",
    );
    wait_for_file(&init.path("ready"));
    let started = Instant::now();
    init.signal(Signal::SIGTERM);
    assert_eq!(init.exit_code(), 137);
    assert!(
        started.elapsed() >= timeout,
        "killed before the stop timeout"
    );
    assert!(init.stderr().contains("killed"), "{}", init.stderr());
}

#[test]
fn second_term_skips_the_stop_timeout() {
    let script = "trap 'echo TERM >> $D/got' TERM; touch $D/ready; while :; do sleep 0.05; done";
    let mut init = MiniInit::start(&["--stop-timeout-ms", "60000"], script);
    wait_for_file(&init.path("ready"));
    let started = Instant::now();
    init.signal(Signal::SIGTERM);
    // The child has seen the stop signal: the first request is being handled.
    wait_for_line(&init.path("got"), "TERM");
    init.signal(Signal::SIGTERM);
    assert_eq!(init.exit_code(), 137);
    assert!(started.elapsed() < DEADLINE, "the second TERM did not skip");
}

#[test]
fn as_pid1_leftover_processes_get_term_on_exit() {
    let script = "(trap 'echo swept > $D/orphan; exit 0' TERM; touch $D/ready; \
                  while :; do sleep 0.05; done) & \
                  while [ ! -e $D/ready ]; do sleep 0.01; done; exit 5";
    let mut init = MiniInit::start_as_pid1(&["--sweep-grace-ms", "60000"], script);
    assert_eq!(init.exit_code(), 5);
    assert_eq!(
        std::fs::read_to_string(init.path("orphan")).unwrap(),
        "swept\n"
    );
    assert!(!init.stderr().contains("killed"), "{}", init.stderr());
}

#[test]
fn as_pid1_leftovers_ignoring_term_are_killed_after_the_grace() {
    let script = "(trap '' TERM; touch $D/ready; exec sleep 30) & \
                  while [ ! -e $D/ready ]; do sleep 0.01; done; exit 0";
    let grace = Duration::from_millis(500);
    let started = Instant::now();
    let mut init = MiniInit::start_as_pid1(&["--sweep-grace-ms", "500"], script);
    assert_eq!(init.exit_code(), 0);
    assert!(started.elapsed() >= grace, "killed before the grace period");
    assert!(init.stderr().contains("were killed"), "{}", init.stderr());
}
