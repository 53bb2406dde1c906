//! Peer keeping end to end with a real P2P daemon: four `litecoind -regtest` nodes, each run by
//! `peerkeep-agent run --adapter bitcoind` (cookie auth) and registered in a real etcd, K = 2,
//! with no static `-addnode`/`-connect` — every link is one the peer keeper dialed with
//! `addnode … onetry`, and inbound peers are recognised by the `-uacomment={node_id}` in their
//! user agent.
//!
//! Assertions read each daemon's own RPC through a small client here, independent of the adapter
//! under test; the agents' `/status` and logs only explain a failure.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use peerkeep_tests::devnode::fixture::http;
use peerkeep_tests::proc::{die_with_test, free_port, kill_and_reap, terminate, workspace_bin};
use peerkeep_tests::{Etcd, eventually};
use serde_json::{Value, json};
use tempfile::TempDir;

/// `--min-peers`.
const K: usize = 2;
/// Nodes in the fleet.
const NODES: usize = 4;
/// Generous bound for peering and block relay (litecoind alone can take seconds to start).
const CONVERGE: Duration = Duration::from_secs(60);
/// `--stop-timeout`: litecoind flushes its state on SIGTERM in well under a second on regtest.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// One node container: an agent supervising a litecoind, both with their files in `dir`.
struct LtcNode {
    id: String,
    etcd: String,
    dir: TempDir,
    p2p_port: u16,
    rpc_port: u16,
    health: SocketAddr,
    agent: Option<Child>,
}

impl LtcNode {
    /// A node with its datadir and ports, not started yet.
    fn new(etcd: &str, id: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("peerkeep-test-ltc-")
            .tempdir()
            .expect("temp dir");
        let mut node = Self {
            id: id.to_owned(),
            etcd: etcd.to_owned(),
            dir,
            p2p_port: 0,
            rpc_port: 0,
            health: SocketAddr::from(([127, 0, 0, 1], 0)),
            agent: None,
        };
        node.pick_ports();
        node
    }

    fn pick_ports(&mut self) {
        self.p2p_port = free_port();
        self.rpc_port = free_port();
        self.health.set_port(free_port());
    }

    /// Waits until litecoind answers RPC with its current cookie; `Err` with the logs if the
    /// agent exits first (litecoind exits when it cannot bind a port, taking the agent along).
    fn wait_rpc(&mut self) -> Result<(), String> {
        eventually(CONVERGE, "litecoind answers RPC", || {
            let exited = self.agent.as_mut().map(|a| a.try_wait());
            if let Some(Ok(Some(status))) = exited {
                self.agent = None;
                return Some(Err(format!(
                    "agent exited with {status}\n{}",
                    self.diagnostics()
                )));
            }
            self.rpc("getblockcount", json!([])).ok().map(|_| Ok(()))
        })
    }

    /// Starts the agent on this node's ports and datadir, as a container (re)start does.
    fn spawn_agent(&mut self) {
        assert!(self.agent.is_none(), "{} is already running", self.id);
        let datadir = self.dir.path().join("data");
        std::fs::create_dir_all(&datadir).expect("datadir");
        // Appended, so a restarted node's log keeps the first run too.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("agent log");
        let mut cmd = Command::new(workspace_bin("peerkeep-agent"));
        cmd.arg("run")
            .args(["--etcd-endpoints", &self.etcd, "--node-id", &self.id])
            .args(["--allow-loopback", "--advertise", "ip:127.0.0.1"])
            .args(["--private-addr", "ip:127.0.0.1"])
            .args(["--health-listen", &self.health.to_string()])
            .args(["--lease-ttl", "5s", "--drain-delay", "200ms"])
            .args(["--stop-timeout", &format!("{}s", STOP_TIMEOUT.as_secs())])
            .args(["--min-peers", &K.to_string(), "--peer-poll", "500ms"])
            .args(["--endpoint", &format!("p2p=:{}", self.p2p_port)])
            .args(["--adapter", "bitcoind", "--node-api", &self.rpc_url()])
            .arg("--node-api-cookie-file")
            .arg(self.cookie_file())
            .arg("--")
            .args(["litecoind", "-regtest"])
            .arg(format!("-datadir={}", datadir.display()))
            .arg(format!("-port={}", self.p2p_port))
            .arg(format!("-rpcport={}", self.rpc_port))
            .args([
                "-bind=127.0.0.1",
                "-rpcbind=127.0.0.1",
                "-rpcallowip=127.0.0.1",
            ])
            .args(["-listen=1", "-server=1", "-discover=0", "-dnsseed=0"])
            .args(["-listenonion=0", "-printtoconsole=0"])
            .args(["-uacomment={node_id}", "-externalip={advertise_ip}"])
            // While in initial block download (on regtest: until a recent block arrives) Bitcoin
            // Core fetches blocks only from "preferred download" peers — outbound ones, or
            // inbound ones with the `noban` permission. The keeper counts inbound peers toward
            // K, so two fresh nodes whose only outbound links point at each other would never
            // fetch the chain from their inbound peers. A fleet whose members trust each other
            // whitelists its own network, as here.
            .arg("-whitelist=noban@127.0.0.1");
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        self.agent = Some(
            die_with_test(&mut cmd)
                .spawn()
                .expect("spawn peerkeep-agent"),
        );
    }

    /// SIGTERM to the agent (a container stop); waits for it to exit.
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut agent = self.agent.take()?;
        // Drain delay, revoke and the daemon's own stop, with room to spare.
        terminate(&mut agent, STOP_TIMEOUT + Duration::from_secs(10))
    }

    fn rpc_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.rpc_port)
    }

    /// Written by litecoind when its RPC server starts, removed on a clean stop.
    fn cookie_file(&self) -> PathBuf {
        self.dir.path().join("data").join("regtest").join(".cookie")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// One JSON-RPC call with the current cookie: the `result`, or why there is none.
    fn rpc(&self, method: &str, params: Value) -> Result<Value, String> {
        let cookie = std::fs::read_to_string(self.cookie_file())
            .map_err(|e| format!("{}: no cookie yet: {e}", self.id))?;
        let auth = base64::engine::general_purpose::STANDARD.encode(cookie.trim_end());
        let addr = SocketAddr::from(([127, 0, 0, 1], self.rpc_port));
        let body = json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params});
        let body = body.to_string();
        let io = |e: std::io::Error| format!("{}: {method}: {e}", self.id);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        let req = format!(
            "POST / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Authorization: Basic {auth}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(io)?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).map_err(io)?;
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        let v: Value = serde_json::from_str(body).map_err(|_| {
            format!(
                "{}: {method}: {}",
                self.id,
                head.lines().next().unwrap_or("")
            )
        })?;
        match &v["error"] {
            Value::Null => Ok(v["result"].clone()),
            e => Err(format!("{}: {method}: {e}", self.id)),
        }
    }

    /// Node ids of the daemon's peers, from the `-uacomment` in each peer's user agent.
    fn peer_ids(&self) -> Option<BTreeSet<String>> {
        let peers = self.rpc("getpeerinfo", json!([])).ok()?;
        Some(
            peers
                .as_array()?
                .iter()
                .filter_map(|p| ua_comment(p["subver"].as_str()?))
                .collect(),
        )
    }

    fn connection_count(&self) -> Option<u64> {
        self.rpc("getconnectioncount", json!([])).ok()?.as_u64()
    }

    /// `(height, best block hash)`.
    fn tip(&self) -> Option<(u64, String)> {
        let height = self.rpc("getblockcount", json!([])).ok()?.as_u64()?;
        let hash = self.rpc("getbestblockhash", json!([])).ok()?;
        Some((height, hash.as_str()?.to_owned()))
    }

    /// Mines `n` blocks to an anyone-can-spend script (no wallet needed); returns the new tip.
    fn mine(&self, n: u32) -> (u64, String) {
        self.rpc("generatetodescriptor", json!([n, "raw(51)"]))
            .unwrap_or_else(|e| panic!("mining: {e}"));
        self.tip().expect("tip after mining")
    }

    /// The agent's `/status` JSON.
    fn status(&self) -> Option<Value> {
        let (code, body) = http(self.health, "GET", "/status", None, None)?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// What the agent and the daemon said last, for failure messages.
    fn diagnostics(&self) -> String {
        let keeper = self
            .status()
            .map(|s| format!("state {} keeper {}", s["state"], s["keeper"]))
            .unwrap_or_else(|| "no /status".to_owned());
        let peers: Vec<String> = self
            .rpc("getpeerinfo", json!([]))
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|p| {
                format!(
                    "{} inbound={} blocks={}",
                    p["subver"], p["inbound"], p["synced_blocks"]
                )
            })
            .collect();
        format!(
            "--- {} ({keeper})\npeers: {peers:?}\n{}\n--- debug.log\n{}",
            self.id,
            tail(
                &std::fs::read_to_string(self.log_path()).unwrap_or_default(),
                12
            ),
            tail(&self.debug_log(), 8),
        )
    }

    fn debug_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data/regtest/debug.log")).unwrap_or_default()
    }

    /// PID of the litecoind running on this node's datadir, found in /proc.
    fn daemon_pid(&self) -> Option<i32> {
        let needle = format!("-datadir={}", self.dir.path().join("data").display());
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let daemon = args.first()?.ends_with(b"litecoind");
            (daemon && args.contains(&needle.as_bytes())).then_some(pid)
        })
    }
}

impl Drop for LtcNode {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            kill_and_reap(&mut agent);
        }
        // A SIGKILLed agent leaves its daemon behind; it leads its own process group.
        if let Some(pid) = self.daemon_pid() {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The first comment in a user agent such as `/LitecoinCore:0.21.2.1(ltc3)/`.
fn ua_comment(subver: &str) -> Option<String> {
    let (_, rest) = subver.split_once('(')?;
    let (comment, _) = rest.split_once(')')?;
    Some(comment.split(';').next()?.trim().to_owned())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until `cond` holds for every node; on timeout panics with every node's diagnostics.
fn all_eventually(nodes: &[LtcNode], what: &str, cond: impl Fn(&LtcNode) -> bool) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(CONVERGE, what, || nodes.iter().all(&cond).then_some(()))
    }));
    if outcome.is_err() {
        let why: Vec<String> = nodes.iter().map(LtcNode::diagnostics).collect();
        panic!("timed out after {CONVERGE:?}: {what}\n{}", why.join("\n"));
    }
}

/// Every node has at least K distinct peers, all of them other fleet members, and between K
/// and `--max-peers` (2K) connections: two nodes that dial each other at the same moment hold
/// two links, which the keeper trims above the maximum.
fn await_k_peers(nodes: &[LtcNode], what: &str) {
    let ids: BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
    all_eventually(nodes, what, |n| {
        let peers = n.peer_ids().unwrap_or_default();
        peers.len() >= K
            && peers.iter().all(|p| ids.contains(p) && *p != n.id)
            && n.connection_count()
                .is_some_and(|c| (K..=2 * K).contains(&(c as usize)))
    });
}

fn await_tip(nodes: &[LtcNode], tip: &(u64, String), what: &str) {
    all_eventually(nodes, what, |n| n.tip().as_ref() == Some(tip));
}

fn await_ready(nodes: &[LtcNode], what: &str) {
    all_eventually(nodes, what, |n| {
        n.status().is_some_and(|s| s["state"] == "ready")
    });
}

/// Starts `n` agents in parallel and waits until every litecoind answers RPC. A node whose
/// agent exits first — most likely a port picked by `free_port` was taken before the agent or
/// litecoind bound it — starts over on new ports, twice.
fn start_fleet(etcd: &str, n: usize) -> Vec<LtcNode> {
    let mut nodes: Vec<LtcNode> = (0..n)
        .map(|i| LtcNode::new(etcd, &format!("ltc{i}")))
        .collect();
    for node in &mut nodes {
        node.spawn_agent();
    }
    for node in &mut nodes {
        let mut attempt = 1;
        while let Err(why) = node.wait_rpc() {
            assert!(attempt < 3, "{} did not start: {why}", node.id);
            eprintln!("{} did not start ({why}); retrying on new ports", node.id);
            attempt += 1;
            node.pick_ports();
            node.spawn_agent();
        }
    }
    nodes
}

#[test]
fn heavy_litecoind_under_agents_peers_to_k_without_addnode_relays_blocks_and_rejoins_after_restart()
{
    let started = Instant::now();
    let etcd = Etcd::start();
    let mut nodes = start_fleet(&etcd.endpoint(), NODES);

    // 1. Peering from etcd alone: K peers each, none of them a static peer.
    await_k_peers(&nodes, "every litecoind has K fleet peers");
    for n in &nodes {
        assert_eq!(
            n.rpc("getaddednodeinfo", json!([])),
            Ok(json!([])),
            "{}: links must come from `addnode onetry`, which adds no static peer",
            n.id
        );
    }
    let degrees: Vec<(String, Option<u64>)> = nodes
        .iter()
        .map(|n| (n.id.clone(), n.connection_count()))
        .collect();
    eprintln!("peered after {:?}: {degrees:?}", started.elapsed());

    // 2. Blocks mined on one node reach all; with a recent block regtest leaves initial block
    //    download, so every node becomes ready.
    let tip = nodes[0].mine(5);
    assert_eq!(tip.0, 5);
    await_tip(&nodes, &tip, "every litecoind has the 5 mined blocks");
    await_ready(&nodes, "every agent reports ready");

    // 3. A container restart: SIGTERM stops the agent, which stops litecoind cleanly.
    let restarted = NODES - 1;
    let first_cookie = std::fs::read_to_string(nodes[restarted].cookie_file()).expect("cookie");
    let stopping = Instant::now();
    let status = nodes[restarted].stop().expect("agent exit status");
    assert!(
        status.success(),
        "agent exits with litecoind's clean exit code, got {status}\n{}",
        nodes[restarted].diagnostics()
    );
    let stop_took = stopping.elapsed();
    assert!(
        stop_took < STOP_TIMEOUT,
        "litecoind took {stop_took:?} to stop"
    );
    eprintln!("{} stopped in {stop_took:?}", nodes[restarted].id);
    assert_eq!(nodes[restarted].daemon_pid(), None, "litecoind still runs");
    assert!(
        !nodes[restarted].cookie_file().exists(),
        "a clean litecoind stop removes its cookie"
    );
    let log = std::fs::read_to_string(nodes[restarted].log_path()).unwrap_or_default();
    assert!(!log.contains("unclean stop"), "{}", tail(&log, 20));

    // The others lose it and keep K among themselves, while blocks are mined without it.
    let others = &nodes[..restarted];
    all_eventually(others, "the stopped node leaves every peer list", |n| {
        n.peer_ids()
            .is_some_and(|p| !p.contains(&nodes[restarted].id))
    });
    await_k_peers(others, "the remaining nodes keep K peers");
    let tip = nodes[0].mine(3);
    assert_eq!(tip.0, 8);
    await_tip(others, &tip, "the remaining nodes have 8 blocks");

    // Same datadir and ports, a new agent instance and a new cookie.
    nodes[restarted].spawn_agent();
    if let Err(why) = nodes[restarted].wait_rpc() {
        panic!("the restarted node did not start: {why}");
    }
    let second_cookie = std::fs::read_to_string(nodes[restarted].cookie_file()).expect("cookie");
    assert_ne!(first_cookie, second_cookie, "a restart writes a new cookie");
    await_k_peers(&nodes, "the restarted node rejoins with K peers");
    await_tip(
        &nodes,
        &tip,
        "the restarted node syncs the blocks mined while it was down",
    );
    await_ready(&nodes, "every agent reports ready again");
    eprintln!("whole scenario took {:?}", started.elapsed());
}
