//! The agent as PID 1 (in a new pid namespace, as in a container without `--init`): it
//! handles TERM, and after the daemon has stopped it sweeps what is left — with TERM first, so
//! leftovers get to clean up, rather than the kernel's SIGKILL when PID 1 exits. Needs root
//! (CAP_SYS_ADMIN) for `unshare --pid`. And the PID 1 basics behave exactly as under Debian's
//! `tini` (timings are in `scripts/bench-agent`).

mod agent_support;

use std::process::{Command, Stdio};

use agent_support::{AgentProc, DEADLINE, record, sh, strs, wait_file};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use peerkeep_tests::proc::die_with_test;
use peerkeep_tests::{Etcd, eventually};

#[test]
fn as_pid1_it_stops_the_daemon_then_sweeps_leftovers_with_term() {
    let probe = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .expect("unshare (util-linux) is installed");
    assert!(
        probe.success(),
        "this test needs a pid namespace: run it as root (CAP_SYS_ADMIN)"
    );
    let etcd = Etcd::start();
    let dir = tempfile::Builder::new()
        .prefix("peerkeep-agent-test-")
        .tempdir()
        .expect("temp dir");
    // A leftover in its own session survives the stop signal to the daemon's group; it notes
    // the TERM of the sweep.
    let daemon = sh(
        "setsid sh -c 'trap \"touch swept; exit 0\" TERM; touch leftover_up; \
         while :; do sleep 0.05; done' & exec sleep 600",
    );
    let mut agent = AgentProc::start_wrapped(
        &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
        dir,
        &etcd.endpoint(),
        "n-pid1",
        &["--drain-delay", "0s"],
        &strs(&daemon),
    );
    eventually(DEADLINE, "registered", || record(&etcd, "n-pid1"));
    wait_file(&agent.path("leftover_up"), "leftover started");
    assert!(
        agent.log().contains("pid1=true"),
        "not PID 1:\n{}",
        agent.log()
    );

    // unshare does not forward signals: send TERM to the agent itself (its child).
    let pid1 = child_of(agent.pid()).expect("unshare's child is the agent");
    kill(Pid::from_raw(pid1), Signal::SIGTERM).expect("TERM");
    let status = agent.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(143), "log:\n{}", agent.log());
    assert!(
        agent.path("swept").exists(),
        "the leftover never got the sweep's TERM; log:\n{}",
        agent.log()
    );
    assert!(record(&etcd, "n-pid1").is_none(), "key left after exit");
}

/// The only child of `pid`, as seen from this pid namespace.
fn child_of(pid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// One PID 1 behaviour under `tini` and under the agent: `(tini, agent)` exit codes and
/// whether a marker file appeared.
fn under_both(etcd: &Etcd, script: &str, signal: Option<Signal>) -> [(Option<i32>, bool); 2] {
    let tini = {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new("tini");
        cmd.args(["-s", "--", "/bin/sh", "-c", script])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_test(&mut cmd);
        let mut child = cmd.spawn().expect("tini (Debian package tini)");
        if let Some(sig) = signal {
            wait_file(&dir.path().join("ready"), "script ready under tini");
            let _ = kill(Pid::from_raw(child.id() as i32), sig);
        }
        let status = child.wait().expect("wait tini");
        (status.code(), dir.path().join("marker").exists())
    };
    let agent = {
        let mut a = AgentProc::start(
            &etcd.endpoint(),
            "pid1-cmp",
            &["--drain-delay", "0s", "--stop-timeout", "2s"],
            &["/bin/sh", "-c", script],
        );
        if let Some(sig) = signal {
            wait_file(&a.path("ready"), "script ready under the agent");
            a.signal(sig);
        }
        let status = a.wait_exit(DEADLINE);
        (status.code(), a.path("marker").exists())
    };
    [tini, agent]
}

#[test]
fn pid1_basics_match_tini() {
    let etcd = Etcd::start();
    let cases: &[(&str, &str, Option<Signal>)] = &[
        ("exit code passed through", "exit 3", None),
        (
            "killed by a signal: 128+n",
            "touch ready; kill -KILL $$",
            None,
        ),
        (
            "TERM reaches the child",
            "trap 'touch marker; exit 0' TERM; touch ready; while :; do sleep 0.05; done",
            Some(Signal::SIGTERM),
        ),
        (
            "USR1 forwarded",
            "trap 'touch marker; exit 0' USR1; touch ready; while :; do sleep 0.05; done",
            Some(Signal::SIGUSR1),
        ),
    ];
    println!("\n| behaviour | tini | peerkeep-agent |\n|---|---|---|");
    for (name, script, sig) in cases {
        let [tini, agent] = under_both(&etcd, script, *sig);
        println!("| {name} | {tini:?} | {agent:?} |");
        assert_eq!(tini, agent, "{name}: tini {tini:?}, agent {agent:?}");
    }
}
