//! The agent as PID 1 (in a new pid namespace, as in a container without `--init`): it
//! handles TERM, and after the daemon has stopped it sweeps what is left — with TERM first, so
//! leftovers get to clean up, rather than the kernel's SIGKILL when PID 1 exits. Needs root
//! (CAP_SYS_ADMIN) for `unshare --pid`.

mod agent_support;

use agent_support::{AgentProc, DEADLINE, record, sh, strs, wait_file};
use nix::sys::signal::Signal;
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
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid1), Signal::SIGTERM).expect("TERM");
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
