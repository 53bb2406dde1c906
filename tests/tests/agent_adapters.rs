//! The agent with real node adapters: `devnode` speaking Wavelet's API (`--adapter wavelet`),
//! and a fake geth for the identity label. Readiness follows the daemon's sync state and peer
//! count as DESIGN.md defines them.
//! Build first: `cargo build -p peerkeep-agent -p peerkeep-tests --bins`.

mod agent_support;

use std::net::SocketAddr;

use agent_support::{AgentProc, DEADLINE, http_post, record_state, sh, strs};
use peerkeep_tests::proc::{free_port, workspace_bin};
use peerkeep_tests::{Etcd, eventually};

const TOKEN: &str = "test-token";

struct Node {
    agent: AgentProc,
    p2p: SocketAddr,
    api: SocketAddr,
}

/// An agent running devnode (with `devnode_flags`) through the Wavelet adapter.
fn node(etcd: &Etcd, id: &str, agent_flags: &[&str], devnode_flags: &str) -> Node {
    let dir = tempfile::Builder::new()
        .prefix("peerkeep-agent-test-")
        .tempdir()
        .expect("temp dir");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token file");
    let p2p = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let daemon = sh(&format!(
        "exec {} --id {id} --p2p-listen {p2p} --api-listen {api} --api-token-file token {devnode_flags}",
        workspace_bin("devnode").display()
    ));
    let p2p_flag = format!("p2p=:{}", p2p.port());
    let api_url = format!("http://{api}");
    let mut flags = vec![
        "--endpoint",
        p2p_flag.as_str(),
        "--adapter",
        "wavelet",
        "--node-api",
        api_url.as_str(),
        "--node-api-token-file",
        "token",
    ];
    flags.extend_from_slice(agent_flags);
    let agent = AgentProc::start_in(dir, &etcd.endpoint(), id, &flags, &strs(&daemon));
    Node { agent, p2p, api }
}

fn state_is(etcd: &Etcd, id: &str, want: &str) -> Option<()> {
    (record_state(etcd, id).as_deref() == Some(want)).then_some(())
}

#[test]
fn lone_node_is_ready_and_status_shows_what_the_adapter_reports() {
    let etcd = Etcd::start();
    let n = node(
        &etcd,
        "w-lone",
        &["--max-lag", "30s"],
        "--produce-every 200ms",
    );
    eventually(DEADLINE, "record says ready", || {
        state_is(&etcd, "w-lone", "ready")
    });
    let status = eventually(DEADLINE, "/status with peers", || {
        n.agent.status().filter(|s| s["peers"].is_u64())
    });
    assert_eq!(status["adapter"], "wavelet");
    assert_eq!(status["peers"], 0);
    assert_eq!(status["synced"], true);
    assert!(
        status["lag_secs"].as_f64().is_some_and(|l| l < 30.0),
        "{status}"
    );
    assert_eq!(n.agent.health_cmd("ready").0, 0);
}

#[test]
fn a_head_older_than_max_lag_keeps_the_node_out_of_ready() {
    let etcd = Etcd::start();
    let n = node(
        &etcd,
        "w-frozen",
        &["--max-lag", "1s"],
        "--produce-every 200ms --frozen-head",
    );
    // It answers, so it registers, but as starting: its best block only gets older.
    eventually(DEADLINE, "registered as starting", || {
        state_is(&etcd, "w-frozen", "starting")
    });
    // Once the head is clearly older than --max-lag, the node must still not be ready.
    eventually(DEADLINE, "lag beyond --max-lag observed", || {
        n.agent
            .status()
            .filter(|s| s["lag_secs"].as_f64().is_some_and(|l| l > 1.5))
            .map(|_| ())
    });
    let (code, line) = n.agent.health_cmd("ready");
    assert_eq!(code, 1, "ready with a frozen head: {line}");
    assert_eq!(record_state(&etcd, "w-frozen").as_deref(), Some("starting"));
    assert_eq!(
        n.agent.health_cmd("live").0,
        0,
        "lag must not fail liveness"
    );
}

#[test]
fn two_nodes_are_ready_once_peered_min_k_other_live() {
    let etcd = Etcd::start();
    let a = node(&etcd, "w-a", &[], "--produce-every 200ms");
    eventually(DEADLINE, "a ready", || state_is(&etcd, "w-a", "ready"));
    let b = node(&etcd, "w-b", &[], "");
    eventually(DEADLINE, "b registered", || record_state(&etcd, "w-b"));

    // K = 3 but only one other live node: one peer each is enough.
    let body = format!("{{\"address\":\"{}\"}}", a.p2p);
    let (code, answer) = http_post(b.api, "/node/connect", TOKEN, &body).expect("devnode API");
    assert_eq!(code, 200, "{answer}");
    eventually(DEADLINE, "b ready", || state_is(&etcd, "w-b", "ready"));
    eventually(DEADLINE, "a still ready", || {
        state_is(&etcd, "w-a", "ready")
    });
    for n in [&a, &b] {
        let s = eventually(DEADLINE, "peer counted", || {
            n.agent
                .status()
                .filter(|s| s["peers"].as_u64().is_some_and(|p| p >= 1))
        });
        assert_eq!(s["view"]["other_live"], 1, "{s}");
    }
}

#[test]
fn the_daemons_own_identity_is_published_as_a_record_label() {
    use peerkeep_tests::fakes::geth::FakeGeth;
    let etcd = Etcd::start();
    let enode = "ab".repeat(64);
    let geth = FakeGeth::start(&enode);
    let daemon = sh("exec sleep 600");
    let url = geth.server.url();
    let mut agent = AgentProc::start(
        &etcd.endpoint(),
        "g-ident",
        &["--adapter", "geth", "--node-api", &url],
        &strs(&daemon),
    );
    let rec = eventually(DEADLINE, "registered", || {
        agent_support::record(&etcd, "g-ident")
    });
    assert_eq!(rec["labels"]["identity"], enode.as_str(), "{rec}");
    assert!(agent.running());
}

/// Regression: the daemon's identity label was added after the size check of the other
/// labels; a record it pushed over 4 KiB failed the registration after the daemon had started.
/// Now the identity is left out (logged) and the node registers.
#[test]
fn an_identity_that_would_overflow_the_record_is_left_out_and_the_node_still_registers() {
    use peerkeep_tests::fakes::geth::FakeGeth;
    let etcd = Etcd::start();
    let enode = "ab".repeat(64);
    let geth = FakeGeth::start(&enode);
    let daemon = sh("exec sleep 600");
    let url = geth.server.url();
    // About 4000 bytes of record without the identity, about 4140 with it.
    let label = format!("big={}", "a".repeat(3800));
    let mut agent = AgentProc::start(
        &etcd.endpoint(),
        "g-full",
        &["--adapter", "geth", "--node-api", &url, "--label", &label],
        &strs(&daemon),
    );
    let rec = eventually(DEADLINE, "registered", || {
        agent_support::record(&etcd, "g-full")
    });
    assert!(rec["labels"]["identity"].is_null(), "{rec}");
    assert_eq!(rec["labels"]["big"].as_str().map(str::len), Some(3800));
    assert!(agent.log().contains("identity left out"), "{}", agent.log());
    assert!(agent.running());
}

#[test]
fn a_hung_daemon_leaves_ready_after_repeated_failed_probes_and_comes_back() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let etcd = Etcd::start();
    let n = node(
        &etcd,
        "w-hung",
        &["--node-api-timeout", "300ms"],
        "--produce-every 200ms",
    );
    eventually(DEADLINE, "ready", || state_is(&etcd, "w-hung", "ready"));
    let pid = Pid::from_raw(n.agent.daemon_pid().expect("daemon pid"));

    kill(pid, Signal::SIGSTOP).expect("SIGSTOP devnode");
    let stopped = std::time::Instant::now();
    eventually(DEADLINE, "/status shows the failed probe", || {
        n.agent
            .status()
            .filter(|s| s["daemon"]["reachable"] == false)
            .map(|_| ())
    });
    eventually(DEADLINE, "out of ready", || {
        state_is(&etcd, "w-hung", "starting")
    });
    let _ = kill(pid, Signal::SIGCONT);
    assert!(
        stopped.elapsed() >= std::time::Duration::from_secs(2),
        "left ready on the first failed probe"
    );
    assert_eq!(
        n.agent.health_cmd("live").0,
        0,
        "a short hang must not fail liveness"
    );
    eventually(DEADLINE, "ready again", || {
        state_is(&etcd, "w-hung", "ready")
    });
}
