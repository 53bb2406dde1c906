//! Node adapter contract tests: each adapter against a fake built from its daemon's documented
//! shapes, and the Wavelet adapter and template against devnode.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use peerkeep_agent::adapter::http::Secret;
use peerkeep_agent::adapter::{
    AdapterArgs, AdapterConfig, AdapterError, AdapterKind, ConfigError, ConnectOutcome, Direction,
    NodeAdapter, build,
};
use peerkeep_tests::DevNode;
use peerkeep_tests::fakes::cometbft::FakeCometbft;
use peerkeep_tests::fakes::geth::{FakeGeth, GethPeer};
use peerkeep_tests::fakes::nodeos::FakeNodeos;
use peerkeep_tests::fakes::wavelet::FakeWavelet;
use peerkeep_tests::fakes::{FakeServer, Reply};
use peerkeep_tests::proc::free_addr;
use serde_json::json;

fn config(kind: AdapterKind, url: &str) -> AdapterConfig {
    let mut c = AdapterConfig::new(kind, Some(url.parse().expect("test URL")));
    c.timeout = Duration::from_secs(2);
    c
}

fn with_token(kind: AdapterKind, url: &str, token: &str) -> Arc<dyn NodeAdapter> {
    let mut c = config(kind, url);
    c.token = Some(Secret::new(token.to_string()));
    build(&c).expect("adapter builds")
}

fn template(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/templates")
        .join(name)
}

fn template_adapter(
    path: std::path::PathBuf,
    url: &str,
    token: Option<&str>,
) -> Arc<dyn NodeAdapter> {
    let mut c = config(AdapterKind::HttpTemplate, url);
    c.template_file = Some(path);
    c.token = token.map(|t| Secret::new(t.to_string()));
    build(&c).expect("template adapter builds")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

// ---------------------------------------------------------------- wavelet vs fake

#[tokio::test]
async fn wavelet_contract_against_a_fake_wavelet() {
    let fake = FakeWavelet::start("s3cret");
    let a = with_token(AdapterKind::Wavelet, &fake.server.url(), "s3cret");
    a.probe().await.expect("probe");
    assert!(
        a.peers().await.expect("peers").is_empty(),
        "peers: null is an empty list"
    );

    fake.state
        .lock()
        .expect("state")
        .dialable
        .insert("10.0.0.2:3000".into());
    let out = a
        .connect(addr("10.0.0.2:3000"), None)
        .await
        .expect("connect");
    assert_eq!(out, ConnectOutcome::Established);
    let last = fake.server.requests().pop().expect("request");
    assert_eq!(last.json(), json!({"address": "10.0.0.2:3000"}));
    assert_eq!(last.authorization.as_deref(), Some("Bearer s3cret"));

    let peers = a.peers().await.expect("peers");
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].addr, addr("10.0.0.2:3000"));
    assert_eq!(peers[0].identity.as_deref(), Some("pk-10.0.0.2:3000"));
    assert_eq!(peers[0].direction, None, "Wavelet does not say");

    let err = a
        .connect(addr("10.0.0.3:3000"), None)
        .await
        .expect_err("dial fails");
    assert!(
        matches!(&err, AdapterError::Rejected { status: Some(500), message, .. } if message.contains("error connecting")),
        "{err}"
    );
    let err = a
        .disconnect(addr("10.0.0.9:3000"))
        .await
        .expect_err("unknown peer");
    assert!(
        matches!(&err, AdapterError::Rejected { status: Some(500), message, .. } if message.contains("not found")),
        "{err}"
    );
    a.disconnect(addr("10.0.0.2:3000"))
        .await
        .expect("disconnect");
    assert!(a.peers().await.expect("peers").is_empty());

    let st = a.sync_status().await.expect("sync");
    assert!(st.synced);
    assert_eq!(st.height, Some(0));
    assert_eq!(st.lag, None, "Wavelet has no block time");
    fake.state.lock().expect("state").sync_status = "Node is out of sync".into();
    assert!(!a.sync_status().await.expect("sync").synced);

    fake.rate_limited.store(true, Ordering::SeqCst);
    let err = a.peers().await.expect_err("429");
    assert!(
        matches!(
            err,
            AdapterError::Rejected {
                status: Some(429),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn wavelet_wrong_token_is_unauthorized_and_no_token_is_refused_at_build() {
    let fake = FakeWavelet::start("right");
    let a = with_token(AdapterKind::Wavelet, &fake.server.url(), "wrong");
    let err = a
        .connect(addr("10.0.0.2:3000"), None)
        .await
        .expect_err("401");
    assert!(
        matches!(err, AdapterError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(!err.is_transient());

    let err = build(&config(AdapterKind::Wavelet, &fake.server.url())).expect_err("no token");
    assert!(
        matches!(err, ConfigError::MissingCredential { .. }),
        "{err}"
    );
}

// ---------------------------------------------------------------- wavelet vs devnode

#[tokio::test]
async fn wavelet_adapter_drives_devnode() {
    let a = DevNode::start("a", &["--produce-every", "100ms"]);
    let b = DevNode::start("b", &[]);
    let ad = with_token(AdapterKind::Wavelet, &b.api_url(), b.token());
    assert_eq!(
        ad.connect(a.p2p(), None).await.expect("connect"),
        ConnectOutcome::Established
    );
    let peers = ad.peers().await.expect("peers");
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].addr, a.p2p());
    assert_eq!(peers[0].identity.as_deref(), Some("a"));
    assert_eq!(peers[0].direction, Some(Direction::Outbound));
    assert_eq!(
        ad.connect(a.p2p(), None).await.expect("again"),
        ConnectOutcome::AlreadyConnected
    );

    let st = peerkeep_tests::eventually_async(Duration::from_secs(10), "b follows a", || async {
        let st = ad.sync_status().await.ok()?;
        (st.height? >= 3).then_some(st)
    })
    .await;
    assert!(st.synced);
    assert!(
        st.lag.expect("devnode reports block time") < Duration::from_secs(2),
        "{st:?}"
    );

    ad.disconnect(a.p2p()).await.expect("disconnect");
    assert!(ad.peers().await.expect("peers").is_empty());

    let async_node = DevNode::start("c", &["--async-connect"]);
    let ac = with_token(
        AdapterKind::Wavelet,
        &async_node.api_url(),
        async_node.token(),
    );
    assert_eq!(
        ac.connect(a.p2p(), None).await.expect("connect"),
        ConnectOutcome::Pending
    );
}

#[tokio::test]
async fn wavelet_adapter_on_devnodes_stale_entries_redial_is_the_liveness_test() {
    let a = DevNode::start("a", &["--stale-peers", "10s"]);
    let mut b = DevNode::start("b", &[]);
    let ad = with_token(AdapterKind::Wavelet, &a.api_url(), a.token());
    ad.connect(b.p2p(), None).await.expect("connect");
    let b_addr = b.p2p();
    b.kill();
    // Like Wavelet's routing table, the dead peer stays listed...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let peers = ad.peers().await.expect("peers");
    assert_eq!(
        peers.iter().map(|p| p.addr).collect::<Vec<_>>(),
        vec![b_addr]
    );
    // ...disconnecting it fails with "not found", and re-dialing it tells it is dead.
    let err = ad.disconnect(b_addr).await.expect_err("stale entry");
    assert!(
        matches!(
            err,
            AdapterError::Rejected {
                status: Some(500),
                ..
            }
        ),
        "{err}"
    );
    let err = ad.connect(b_addr, None).await.expect_err("dead peer");
    assert!(
        matches!(&err, AdapterError::Rejected { status: Some(500), message, .. } if message.contains("error connecting")),
        "{err}"
    );

    let flaky = DevNode::start("flaky", &["--connect-failure-rate", "1"]);
    let af = with_token(AdapterKind::Wavelet, &flaky.api_url(), flaky.token());
    let err = af.connect(a.p2p(), None).await.expect_err("always fails");
    assert!(
        matches!(
            err,
            AdapterError::Rejected {
                status: Some(500),
                ..
            }
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------- nodeos

#[tokio::test]
async fn nodeos_connect_is_pending_and_only_handshaken_links_count() {
    let fake = FakeNodeos::start();
    let a = build(&config(AdapterKind::Nodeos, &fake.server.url())).expect("builds");
    a.probe().await.expect("probe");

    let out = a
        .connect(addr("10.0.0.2:9876"), None)
        .await
        .expect("connect");
    assert_eq!(
        out,
        ConnectOutcome::Pending,
        "nodeos connects in the background"
    );
    let req = fake.server.requests().pop().expect("request");
    assert_eq!(req.path, "/v1/net/connect");
    assert_eq!(req.body, "\"10.0.0.2:9876\"", "bare JSON string body");
    assert!(
        a.peers().await.expect("peers").is_empty(),
        "still connecting: not a peer"
    );
    assert_eq!(
        a.connect(addr("10.0.0.2:9876"), None).await.expect("again"),
        ConnectOutcome::AlreadyConnected
    );

    let node_id = "ab".repeat(32);
    fake.complete("10.0.0.2:9876", &node_id);
    fake.add_inbound("10.0.0.7:51234", "10.0.0.7:9876", &"cd".repeat(32));
    let mut peers = a.peers().await.expect("peers");
    peers.sort_by_key(|p| p.addr);
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].addr, addr("10.0.0.2:9876"));
    assert_eq!(peers[0].direction, Some(Direction::Outbound));
    assert_eq!(peers[0].identity.as_deref(), Some(node_id.as_str()));
    assert_eq!(
        peers[1].addr,
        addr("10.0.0.7:9876"),
        "inbound keyed by its announced address"
    );
    assert_eq!(peers[1].direction, Some(Direction::Inbound));

    a.disconnect(addr("10.0.0.2:9876"))
        .await
        .expect("disconnect");
    let err = a.disconnect(addr("10.0.0.2:9876")).await.expect_err("gone");
    assert!(
        matches!(&err, AdapterError::Rejected { message, .. } if message.contains("no known connection")),
        "{err}"
    );

    let st = a.sync_status().await.expect("sync");
    assert_eq!(st.height, Some(100));
    let lag = st.lag.expect("head_block_time without Z parsed as UTC");
    assert!(lag > Duration::from_secs(86_400 * 365), "{lag:?}");
}

// ---------------------------------------------------------------- geth

#[tokio::test]
async fn geth_dials_enodes_asynchronously_and_keys_peers_by_enode_id() {
    let own = "0f".repeat(64);
    let fake = FakeGeth::start(&own);
    let a = build(&config(AdapterKind::Geth, &fake.server.url())).expect("builds");
    a.probe().await.expect("probe");
    assert_eq!(
        a.own_identity().await.expect("node info"),
        Some(own.clone())
    );

    let err = a
        .connect(addr("10.0.0.2:30303"), None)
        .await
        .expect_err("no enode id");
    assert!(matches!(err, AdapterError::Unsupported { .. }), "{err}");
    let err = a
        .connect(addr("10.0.0.2:30303"), Some("\"}],\"x"))
        .await
        .expect_err("not an enode id");
    assert!(matches!(err, AdapterError::Unsupported { .. }), "{err}");

    let id = "1a".repeat(64);
    let out = a
        .connect(addr("10.0.0.2:30303"), Some(&id))
        .await
        .expect("connect");
    assert_eq!(out, ConnectOutcome::Pending);
    let added = fake.state.lock().expect("state").added.clone();
    assert_eq!(added, vec![format!("enode://{id}@10.0.0.2:30303")]);
    assert!(
        a.peers().await.expect("peers").is_empty(),
        "not connected yet"
    );

    fake.complete_dials();
    let inbound_id = "2b".repeat(64);
    fake.state.lock().expect("state").peers.push(GethPeer {
        id: inbound_id.clone(),
        remote: "10.0.0.3:41234".into(),
        inbound: true,
    });
    let mut peers = a.peers().await.expect("peers");
    peers.sort_by_key(|p| p.addr);
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].identity.as_deref(), Some(id.as_str()));
    assert_eq!(peers[0].direction, Some(Direction::Outbound));
    assert_eq!(peers[1].identity.as_deref(), Some(inbound_id.as_str()));
    assert_eq!(peers[1].direction, Some(Direction::Inbound));
    assert_eq!(
        a.connect(addr("10.0.0.2:30303"), Some(&id))
            .await
            .expect("again"),
        ConnectOutcome::AlreadyConnected
    );

    a.disconnect(addr("10.0.0.3:41234"))
        .await
        .expect("disconnect inbound");
    let removed = fake.state.lock().expect("state").removed.clone();
    assert_eq!(
        removed,
        vec![format!("enode://{inbound_id}@10.0.0.3:41234")]
    );

    let st = a.sync_status().await.expect("sync");
    assert!(st.synced);
    assert_eq!(st.height, Some(16));
    assert!(
        st.lag.expect("block age") > Duration::from_secs(86_400),
        "stalled node shows lag"
    );
    fake.state.lock().expect("state").syncing =
        json!({"startingBlock": "0x0", "currentBlock": "0x5", "highestBlock": "0xa"});
    let st = a.sync_status().await.expect("sync");
    assert!(!st.synced);
    assert_eq!(st.progress, Some(0.5));
}

#[tokio::test]
async fn geth_without_the_admin_api_fails_the_probe_with_the_reason() {
    let fake = FakeServer::start(|r| {
        let id = r.json()["id"].clone();
        Reply::json(
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "the method admin_nodeInfo does not exist/is not available"}}),
        )
    });
    let a = build(&config(AdapterKind::Geth, &fake.url())).expect("builds");
    let err = a.probe().await.expect_err("no admin API");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn geth_vhosts_refusal_says_what_to_fix() {
    let fake = FakeServer::start(|_| Reply::text(403, "invalid host specified\n"));
    let a = build(&config(AdapterKind::Geth, &fake.url())).expect("builds");
    let err = a.probe().await.expect_err("403");
    assert!(
        matches!(err, AdapterError::Unauthorized { status: 403, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--http.vhosts"), "{err}");
}

// ---------------------------------------------------------------- http-template

#[tokio::test]
async fn cometbft_template_against_a_fake_cometbft() {
    let fake = FakeCometbft::start();
    fake.state.lock().expect("state").peers = vec![
        (
            "aa11".into(),
            "tcp://0.0.0.0:26656".into(),
            "10.0.0.2".into(),
            true,
        ),
        (
            "bb22".into(),
            "tcp://0.0.0.0:26656".into(),
            "10.0.0.3".into(),
            false,
        ),
    ];
    let a = template_adapter(template("cometbft.toml"), &fake.server.url(), None);
    a.probe().await.expect("probe");
    let peers = a.peers().await.expect("peers");
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].addr, addr("10.0.0.2:26656"));
    assert_eq!(peers[0].identity.as_deref(), Some("aa11"));
    assert_eq!(peers[0].direction, Some(Direction::Outbound));
    assert_eq!(peers[1].direction, Some(Direction::Inbound));

    let out = a
        .connect(addr("10.0.0.4:26656"), Some("cc33"))
        .await
        .expect("dial");
    assert_eq!(out, ConnectOutcome::Pending);
    let req = fake.server.requests().pop().expect("request");
    assert_eq!(req.path, "/dial_peers");
    assert!(
        req.path_and_query.contains("cc33@10.0.0.4%3A26656"),
        "values percent-encoded in the query: {}",
        req.path_and_query
    );
    let err = a
        .connect(addr("10.0.0.4:26656"), None)
        .await
        .expect_err("needs identity");
    assert!(matches!(err, AdapterError::Unsupported { .. }), "{err}");
    let err = a
        .disconnect(addr("10.0.0.2:26656"))
        .await
        .expect_err("no disconnect");
    assert!(matches!(err, AdapterError::Unsupported { .. }), "{err}");

    let st = a.sync_status().await.expect("sync");
    assert_eq!(st.height, Some(42));
    assert!(st.synced);
    assert!(st.lag.expect("RFC 3339 with nanoseconds") > Duration::from_secs(86_400));
    fake.state.lock().expect("state").catching_up = true;
    assert!(!a.sync_status().await.expect("sync").synced);
}

#[tokio::test]
async fn wavelet_template_matches_the_wavelet_adapter_on_the_fake_and_devnode() {
    let fake = FakeWavelet::start("tok");
    let a = template_adapter(template("wavelet.toml"), &fake.server.url(), Some("tok"));
    assert!(a.peers().await.expect("peers").is_empty(), "null peers");
    fake.state
        .lock()
        .expect("state")
        .dialable
        .insert("10.0.0.2:3000".into());
    assert_eq!(
        a.connect(addr("10.0.0.2:3000"), None)
            .await
            .expect("connect"),
        ConnectOutcome::Established
    );
    assert_eq!(
        a.peers().await.expect("peers")[0].addr,
        addr("10.0.0.2:3000")
    );
    let err = a
        .disconnect(addr("10.0.0.9:3000"))
        .await
        .expect_err("unknown");
    assert!(
        matches!(&err, AdapterError::Rejected { status: Some(500), message, .. } if message.contains("not found")),
        "the template's error pointer is used: {err}"
    );

    let x = DevNode::start("x", &["--produce-every", "100ms"]);
    let y = DevNode::start("y", &[]);
    let t = template_adapter(template("wavelet.toml"), &y.api_url(), Some(y.token()));
    assert_eq!(
        t.connect(x.p2p(), None).await.expect("connect"),
        ConnectOutcome::Established
    );
    assert_eq!(
        t.connect(x.p2p(), None).await.expect("again"),
        ConnectOutcome::AlreadyConnected
    );
    let peers = t.peers().await.expect("peers");
    assert_eq!(peers[0].identity.as_deref(), Some("x"));
    let st = peerkeep_tests::eventually_async(Duration::from_secs(10), "y follows x", || async {
        let st = t.sync_status().await.ok()?;
        (st.height? >= 2).then_some(st)
    })
    .await;
    assert!(st.lag.expect("timestamp_ms") < Duration::from_secs(2));
    t.disconnect(x.p2p()).await.expect("disconnect");
}

#[tokio::test]
async fn template_values_with_quotes_newlines_and_braces_are_escaped() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        r#"
        [peers]
        path = "/peers"
        list = ""
        address = "/a"
        [connect]
        path = "/connect/{{identity}}?at={{address}}"
        body = '{"id": "{{identity}}", "host": "{{host}}", "port": "{{port}}"}'
        [sync]
        path = "/s"
        "#,
    )
    .expect("write template");
    let fake = FakeServer::start(|_| Reply::json(json!([])));
    let a = template_adapter(path, &fake.url(), None);
    let hostile = "a\"b\nc{{address}}\\ }";
    a.connect(addr("[2001:db8::1]:7"), Some(hostile))
        .await
        .expect("connect");
    let req = fake.requests().pop().expect("request");
    assert_eq!(
        req.json()["id"],
        hostile,
        "the body carries the value verbatim, as a JSON string"
    );
    assert_eq!(req.json()["host"], "2001:db8::1");
    assert_eq!(req.json()["port"], "7");
    assert_eq!(req.path, "/connect/a%22b%0Ac%7B%7Baddress%7D%7D%5C%20%7D");
    assert!(
        req.path_and_query
            .ends_with("?at=%5B2001%3Adb8%3A%3A1%5D%3A7"),
        "{}",
        req.path_and_query
    );
}

#[test]
fn broken_templates_are_refused_with_every_problem() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[peers]\npath = \"/p\"\nbogus = 1\n").expect("write");
    let mut c = config(AdapterKind::HttpTemplate, "http://127.0.0.1:1");
    c.template_file = Some(path);
    let err = build(&c).expect_err("invalid");
    assert!(err.to_string().contains("bogus"), "{err}");

    let mut c = config(AdapterKind::HttpTemplate, "http://127.0.0.1:1");
    c.template_file = Some(dir.path().join("missing.toml"));
    assert!(matches!(
        build(&c).expect_err("missing"),
        ConfigError::Template { .. }
    ));
}

// ---------------------------------------------------------------- none, transport, flags

#[tokio::test]
async fn none_adapter_says_unsupported_for_everything() {
    let a = build(&AdapterConfig::new(AdapterKind::None, None)).expect("builds");
    assert!(matches!(
        a.probe().await,
        Err(AdapterError::Unsupported { .. })
    ));
    assert!(matches!(
        a.peers().await,
        Err(AdapterError::Unsupported { .. })
    ));
    assert!(matches!(
        a.connect(addr("10.0.0.1:1"), None).await,
        Err(AdapterError::Unsupported { .. })
    ));
    assert!(matches!(
        a.sync_status().await,
        Err(AdapterError::Unsupported { .. })
    ));
}

#[tokio::test]
async fn dead_and_silent_daemons_are_unreachable_and_timeout() {
    let dead = free_addr();
    let a = with_token(AdapterKind::Wavelet, &format!("http://{dead}"), "t");
    let err = a.peers().await.expect_err("nothing listens");
    assert!(matches!(err, AdapterError::Unreachable { .. }), "{err}");
    assert!(err.is_transient());

    // Accepts connections, never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut c = config(
        AdapterKind::Nodeos,
        &format!("http://{}", silent.local_addr().expect("addr")),
    );
    c.timeout = Duration::from_millis(300);
    let a = build(&c).expect("builds");
    let started = std::time::Instant::now();
    let err = a.peers().await.expect_err("silent");
    assert!(matches!(err, AdapterError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the timeout"
    );
}

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    adapter: AdapterArgs,
}

#[test]
fn adapter_flags_parse_into_a_config() {
    let cli = Cli::try_parse_from([
        "agent",
        "--adapter",
        "bitcoind",
        "--node-api",
        "http://127.0.0.1:9332/",
        "--node-api-cookie-file",
        "/data/regtest/.cookie",
        "--node-api-timeout",
        "750ms",
    ])
    .expect("valid flags");
    let c = cli.adapter.to_config();
    assert_eq!(c.kind, AdapterKind::Bitcoind);
    assert_eq!(c.timeout, Duration::from_millis(750));
    assert_eq!(
        c.cookie_file.as_deref(),
        Some(std::path::Path::new("/data/regtest/.cookie"))
    );
    assert!(Cli::try_parse_from(["agent", "--adapter", "bogus"]).is_err());
    assert!(
        Cli::try_parse_from(["agent", "--node-api-token", "x"]).is_err(),
        "no secrets on the command line"
    );

    let missing = build(&AdapterConfig::new(AdapterKind::Bitcoind, None)).expect_err("no URL");
    assert!(
        matches!(missing, ConfigError::MissingNodeApi { .. }),
        "{missing}"
    );
}
