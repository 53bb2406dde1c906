//! devnode, the reference P2P daemon: peer links, gossip, the Wavelet API, and each switch.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use peerkeep_tests::devnode::DevNode;
use peerkeep_tests::devnode::fixture::http;
use peerkeep_tests::{TcpProxy, eventually};

const DEADLINE: Duration = Duration::from_secs(10);

fn connect_ok(from: &DevNode, to: &DevNode) {
    let (status, body) = from.connect(to.p2p());
    assert_eq!(status, 200, "connect {} -> {}: {body}", from.id(), to.id());
}

fn wait_peers(node: &DevNode, want: &[SocketAddr]) {
    let mut want = want.to_vec();
    want.sort();
    eventually(
        DEADLINE,
        &format!("{} lists peers {want:?}", node.id()),
        || {
            let mut got = node.peer_addrs()?;
            got.sort();
            (got == want).then_some(())
        },
    );
}

#[test]
fn two_nodes_connect_gossip_and_follow_the_producer() {
    let producer = DevNode::start("prod", &["--produce-every", "100ms"]);
    let follower = DevNode::start("follow", &[]);
    connect_ok(&follower, &producer);

    let ledger = eventually(DEADLINE, "producer lists the follower", || {
        let l = producer.ledger()?;
        l["peers"].is_array().then_some(l)
    });
    let p = &ledger["peers"][0];
    assert_eq!(p["address"], follower.p2p().to_string());
    assert_eq!(p["id"], "follow");
    assert_eq!(p["direction"], "inbound");
    assert_eq!(ledger["id"], "prod");
    assert_eq!(ledger["address"], producer.p2p().to_string());

    let fl = follower.ledger().expect("follower ledger");
    assert_eq!(fl["peers"][0]["id"], "prod");
    assert_eq!(fl["peers"][0]["direction"], "outbound");

    let l = eventually(DEADLINE, "follower reaches height 5", || {
        let l = follower.ledger()?;
        (l["block"]["height"].as_u64()? >= 5).then_some(l)
    });
    let time_ms = l["block"]["timestamp_ms"].as_u64().expect("timestamp_ms");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    assert!(
        now_ms.saturating_sub(time_ms) < 2_000,
        "followed block carries the producer's recent time (lag {} ms)",
        now_ms.saturating_sub(time_ms)
    );
}

#[test]
fn five_nodes_in_a_line_all_follow_the_producer() {
    let mut nodes = vec![DevNode::start("n0", &["--produce-every", "100ms"])];
    for i in 1..5 {
        nodes.push(DevNode::start(&format!("n{i}"), &[]));
    }
    for i in 1..5 {
        connect_ok(&nodes[i], &nodes[i - 1]);
    }
    wait_peers(&nodes[2], &[nodes[1].p2p(), nodes[3].p2p()]);
    for n in &nodes {
        eventually(DEADLINE, &format!("{} reaches height 5", n.id()), || {
            (n.height()? >= 5).then_some(())
        });
    }
}

#[test]
fn killed_peer_leaves_ledger_within_a_second() {
    let a = DevNode::start("a", &[]);
    let mut b = DevNode::start("b", &[]);
    connect_ok(&b, &a);
    wait_peers(&a, &[b.p2p()]);
    let killed = Instant::now();
    b.kill();
    eventually(Duration::from_secs(5), "a's peers empty again", || {
        let l = a.ledger()?;
        l["peers"].is_null().then_some(())
    });
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(1), "peer left after {took:?}");
}

#[test]
fn half_open_peer_is_dropped_by_the_ping_timeout() {
    // SIGSTOP keeps the socket open but silent: only the ping timeout can notice.
    let a = DevNode::start("a", &[]);
    let b = DevNode::start("b", &[]);
    connect_ok(&b, &a);
    wait_peers(&a, &[b.p2p()]);
    let pid = nix::unistd::Pid::from_raw(b.pid().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("stop b");
    let stopped = Instant::now();
    eventually(Duration::from_secs(5), "a drops the silent peer", || {
        a.ledger()?["peers"].is_null().then_some(())
    });
    let took = stopped.elapsed();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("resume b");
    assert!(
        took < Duration::from_secs(2),
        "silent peer dropped after {took:?}"
    );
}

#[test]
fn api_speaks_wavelets_error_shapes() {
    let a = DevNode::start("a", &[]);
    let body = r#"{"address":"127.0.0.1:9"}"#;
    let (st, text) = http(a.api(), "POST", "/node/connect", None, Some(body)).expect("answer");
    assert_eq!(st, 401);
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_err(),
        "401 is plain text: {text}"
    );
    let (st, _) =
        http(a.api(), "POST", "/node/connect", Some("wrong"), Some(body)).expect("answer");
    assert_eq!(st, 401);

    let (st, text) =
        http(a.api(), "POST", "/node/connect", Some(a.token()), Some("{")).expect("answer");
    assert_eq!(st, 400);
    let v: serde_json::Value = serde_json::from_str(&text).expect("400 is JSON");
    assert_eq!(v["status"], "Bad Request");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));

    let (st, text) = http(
        a.api(),
        "POST",
        "/node/connect",
        Some(a.token()),
        Some("{}"),
    )
    .expect("answer");
    assert_eq!(st, 400, "{text}");

    let (st, text) = a.disconnect("127.0.0.1:9".parse().expect("addr"));
    assert_eq!(st, 500);
    let v: serde_json::Value = serde_json::from_str(&text).expect("500 is JSON");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("not found")),
        "{v}"
    );

    // Nothing listens on a fresh free port: a failed dial is a 500 with the reason.
    let (st, text) = a.connect(peerkeep_tests::proc::free_addr());
    assert_eq!(st, 500, "{text}");

    assert!(
        a.ledger().expect("ledger")["peers"].is_null(),
        "no peers is null"
    );
}

#[test]
fn disconnect_drops_the_link_on_both_sides_and_reconnect_works() {
    let a = DevNode::start("a", &[]);
    let b = DevNode::start("b", &[]);
    connect_ok(&a, &b);
    wait_peers(&b, &[a.p2p()]);
    let (st, text) = a.disconnect(b.p2p());
    assert_eq!(st, 200, "{text}");
    assert_eq!(a.peer_addrs(), Some(vec![]), "gone from the caller at once");
    wait_peers(&b, &[]);
    connect_ok(&a, &b);
    let (st, text) = a.connect(b.p2p());
    assert_eq!(st, 200);
    assert!(text.contains("Already connected"), "{text}");
    wait_peers(&b, &[a.p2p()]);
}

#[test]
fn simultaneous_dials_leave_exactly_one_link() {
    let a = DevNode::start("a", &[]);
    let b = DevNode::start("b", &[]);
    std::thread::scope(|s| {
        s.spawn(|| a.connect(b.p2p()));
        s.spawn(|| b.connect(a.p2p()));
    });
    wait_peers(&a, &[b.p2p()]);
    wait_peers(&b, &[a.p2p()]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.peer_addrs(), Some(vec![b.p2p()]), "link stays up");
    assert_eq!(b.peer_addrs(), Some(vec![a.p2p()]), "link stays up");
}

#[test]
fn dialing_anything_but_the_advertised_address_is_refused() {
    let a = DevNode::start("a", &[]);
    let b = DevNode::start("b", &[]);
    let proxy = TcpProxy::start(a.p2p());
    let (st, text) = b.connect(proxy.addr());
    assert_eq!(st, 500, "{text}");
    assert!(text.contains("must be dialed at"), "{text}");
    assert_eq!(b.peer_addrs(), Some(vec![]));
    let (st, text) = b.connect(b.p2p());
    assert_eq!(st, 500, "self-dial refused: {text}");
}

#[test]
fn async_connect_answers_before_the_link_exists() {
    let a = DevNode::start("a", &[]);
    let b = DevNode::start("b", &["--async-connect"]);
    let (st, text) = b.connect(a.p2p());
    assert_eq!(st, 200, "{text}");
    assert_eq!(
        b.peer_addrs(),
        Some(vec![]),
        "not yet connected when the call returns"
    );
    wait_peers(&b, &[a.p2p()]);
    // A doomed async connect still answers 200.
    let (st, _) = b.connect(peerkeep_tests::proc::free_addr());
    assert_eq!(st, 200);
}

#[test]
fn stale_peers_outlive_the_connection_for_the_given_time() {
    let a = DevNode::start("a", &["--stale-peers", "2s"]);
    let mut b = DevNode::start("b", &[]);
    connect_ok(&b, &a);
    wait_peers(&a, &[b.p2p()]);
    let gone = Instant::now();
    b.kill();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        a.peer_addrs(),
        Some(vec![b.p2p()]),
        "still listed after the link died"
    );
    let (st, text) = a.disconnect(b.p2p());
    assert_eq!(
        st, 500,
        "disconnecting a stale entry fails like Wavelet: {text}"
    );
    assert!(text.contains("not found"), "{text}");
    wait_peers(&a, &[]);
    assert!(gone.elapsed() >= Duration::from_secs(2), "expired early");
}

#[test]
fn connect_failure_rate_fails_that_fraction() {
    let a = DevNode::start("a", &[]);
    let always = DevNode::start("always", &["--connect-failure-rate", "1"]);
    let (st, _) = always.connect(a.p2p());
    assert_eq!(st, 500);
    assert_eq!(always.peer_addrs(), Some(vec![]));

    let half = DevNode::start("half", &["--connect-failure-rate", "0.5"]);
    let statuses: Vec<u16> = (0..40).map(|_| half.connect(a.p2p()).0).collect();
    assert!(
        statuses.contains(&200) && statuses.contains(&500),
        "{statuses:?}"
    );
}

#[test]
fn frozen_head_never_moves_but_claims_to_be_synced() {
    let producer = DevNode::start("prod", &["--produce-every", "50ms"]);
    let frozen = DevNode::start("frozen", &["--frozen-head"]);
    connect_ok(&frozen, &producer);
    eventually(DEADLINE, "producer reaches height 10", || {
        (producer.height()? >= 10).then_some(())
    });
    let l = frozen.ledger().expect("ledger");
    assert_eq!(l["block"]["height"], 0);
    assert_eq!(l["sync_status"], "Node is fully synced");
}

#[test]
fn max_peers_bounds_the_links() {
    let a = DevNode::start("a", &["--max-peers", "1"]);
    let b = DevNode::start("b", &[]);
    let c = DevNode::start("c", &[]);
    connect_ok(&b, &a);
    let (st, text) = c.connect(a.p2p());
    assert_eq!(st, 500, "{text}");
    let (st, text) = a.connect(c.p2p());
    assert_eq!(st, 500, "{text}");
    assert_eq!(a.peer_addrs(), Some(vec![b.p2p()]));
}

#[test]
fn bad_handshakes_are_dropped_and_the_node_keeps_serving() {
    let a = DevNode::start("a", &[]);
    for junk in [
        vec![b'x'; 10_000],
        b"{\"type\":\"hello\"}\n".to_vec(),
        b"\xff\xfe\n".to_vec(),
    ] {
        let mut s = TcpStream::connect(a.p2p()).expect("connect p2p");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.write_all(&junk);
        let mut rest = Vec::new();
        // The node closes the connection (EOF or reset) instead of waiting for more.
        let _ = s.read_to_end(&mut rest);
    }
    assert!(a.ledger().is_some(), "still serving");
    assert_eq!(a.peer_addrs(), Some(vec![]));
}

#[test]
fn sigterm_exits_zero() {
    let mut a = DevNode::start("a", &[]);
    let b = DevNode::start("b", &[]);
    connect_ok(&b, &a);
    let st = a.terminate(Duration::from_secs(5)).expect("exit status");
    assert_eq!(st.code(), Some(0), "{}", a.log());
    wait_peers(&b, &[]);
}

#[test]
fn empty_token_file_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("token");
    std::fs::write(&token, "\n").expect("write");
    let out = std::process::Command::new(peerkeep_tests::proc::workspace_bin("devnode"))
        .args([
            "--id",
            "a",
            "--p2p-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .arg("--api-token-file")
        .arg(&token)
        .output()
        .expect("run devnode");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
}

#[test]
fn heavy_fifty_devnodes_in_a_tree_all_follow_the_producer() {
    let mut nodes = vec![DevNode::start("n0", &["--produce-every", "200ms"])];
    for i in 1..50 {
        nodes.push(DevNode::start(&format!("n{i}"), &[]));
    }
    for i in 1..50 {
        connect_ok(&nodes[i], &nodes[(i - 1) / 2]);
    }
    let target = nodes[0].height().expect("producer height") + 3;
    for n in &nodes {
        eventually(
            DEADLINE,
            &format!("{} reaches height {target}", n.id()),
            || (n.height()? >= target).then_some(()),
        );
    }
    // Inner nodes of the binary tree have a parent and two children.
    wait_peers(&nodes[1], &[nodes[0].p2p(), nodes[3].p2p(), nodes[4].p2p()]);
}

#[test]
fn advertise_makes_peers_dial_the_given_address_only() {
    // The proxy plays a NAT: the node listens on one address and is reachable at another.
    let listen = peerkeep_tests::proc::free_addr();
    let nat = TcpProxy::start(listen);
    let advertised = nat.addr().to_string();
    let a = DevNode::start_on("a", listen, &["--advertise", &advertised]);
    let b = DevNode::start("b", &[]);
    assert_eq!(a.ledger().expect("ledger")["address"], advertised);

    let (st, text) = b.connect(a.p2p_listen());
    assert_eq!(
        st, 500,
        "the bind address is not the advertised one: {text}"
    );
    connect_ok(&b, &a);
    wait_peers(&b, &[nat.addr()]);
    wait_peers(&a, &[b.p2p()]);
}

#[test]
fn sigterm_exits_promptly_even_with_a_stuck_api_client() {
    let mut a = DevNode::start("a", &[]);
    let mut stuck = TcpStream::connect(a.api()).expect("connect API");
    stuck
        .write_all(b"GET /ledger HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request");
    let started = Instant::now();
    let st = a.terminate(Duration::from_secs(10)).expect("exit status");
    assert_eq!(st.code(), Some(0), "{}", a.log());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
}
