//! The wavelet-stack peer policy, re-implemented so that it can be measured next to peerkeep's
//! keeper on the same daemons, the same etcd and the same machine.
//!
//! What it reproduces: the loop that wavelet-stack runs beside every node
//! (`perlin-network/wavelet-stack`, `nodes/wavelet-stack-node/bin/init`, `runWavelet`):
//!
//! 1. sleep (`sleep $[10 + ($RANDOM % 10)]`: 10–19 s, before the first round too);
//! 2. read the node's peers from its own API (`curl localhost:9000/ledger | jq .peers[].address`);
//! 3. read the registered nodes from etcd (`curl $peersURL | jq …`), without this node;
//! 4. disconnect every peer that is not registered, one `POST /node/disconnect` each;
//! 5. connect to every registered node that is not a peer, one `POST /node/connect` each — in
//!    the variant issue 6 describes, only while the node has fewer than K + 1 peers.
//!
//! Its failure handling is reproduced too, because it is the point of the comparison: the script
//! turns a failed `curl` into an empty list. A failed etcd read therefore makes every peer look
//! unregistered and disconnects all of them (an etcd blip drops every in-stack link), and a
//! failed `/ledger` read makes the node look peerless, so it dials every registered node again.
//!
//! Not reproduced: the script's `pkill -9 wavelet` after more than 10 failed disconnects in a row
//! (the bench cannot restart a daemon that an agent supervises), and its etcd v2 registration
//! with a 30 s TTL (the agents register every node under their leases, for both policies, so
//! both read the same registry).
//!
//! [`decide`] is the decision as a pure function; [`Driver`] runs one loop per node as a tokio
//! task and counts the API calls it makes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use peerkeep_registry::{AddressPolicy, Etcd, Keyspace, NodeId, read_once};
use serde_json::{Value, json};
use tokio::task::{AbortHandle, JoinSet};

/// One call the script makes to the node's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `POST /node/connect {"address": …}`.
    Connect(SocketAddr),
    /// `POST /node/disconnect {"address": …}`.
    Disconnect(SocketAddr),
}

/// One round of the script. `peers` are the addresses the node lists, `registered` the p2p
/// addresses of the other registered nodes; `None` means that read failed, which the script
/// treats as an empty list. Disconnects come first, as in the script.
pub fn decide(
    peers: Option<&BTreeSet<SocketAddr>>,
    registered: Option<&BTreeSet<SocketAddr>>,
    k: usize,
) -> Vec<Call> {
    let empty = BTreeSet::new();
    let peers = peers.unwrap_or(&empty);
    let registered = registered.unwrap_or(&empty);
    let mut calls: Vec<Call> = peers
        .difference(registered)
        .map(|a| Call::Disconnect(*a))
        .collect();
    if peers.len() < k + 1 {
        calls.extend(registered.difference(peers).map(|a| Call::Connect(*a)));
    }
    calls
}

/// How the script is run.
#[derive(Debug, Clone, Copy)]
pub struct WaveletParams {
    /// K: connects happen while a node has fewer than K + 1 peers.
    pub k: usize,
    /// The fixed part of the sleep between rounds (the script: 10 s).
    pub period: Duration,
    /// The random part, uniform in `0..=jitter` (the script: 0–9 s).
    pub jitter: Duration,
}

/// What the script needs to know about one node.
#[derive(Debug, Clone)]
pub struct ScriptNode {
    /// The node's id (its own record is not a peer candidate).
    pub id: NodeId,
    /// The daemon's HTTP API.
    pub api: SocketAddr,
    /// Bearer token for connect/disconnect.
    pub token: String,
}

/// API calls made by all loops together.
#[derive(Debug, Default)]
pub struct CallCounts {
    /// `POST /node/connect` calls.
    pub connects: AtomicU64,
    /// `POST /node/disconnect` calls.
    pub disconnects: AtomicU64,
    /// Rounds in which the etcd read or the `/ledger` read failed.
    pub failed_reads: AtomicU64,
}

/// Everything a loop shares with the others.
#[derive(Clone)]
struct Shared {
    etcd: Etcd,
    keyspace: Keyspace,
    http: reqwest::Client,
    params: WaveletParams,
    counts: Arc<CallCounts>,
}

/// The script running beside every node of a fleet. Dropping it stops every loop.
pub struct Driver {
    shared: Shared,
    tasks: JoinSet<()>,
    handles: BTreeMap<NodeId, AbortHandle>,
}

impl Driver {
    /// A driver with no loops yet.
    pub fn new(
        etcd: Etcd,
        keyspace: Keyspace,
        http: reqwest::Client,
        params: WaveletParams,
    ) -> Self {
        Self {
            shared: Shared {
                etcd,
                keyspace,
                http,
                params,
                counts: Arc::default(),
            },
            tasks: JoinSet::new(),
            handles: BTreeMap::new(),
        }
    }

    /// Starts the loop of one node (the script starts with its node's container).
    pub fn start(&mut self, node: ScriptNode) {
        let id = node.id.clone();
        let handle = self.tasks.spawn(node_loop(node, self.shared.clone()));
        if let Some(old) = self.handles.insert(id, handle) {
            old.abort();
        }
    }

    /// Stops the loop of one node (its container was killed).
    pub fn stop(&mut self, id: &NodeId) {
        if let Some(h) = self.handles.remove(id) {
            h.abort();
        }
    }

    /// The call counters.
    pub fn counts(&self) -> &CallCounts {
        &self.shared.counts
    }
}

async fn node_loop(node: ScriptNode, s: Shared) {
    loop {
        tokio::time::sleep(round_sleep(&s.params)).await;
        round(&node, &s).await;
    }
}

fn round_sleep(p: &WaveletParams) -> Duration {
    let jitter_ms = u64::try_from(p.jitter.as_millis()).unwrap_or(u64::MAX);
    p.period + Duration::from_millis(rand::random_range(0..=jitter_ms))
}

async fn round(node: &ScriptNode, s: &Shared) {
    let peers = listed_peers(&s.http, node.api).await;
    let registered = registered_peers(s, &node.id).await;
    if peers.is_none() || registered.is_none() {
        s.counts.failed_reads.fetch_add(1, Ordering::Relaxed);
    }
    for call in decide(peers.as_ref(), registered.as_ref(), s.params.k) {
        let (path, addr, counter) = match call {
            Call::Connect(a) => ("connect", a, &s.counts.connects),
            Call::Disconnect(a) => ("disconnect", a, &s.counts.disconnects),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // The script logs a failed call and carries on; so does this loop.
        let _ = s
            .http
            .post(format!("http://{}/node/{path}", node.api))
            .bearer_auth(&node.token)
            .json(&json!({ "address": addr.to_string() }))
            .send()
            .await;
    }
}

/// The addresses the daemon lists as peers, or `None` if `/ledger` did not answer with JSON.
async fn listed_peers(http: &reqwest::Client, api: SocketAddr) -> Option<BTreeSet<SocketAddr>> {
    let resp = http.get(format!("http://{api}/ledger")).send().await.ok()?;
    let v: Value = resp.error_for_status().ok()?.json().await.ok()?;
    Some(
        v["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["address"].as_str()?.parse().ok())
            .collect(),
    )
}

/// The p2p addresses of every registered node but `own`, or `None` if etcd could not be read.
async fn registered_peers(s: &Shared, own: &NodeId) -> Option<BTreeSet<SocketAddr>> {
    let policy = AddressPolicy {
        allow_loopback: true,
    };
    let snap = read_once(&s.etcd, &s.keyspace, policy).await.ok()?;
    Some(
        snap.records
            .values()
            .filter(|r| &r.id != own)
            .filter_map(|r| r.p2p().map(|e| e.addr()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ports: &[u16]) -> BTreeSet<SocketAddr> {
        ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect()
    }

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn below_k_plus_one_connects_to_every_missing_registered_node() {
        let calls = decide(Some(&set(&[1, 2])), Some(&set(&[1, 2, 3, 4, 5])), 3);
        assert_eq!(
            calls,
            vec![
                Call::Connect(addr(3)),
                Call::Connect(addr(4)),
                Call::Connect(addr(5))
            ]
        );
    }

    #[test]
    fn at_k_plus_one_peers_nothing_is_connected() {
        let calls = decide(
            Some(&set(&[1, 2, 3, 4])),
            Some(&set(&[1, 2, 3, 4, 5, 6])),
            3,
        );
        assert!(calls.is_empty(), "{calls:?}");
    }

    #[test]
    fn unregistered_peers_are_disconnected_first() {
        let calls = decide(Some(&set(&[1, 9])), Some(&set(&[1, 2])), 3);
        assert_eq!(
            calls,
            vec![Call::Disconnect(addr(9)), Call::Connect(addr(2))]
        );
    }

    #[test]
    fn failed_etcd_read_disconnects_every_peer() {
        let calls = decide(Some(&set(&[1, 2, 3, 4])), None, 3);
        assert_eq!(
            calls,
            vec![
                Call::Disconnect(addr(1)),
                Call::Disconnect(addr(2)),
                Call::Disconnect(addr(3)),
                Call::Disconnect(addr(4)),
            ]
        );
    }

    #[test]
    fn failed_ledger_read_dials_every_registered_node() {
        let calls = decide(None, Some(&set(&[1, 2, 3, 4, 5])), 3);
        assert_eq!(calls.len(), 5);
        assert!(calls.iter().all(|c| matches!(c, Call::Connect(_))));
    }

    #[test]
    fn sleep_stays_within_period_and_jitter() {
        let p = WaveletParams {
            k: 3,
            period: Duration::from_secs(10),
            jitter: Duration::from_secs(9),
        };
        for _ in 0..100 {
            let d = round_sleep(&p);
            assert!(d >= p.period && d <= p.period + p.jitter, "{d:?}");
        }
    }
}
