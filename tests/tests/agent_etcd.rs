//! The agent through etcd outages: the daemon starts and keeps running, liveness stays OK, and
//! the registration comes back by itself. Real etcd stopped and restarted on the same ports.

mod agent_support;

use std::time::{Duration, Instant};

use agent_support::{AgentProc, DEADLINE, alive, record, sh, strs};
use peerkeep_tests::{Etcd, eventually};

#[test]
fn etcd_down_at_start_the_daemon_still_runs_and_registration_follows() {
    let mut etcd = Etcd::start();
    etcd.stop();
    let daemon = sh("exec sleep 600");
    let agent = AgentProc::start(&etcd.endpoint(), "n-early", &[], &strs(&daemon));

    let pid = eventually(DEADLINE, "daemon started without etcd", || {
        agent.daemon_pid()
    });
    assert!(alive(pid));
    eventually(DEADLINE, "alive without etcd", || {
        (agent.health_cmd("live").0 == 0).then_some(())
    });
    let status = agent.status().expect("/status");
    assert_ne!(status["registration"], "registered", "{status}");

    etcd.start_again();
    let rec = eventually(DEADLINE, "registered once etcd is up", || {
        record(&etcd, "n-early")
    });
    assert_eq!(rec["state"], "ready");
    assert_eq!(agent.daemon_pid(), Some(pid), "daemon restarted");
    assert!(alive(pid));
}

#[test]
fn etcd_stopped_for_three_ttls_leaves_the_daemon_alone_and_registration_returns() {
    let mut etcd = Etcd::start();
    let daemon = sh("exec sleep 600");
    let agent = AgentProc::start(&etcd.endpoint(), "n-outage", &[], &strs(&daemon));
    let before = eventually(DEADLINE, "registered", || record(&etcd, "n-outage"));
    let pid = agent.daemon_pid().expect("daemon pid");

    etcd.stop();
    // The outage is the scenario: three lease TTLs (2 s each) without etcd.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(6) {
        assert_eq!(
            agent.health_cmd("live").0,
            0,
            "liveness failed during the outage"
        );
        assert!(alive(pid), "daemon died during the outage");
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = agent.status().expect("/status");
    assert_ne!(
        status["registration"], "registered",
        "outage unnoticed: {status}"
    );
    assert!(
        status["view"]["stale_secs"]
            .as_f64()
            .is_some_and(|s| s > 1.0),
        "view not reported stale: {status}"
    );
    let (_, metrics) = agent.get("/metrics").expect("/metrics");
    assert!(
        !metrics.contains("peerkeep_agent_etcd_errors_total 0\n"),
        "etcd errors not counted:\n{metrics}"
    );

    etcd.start_again();
    let after = eventually(DEADLINE, "registration back", || record(&etcd, "n-outage"));
    assert_eq!(after["instance"], before["instance"], "same agent instance");
    assert_eq!(after["slot"], before["slot"], "slot kept");
    eventually(DEADLINE, "/status says registered", || {
        agent
            .status()
            .filter(|s| s["registration"] == "registered")
            .map(|_| ())
    });
    assert_eq!(agent.daemon_pid(), Some(pid));
    assert!(alive(pid), "daemon touched");
}

#[test]
fn shutdown_with_a_hung_etcd_still_stops_the_daemon_in_bounded_time() {
    let etcd = Etcd::start();
    let daemon = sh("exec sleep 600");
    let mut agent = AgentProc::start(
        &etcd.endpoint(),
        "n-hung",
        &["--drain-delay", "500ms"],
        &strs(&daemon),
    );
    eventually(DEADLINE, "registered", || record(&etcd, "n-hung"));
    let pid = agent.daemon_pid().expect("daemon pid");

    etcd.pause();
    let started = Instant::now();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let status = agent.wait_exit(DEADLINE);
    let took = started.elapsed();
    etcd.resume();
    assert_eq!(status.code(), Some(143), "log:\n{}", agent.log());
    assert!(!alive(pid), "daemon left running");
    // Draining confirmation (≤ 1 s) + drain delay + revoke (≤ 2 s) + the stop itself.
    assert!(took < Duration::from_secs(6), "shutdown took {took:?}");
}

#[test]
fn a_node_that_never_reached_etcd_skips_the_drain_delay() {
    let mut etcd = Etcd::start();
    etcd.stop();
    let daemon = sh("exec sleep 600");
    let mut agent = AgentProc::start(
        &etcd.endpoint(),
        "n-never",
        &["--drain-delay", "30s"],
        &strs(&daemon),
    );
    eventually(DEADLINE, "daemon started", || agent.daemon_pid());
    eventually(DEADLINE, "registration attempted", || {
        agent
            .status()
            .filter(|s| s["registration"] == "unregistered" && s["lease_id"].is_null())
            .filter(|s| s["daemon"]["answered"] == true)
            .map(|_| ())
    });
    let started = Instant::now();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let status = agent.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(143), "log:\n{}", agent.log());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for a drain nobody needed: {:?}",
        started.elapsed()
    );
}

/// Regression: with etcd down, shutdown waited up to the drain delay for etcd to confirm
/// `draining`, then the whole drain delay again, then the revoke bound: 4 + 4 + 2 s here (and
/// 2 + 2 + 2 + 10 = 16 s with compose's settings, beyond its 15 s grace period). The delay now
/// runs from the draining request, with the confirmation awaited inside it.
#[test]
fn shutdown_with_etcd_down_waits_the_drain_delay_once_not_twice() {
    let mut etcd = Etcd::start();
    let daemon = sh("exec sleep 600");
    let mut agent = AgentProc::start(
        &etcd.endpoint(),
        "n-drain-once",
        &["--drain-delay", "4s"],
        &strs(&daemon),
    );
    eventually(DEADLINE, "registered", || record(&etcd, "n-drain-once"));
    let pid = agent.daemon_pid().expect("daemon pid");

    etcd.stop();
    let started = Instant::now();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let status = agent.wait_exit(DEADLINE);
    let took = started.elapsed();
    assert_eq!(status.code(), Some(143), "log:\n{}", agent.log());
    assert!(!alive(pid), "daemon left running");
    assert!(
        took >= Duration::from_secs(4),
        "drain delay not honoured: {took:?}"
    );
    // Drain delay (4 s) + revoke bound (2 s) + a prompt stop, with a margin; the old sequence
    // needed at least 8 s.
    assert!(
        took < Duration::from_millis(7500),
        "shutdown took {took:?}; log:\n{}",
        agent.log()
    );
}
