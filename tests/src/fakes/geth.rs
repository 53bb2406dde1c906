//! A fake geth JSON-RPC with the admin API: `admin_addPeer` is asynchronous (the peer shows up
//! in `admin_peers` only when the test completes it), inbound peers carry ephemeral ports, and
//! unknown methods answer JSON-RPC error -32601 with HTTP 200.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::{FakeServer, Recorded, Reply, lock};

/// One peer in `admin_peers`.
#[derive(Debug, Clone)]
pub struct GethPeer {
    /// Enode id (128 hex digits).
    pub id: String,
    /// `network.remoteAddress`.
    pub remote: String,
    /// `network.inbound`.
    pub inbound: bool,
}

/// Shared state of a [`FakeGeth`].
#[derive(Debug, Default)]
pub struct GethState {
    /// Connected peers.
    pub peers: Vec<GethPeer>,
    /// Enode URLs passed to `admin_addPeer` (geth redials these forever).
    pub added: Vec<String>,
    /// Enode URLs passed to `admin_removePeer`.
    pub removed: Vec<String>,
    /// `eth_syncing` result.
    pub syncing: Value,
    /// Latest block number and timestamp (seconds).
    pub latest: (u64, u64),
}

/// The fake.
pub struct FakeGeth {
    /// The server.
    pub server: FakeServer,
    /// Its state.
    pub state: Arc<Mutex<GethState>>,
    /// Its own enode id.
    pub own_id: String,
}

impl FakeGeth {
    /// Starts the fake with enode id `own_id`.
    pub fn start(own_id: &str) -> Self {
        let state = Arc::new(Mutex::new(GethState {
            syncing: Value::Bool(false),
            latest: (0x10, 1_600_000_000),
            ..Default::default()
        }));
        let (st, me) = (state.clone(), own_id.to_string());
        let server = FakeServer::start(move |r: &Recorded| {
            let req = r.json();
            let id = req["id"].clone();
            let params = req["params"].clone();
            let mut s = lock(&st);
            let result = match req["method"].as_str().unwrap_or("") {
                "admin_nodeInfo" => json!({
                    "enode": format!("enode://{me}@127.0.0.1:30303?discport=0"),
                    "id": "ff", "name": "Geth/v1.14.0"
                }),
                "admin_peers" => Value::Array(
                    s.peers
                        .iter()
                        .map(|p| {
                            json!({
                                "enode": format!("enode://{}@{}", p.id, p.remote),
                                "id": "ff", "name": "Geth/v1.14.0", "caps": ["eth/68"],
                                "network": {
                                    "localAddress": "127.0.0.1:30303",
                                    "remoteAddress": p.remote,
                                    "inbound": p.inbound, "trusted": false, "static": !p.inbound
                                },
                                "protocols": {}
                            })
                        })
                        .collect(),
                ),
                "admin_addPeer" => {
                    s.added.push(params[0].as_str().unwrap_or("").to_string());
                    Value::Bool(true)
                }
                "admin_removePeer" => {
                    let enode = params[0].as_str().unwrap_or("").to_string();
                    s.peers
                        .retain(|p| !enode.starts_with(&format!("enode://{}@", p.id)));
                    s.removed.push(enode);
                    Value::Bool(true)
                }
                "eth_syncing" => s.syncing.clone(),
                "eth_getBlockByNumber" => json!({
                    "number": format!("{:#x}", s.latest.0),
                    "timestamp": format!("{:#x}", s.latest.1),
                    "hash": "0x00"
                }),
                other => {
                    return Reply::json(json!({
                        "jsonrpc": "2.0", "id": id,
                        "error": { "code": -32601, "message": format!("the method {other} does not exist/is not available") }
                    }));
                }
            };
            Reply::json(json!({ "jsonrpc": "2.0", "id": id, "result": result }))
        });
        Self {
            server,
            state,
            own_id: own_id.to_string(),
        }
    }

    /// Makes every pending `admin_addPeer` a connected outbound peer.
    pub fn complete_dials(&self) {
        let mut s = lock(&self.state);
        let added = std::mem::take(&mut s.added);
        for enode in added {
            if let Some((id, rest)) = enode
                .strip_prefix("enode://")
                .and_then(|e| e.split_once('@'))
            {
                s.peers.push(GethPeer {
                    id: id.into(),
                    remote: rest.split('?').next().unwrap_or(rest).into(),
                    inbound: false,
                });
            }
        }
    }
}
