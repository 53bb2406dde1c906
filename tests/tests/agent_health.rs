//! The agent's health server and `peerkeep-agent health`: exit codes while starting, ready and
//! draining; the operator's drain key round trip; `/status` and `/metrics` content.
//!
//! The daemon is `devnode` (its p2p port is what `--adapter none` probes), started by a shell
//! only once the test creates a `go` file, so the "daemon not answering yet" phase is
//! observable. Build first: `cargo build -p peerkeep-agent -p peerkeep-tests --bins`.

mod agent_support;

use std::process::Command;

use agent_support::{AgentProc, DEADLINE, alive, record_state, strs};
use nix::sys::signal::Signal;
use peerkeep_tests::proc::{free_port, workspace_bin};
use peerkeep_tests::{Etcd, eventually};

/// An agent whose daemon is devnode, held back until `go` exists.
fn agent_with_devnode(etcd: &Etcd, id: &str, extra: &[&str]) -> (AgentProc, u16) {
    let dir = tempfile::Builder::new()
        .prefix("peerkeep-agent-test-")
        .tempdir()
        .expect("temp dir");
    std::fs::write(dir.path().join("token"), "test-token\n").expect("token file");
    let p2p = free_port();
    let api = free_port();
    let devnode = workspace_bin("devnode");
    let daemon = agent_support::sh(&format!(
        "while [ ! -e go ]; do sleep 0.02; done; exec {} --id {id} --p2p-listen 127.0.0.1:{p2p} \
         --api-listen 127.0.0.1:{api} --api-token-file token",
        devnode.display()
    ));
    let p2p_flag = format!("p2p=:{p2p}");
    let mut args = vec!["--endpoint", p2p_flag.as_str()];
    args.extend_from_slice(extra);
    let agent = AgentProc::start_in(dir, &etcd.endpoint(), id, &args, &strs(&daemon));
    (agent, p2p)
}

fn health_codes(agent: &AgentProc) -> (i32, i32) {
    (agent.health_cmd("live").0, agent.health_cmd("ready").0)
}

fn peerkeep(etcd: &Etcd, args: &[&str]) {
    let out = Command::new(workspace_bin("peerkeep"))
        .args(args)
        .args(["--etcd-endpoints", &etcd.endpoint()])
        .output()
        .expect("run peerkeep (cargo build -p peerkeep-registry --bins)");
    assert!(out.status.success(), "peerkeep {args:?}: {out:?}");
}

#[test]
fn health_exit_codes_while_starting_ready_and_draining() {
    let etcd = Etcd::start();
    let (mut agent, _) = agent_with_devnode(&etcd, "n-health", &["--drain-delay", "30s"]);

    // Starting: the daemon runs but does not answer yet. Alive, not ready, not registered.
    eventually(DEADLINE, "health server up", || {
        agent.get("/livez").map(|_| ())
    });
    eventually(DEADLINE, "daemon started", || agent.daemon_pid());
    let (live, ready) = health_codes(&agent);
    assert_eq!((live, ready), (0, 1), "starting");
    let (_, line) = agent.health_cmd("ready");
    assert_eq!(line.lines().count(), 1, "one line of output: {line:?}");
    assert!(
        record_state(&etcd, "n-health").is_none(),
        "registered before answering"
    );

    // Ready: the daemon answers; a lone node needs no peers.
    std::fs::write(agent.path("go"), "").expect("touch go");
    eventually(DEADLINE, "ready probe passes", || {
        (health_codes(&agent) == (0, 0)).then_some(())
    });
    eventually(DEADLINE, "record says ready", || {
        (record_state(&etcd, "n-health").as_deref() == Some("ready")).then_some(())
    });

    // Draining (shutdown, held by a 30 s drain delay): still alive, no longer ready.
    agent.signal(Signal::SIGTERM);
    eventually(DEADLINE, "record says draining", || {
        (record_state(&etcd, "n-health").as_deref() == Some("draining")).then_some(())
    });
    assert_eq!(health_codes(&agent), (0, 1), "draining");

    agent.signal(Signal::SIGTERM);
    agent.wait_exit(DEADLINE);
    assert_eq!(health_codes(&agent), (1, 1), "agent gone");
}

#[test]
fn drain_and_undrain_round_trip_leaves_the_daemon_untouched() {
    let etcd = Etcd::start();
    let (mut agent, _) = agent_with_devnode(&etcd, "n-op", &[]);
    std::fs::write(agent.path("go"), "").expect("touch go");
    eventually(DEADLINE, "record says ready", || {
        (record_state(&etcd, "n-op").as_deref() == Some("ready")).then_some(())
    });
    let daemon = agent.daemon_pid().expect("daemon pid");

    peerkeep(&etcd, &["drain", "n-op"]);
    eventually(DEADLINE, "record says draining", || {
        (record_state(&etcd, "n-op").as_deref() == Some("draining")).then_some(())
    });
    assert_eq!(health_codes(&agent), (0, 1), "drained: alive, not ready");
    let status = agent.status().expect("/status");
    assert_eq!(status["drain_requested"], true);

    peerkeep(&etcd, &["undrain", "n-op"]);
    eventually(DEADLINE, "record says ready again", || {
        (record_state(&etcd, "n-op").as_deref() == Some("ready")).then_some(())
    });
    assert_eq!(health_codes(&agent), (0, 0));
    assert!(alive(daemon), "the daemon was stopped");
    assert_eq!(agent.daemon_pid(), Some(daemon), "the daemon was restarted");
    assert!(agent.running());
}

#[test]
fn status_and_metrics_show_what_operators_need() {
    let etcd = Etcd::start();
    let (agent, p2p) = agent_with_devnode(&etcd, "n-metrics", &["--label", "zone=a"]);
    std::fs::write(agent.path("go"), "").expect("touch go");
    eventually(DEADLINE, "record says ready", || {
        (record_state(&etcd, "n-metrics").as_deref() == Some("ready")).then_some(())
    });

    let status = eventually(DEADLINE, "registered in /status", || {
        agent.status().filter(|s| s["registration"] == "registered")
    });
    assert_eq!(status["node_id"], "n-metrics");
    assert_eq!(status["state"], "ready");
    assert_eq!(status["lifecycle"], "running");
    assert_eq!(status["private"]["addr"], "127.0.0.1");
    assert_eq!(status["private"]["source"], "ip:127.0.0.1");
    assert_eq!(status["endpoints"]["p2p"], format!("127.0.0.1:{p2p}"));
    assert!(status["lease_id"].is_i64(), "{status}");

    let (code, metrics) = agent.get("/metrics").expect("/metrics answers");
    assert_eq!(code, 200);
    for name in [
        "peerkeep_agent_registration_state{state=\"registered\"} 1",
        "peerkeep_agent_node_state{state=\"ready\"} 1",
        "peerkeep_agent_lease_regrants_total 0",
        "peerkeep_agent_etcd_errors_total",
        "peerkeep_agent_view_age_seconds 0",
        "peerkeep_agent_peers",
        "peerkeep_agent_peer_connects_total",
        "peerkeep_agent_peer_disconnects_total",
        "peerkeep_agent_daemon_up 1",
        "peerkeep_agent_daemon_exits_total 0",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
}

#[test]
fn health_defaults_to_peerkeep_health_listen_with_unspecified_mapped_to_loopback() {
    let etcd = Etcd::start();
    let daemon = agent_support::sh("exec sleep 600");
    let agent = AgentProc::start(&etcd.endpoint(), "n-env-addr", &[], &strs(&daemon));
    eventually(DEADLINE, "health server up", || {
        agent.get("/livez").map(|_| ())
    });
    let port = agent.health.port();
    let out = Command::new(workspace_bin("peerkeep-agent"))
        .arg("health")
        .env("PEERKEEP_HEALTH_LISTEN", format!("0.0.0.0:{port}"))
        .output()
        .expect("run health");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("/livez 200"), "{text}");
}

#[test]
fn health_never_exits_with_docker_reserved_code_2() {
    let out = Command::new(workspace_bin("peerkeep-agent"))
        .args(["health", "--probe", "bogus"])
        .output()
        .expect("run health");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn liveness_stays_ok_through_a_drain_delay_longer_than_the_heartbeat_limit() {
    let etcd = Etcd::start();
    let daemon = agent_support::sh("exec sleep 600");
    let mut agent = AgentProc::start(
        &etcd.endpoint(),
        "n-long-drain",
        &["--drain-delay", "60s"],
        &strs(&daemon),
    );
    eventually(DEADLINE, "registered", || {
        record_state(&etcd, "n-long-drain").map(|_| ())
    });
    agent.signal(Signal::SIGTERM);
    eventually(DEADLINE, "record says draining", || {
        (record_state(&etcd, "n-long-drain").as_deref() == Some("draining")).then_some(())
    });
    // The agent loop's liveness limit is 10 s; the drain delay outlasts it.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(12);
    while std::time::Instant::now() < until {
        assert_eq!(
            agent.health_cmd("live").0,
            0,
            "liveness failed while draining"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    agent.signal(Signal::SIGTERM);
    agent.wait_exit(DEADLINE);
}
