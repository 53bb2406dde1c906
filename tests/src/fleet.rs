//! A fleet of nodes as production runs them: each a `peerkeep-agent` supervising a `devnode`,
//! talking to it through the Wavelet adapter, registered in a real etcd.
//!
//! Used by the peer-keeping tests and by `scripts/bench peers`. Every node has its own temp dir
//! (token file, agent and daemon logs), free loopback ports, and is killed on drop — the agent
//! and the devnode's process group — so a failed test leaves nothing behind.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

use crate::devnode::fixture::http;
use crate::proc::{die_with_test, free_addr, kill_and_reap, signal, workspace_bin};

/// Settings shared by every node of a fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// etcd client URL the agents use (may be a proxy).
    pub etcd: String,
    /// K.
    pub min_peers: usize,
    /// Lease TTL, e.g. `"2s"`.
    pub lease_ttl: String,
    /// Extra agent flags.
    pub agent_args: Vec<String>,
}

/// One node: the agent and the devnode under it.
pub struct FleetNode {
    /// Node id.
    pub id: String,
    /// devnode's p2p address (advertised).
    pub p2p: SocketAddr,
    /// devnode's HTTP API.
    pub api: SocketAddr,
    /// The agent's health server.
    pub health: SocketAddr,
    dir: TempDir,
    child: Option<Child>,
}

impl FleetNode {
    /// Starts an agent running a devnode. `producer` makes the devnode produce blocks.
    pub fn start(cfg: &FleetConfig, id: &str, producer: bool) -> Self {
        Self::start_with_etcd(cfg, &cfg.etcd, id, producer)
    }

    /// Like [`FleetNode::start`] with a node-specific etcd URL (a proxy that can cut it off).
    pub fn start_with_etcd(cfg: &FleetConfig, etcd: &str, id: &str, producer: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("peerkeep-test-fleet-")
            .tempdir()
            .expect("temp dir");
        let token = format!("t-{}", rand::random::<u64>());
        std::fs::write(dir.path().join("token"), token).expect("token file");
        let (p2p, api, health) = (free_addr(), free_addr(), free_addr());
        let token_file = dir.path().join("token").display().to_string();
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
        let mut cmd = Command::new(workspace_bin("peerkeep-agent"));
        cmd.arg("run")
            .args([
                "--etcd-endpoints",
                etcd,
                "--node-id",
                id,
                "--allow-loopback",
            ])
            .args([
                "--advertise",
                "ip:127.0.0.1",
                "--private-addr",
                "ip:127.0.0.1",
            ])
            .args(["--health-listen", &health.to_string()])
            .args(["--lease-ttl", &cfg.lease_ttl])
            .args(["--min-peers", &cfg.min_peers.to_string()])
            .args(["--drain-delay", "200ms", "--stop-timeout", "5s"])
            .args(["--endpoint", &format!("p2p=:{}", p2p.port())])
            .args(["--endpoint", &format!("api=:{}", api.port())])
            .args([
                "--adapter",
                "wavelet",
                "--node-api",
                &format!("http://{api}"),
            ])
            .args(["--node-api-token-file", &token_file])
            .args(&cfg.agent_args)
            .arg("--")
            .arg(workspace_bin("devnode"))
            .args(["--id", "{node_id}"])
            .args([
                "--p2p-listen",
                &p2p.to_string(),
                "--api-listen",
                &api.to_string(),
            ])
            .args(["--api-token-file", &token_file]);
        if producer {
            cmd.args(["--produce-every", "1s"]);
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let child = die_with_test(&mut cmd)
            .spawn()
            .expect("spawn peerkeep-agent");
        Self {
            id: id.to_owned(),
            p2p,
            api,
            health,
            dir,
            child: Some(child),
        }
    }

    /// The devnode's `/ledger`, if it answers.
    pub fn ledger(&self) -> Option<Value> {
        let (status, body) = http(self.api, "GET", "/ledger", None, None)?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// Node ids of the devnode's live peers (`None` when it does not answer).
    pub fn peer_ids(&self) -> Option<Vec<String>> {
        let l = self.ledger()?;
        Some(
            l["peers"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| p["id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    /// The agent's `/status` JSON.
    pub fn status(&self) -> Option<Value> {
        let (code, body) = http(self.health, "GET", "/status", None, None)?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// One Prometheus sample from the agent's `/metrics` (exact series name, no labels).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http(self.health, "GET", "/metrics", None, None)?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Path of the agent's log (the devnode's output goes to the same file).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// SIGKILL the whole node — agent and devnode — as a crashed container.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Agent first; the devnode it supervised is then an orphan found by its API port.
            kill_and_reap(&mut c);
        }
        self.kill_devnode();
    }

    /// SIGTERM the agent (a graceful container stop) and wait for it.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let st = crate::proc::terminate(&mut c, grace);
        self.kill_devnode();
        st
    }

    /// PID of the agent process, until it is killed or stopped.
    pub fn agent_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The bearer token of the devnode's `/node/connect` and `/node/disconnect`.
    pub fn api_token(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("token")).ok()
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `sig` to the agent.
    pub fn signal_agent(&self, sig: Signal) {
        if let Some(c) = &self.child {
            signal(c, sig);
        }
    }

    fn kill_devnode(&self) {
        if let Some(pid) = self.devnode_pid() {
            // devnode leads its own process group (the supervisor spawns it with pgid = pid).
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// PID of this node's devnode, found in /proc by its `--api-listen` address.
    fn devnode_pid(&self) -> Option<i32> {
        let needle = format!("{}", self.api);
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline);
            (cmdline.contains("devnode") && cmdline.contains(&needle)).then_some(pid)
        })
    }
}

impl Drop for FleetNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether the undirected graph given by each node's peer ids is connected.
pub fn connected(adjacency: &[(String, Vec<String>)]) -> bool {
    use std::collections::{BTreeMap, BTreeSet};
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (n, peers) in adjacency {
        edges.entry(n).or_default();
        for p in peers {
            edges.entry(n).or_default().insert(p);
            edges.entry(p).or_default().insert(n);
        }
    }
    let Some(start) = edges.keys().next().copied() else {
        return true;
    };
    let mut seen = BTreeSet::from([start]);
    let mut todo = vec![start];
    while let Some(n) = todo.pop() {
        for m in edges.get(n).into_iter().flatten() {
            if seen.insert(m) {
                todo.push(m);
            }
        }
    }
    adjacency.iter().all(|(n, _)| seen.contains(n.as_str()))
}
