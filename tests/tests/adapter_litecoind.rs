//! The bitcoind adapter against real `litecoind -regtest` nodes: peers, connect/disconnect,
//! sync status, cookie and basic auth, and a cookie rewritten by a daemon restart.

use std::sync::Arc;
use std::time::Duration;

use peerkeep_agent::adapter::{
    AdapterConfig, AdapterError, AdapterKind, ConnectOutcome, Direction, NodeAdapter, build,
};
use peerkeep_tests::eventually_async;
use peerkeep_tests::litecoind::{Litecoind, RpcAuth};

const DEADLINE: Duration = Duration::from_secs(30);

fn cookie_adapter(node: &Litecoind) -> Arc<dyn NodeAdapter> {
    let mut c = AdapterConfig::new(
        AdapterKind::Bitcoind,
        Some(node.rpc_url().parse().expect("rpc url")),
    );
    c.cookie_file = Some(node.cookie_file());
    c.timeout = Duration::from_secs(10);
    build(&c).expect("adapter builds")
}

fn basic_adapter(node: &Litecoind, user: &str, password: &str) -> Arc<dyn NodeAdapter> {
    let file = node.datadir().join(format!("password-{password}"));
    std::fs::write(&file, format!("{password}\n")).expect("write password file");
    let mut c = AdapterConfig::new(
        AdapterKind::Bitcoind,
        Some(node.rpc_url().parse().expect("rpc url")),
    );
    c.user = Some(user.to_string());
    c.password_file = Some(file);
    c.timeout = Duration::from_secs(10);
    build(&c).expect("adapter builds")
}

#[tokio::test(flavor = "multi_thread")]
async fn heavy_bitcoind_adapter_connects_disconnects_and_tracks_sync_on_three_litecoind_nodes() {
    // Fixtures start on the test's thread: their children die with the thread that spawned them.
    let nodes = Litecoind::start_many("ltc", 3);
    let (n0, n1, n2) = (&nodes[0], &nodes[1], &nodes[2]);
    let a0 = cookie_adapter(n0);
    let a1 = cookie_adapter(n1);
    a0.probe().await.expect("probe");
    assert!(a0.peers().await.expect("peers").is_empty());

    let fresh = a1.sync_status().await.expect("sync");
    assert_eq!(fresh.height, Some(0));
    assert!(
        !fresh.synced,
        "regtest stays in initial block download until a recent block"
    );

    let out = a0.connect(n1.p2p(), None).await.expect("connect n1");
    assert_eq!(
        out,
        ConnectOutcome::Established,
        "onetry dials before it returns"
    );
    assert_eq!(n0.connection_count(), 1);
    assert_eq!(
        a0.connect(n1.p2p(), None).await.expect("again"),
        ConnectOutcome::AlreadyConnected
    );
    a0.connect(n2.p2p(), None).await.expect("connect n2");
    assert_eq!(n0.connection_count(), 2);

    // n1 sees n0 as inbound, with an ephemeral port; the -uacomment carries its id.
    let inbound = eventually_async(DEADLINE, "n1 lists n0 with its node id", || async {
        let peers = a1.peers().await.ok()?;
        peers
            .into_iter()
            .find(|p| p.identity.as_deref() == Some("ltc0"))
    })
    .await;
    assert_eq!(inbound.direction, Some(Direction::Inbound));
    assert_ne!(
        inbound.addr,
        n0.p2p(),
        "inbound address is the remote end, not the listener"
    );
    let outbound = a0.peers().await.expect("peers");
    assert!(
        outbound
            .iter()
            .any(|p| p.addr == n1.p2p() && p.direction == Some(Direction::Outbound)),
        "{outbound:?}"
    );

    let mined = n0.mine(5);
    assert_eq!(mined, 5);
    let st = eventually_async(
        DEADLINE,
        "n1 follows to height 5 and leaves IBD",
        || async {
            let st = a1.sync_status().await.ok()?;
            (st.height == Some(5) && st.synced).then_some(st)
        },
    )
    .await;
    assert!(
        st.lag.expect("header time") < Duration::from_secs(60),
        "{st:?}"
    );
    assert_eq!(st.progress.map(|p| p > 0.99), Some(true));

    a0.disconnect(n2.p2p()).await.expect("disconnect n2");
    eventually_async(DEADLINE, "n0 down to one connection", || async {
        (n0.connection_count() == 1).then_some(())
    })
    .await;
    let err = a0
        .disconnect(n2.p2p())
        .await
        .expect_err("not connected any more");
    assert!(
        matches!(&err, AdapterError::Rejected { message, .. } if message.contains("-29")),
        "RPC error from an HTTP 500 body: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bitcoind_cookie_is_reread_after_a_daemon_restart_and_keeps_no_connection_open() {
    let mut node = Litecoind::start("ltc-restart");
    let a = cookie_adapter(&node);
    a.probe().await.expect("probe with the first cookie");
    let first = std::fs::read_to_string(node.cookie_file()).expect("cookie");

    let stopping = std::time::Instant::now();
    node.stop();
    // Regression: pooled keep-alive connections from the adapter held bitcoind's shutdown for
    // its full HTTP timeout.
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "daemon took {:?} to stop",
        stopping.elapsed()
    );
    let err = a.probe().await.expect_err("daemon down");
    assert!(err.is_transient(), "{err}");

    node.start_again();
    let second = std::fs::read_to_string(node.cookie_file()).expect("cookie");
    assert_ne!(first, second, "the daemon wrote a new cookie");
    a.probe()
        .await
        .expect("probe re-reads the cookie after a 401");
    assert_eq!(a.sync_status().await.expect("sync").height, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn bitcoind_basic_auth_with_rpcuser_and_a_wrong_password() {
    let node = Litecoind::start_with(
        "ltc-basic",
        RpcAuth::UserPassword {
            user: "peerkeep".into(),
            password: "correct-horse".into(),
        },
    );
    basic_adapter(&node, "peerkeep", "correct-horse")
        .probe()
        .await
        .expect("right password");
    let err = basic_adapter(&node, "peerkeep", "wrong")
        .probe()
        .await
        .expect_err("wrong password");
    assert!(
        matches!(err, AdapterError::Unauthorized { status: 401, .. }),
        "{err}"
    );
}
