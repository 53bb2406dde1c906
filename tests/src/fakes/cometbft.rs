//! A fake CometBFT RPC: `/net_info` (peers with `node_info.id`, `listen_addr`, `remote_ip`,
//! `is_outbound`), `/dial_peers` (records what it was asked to dial; errors in a JSON-RPC
//! `error` object) and `/status` (`sync_info` with string heights and RFC 3339 times).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::{FakeServer, Recorded, Reply, lock};

/// Shared state of a [`FakeCometbft`].
#[derive(Debug, Default)]
pub struct CometState {
    /// `/net_info` peers: (node id, listen_addr, remote_ip, is_outbound).
    pub peers: Vec<(String, String, String, bool)>,
    /// `latest_block_height`.
    pub height: u64,
    /// `latest_block_time`.
    pub time: String,
    /// `catching_up`.
    pub catching_up: bool,
}

/// The fake.
pub struct FakeCometbft {
    /// The server.
    pub server: FakeServer,
    /// Its state.
    pub state: Arc<Mutex<CometState>>,
}

impl FakeCometbft {
    /// Starts the fake.
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(CometState {
            height: 42,
            time: "2019-08-01T11:52:22.818762194Z".into(),
            ..Default::default()
        }));
        let st = state.clone();
        let server = FakeServer::start(move |r: &Recorded| {
            let s = lock(&st);
            match r.path.as_str() {
                "/net_info" => {
                    let peers: Vec<Value> = s
                        .peers
                        .iter()
                        .map(|(id, listen, ip, out)| {
                            json!({
                                "node_info": { "id": id, "listen_addr": listen, "moniker": "n" },
                                "is_outbound": out,
                                "remote_ip": ip,
                                "connection_status": {}
                            })
                        })
                        .collect();
                    Reply::json(json!({
                        "jsonrpc": "2.0", "id": -1,
                        "result": { "listening": true, "listeners": [], "n_peers": peers.len().to_string(), "peers": peers }
                    }))
                }
                "/dial_peers" => {
                    if r.path_and_query.contains("persistent=false") {
                        Reply::json(json!({
                            "jsonrpc": "2.0", "id": -1,
                            "result": { "log": "Dialing peers in progress. See /net_info for details" }
                        }))
                    } else {
                        Reply::json_status(
                            500,
                            json!({
                                "jsonrpc": "2.0", "id": -1,
                                "error": { "code": -32603, "message": "Internal error", "data": "missing persistent" }
                            }),
                        )
                    }
                }
                "/status" => Reply::json(json!({
                    "jsonrpc": "2.0", "id": -1,
                    "result": { "sync_info": {
                        "latest_block_height": s.height.to_string(),
                        "latest_block_time": s.time,
                        "catching_up": s.catching_up
                    } }
                })),
                _ => Reply::json_status(
                    404,
                    json!({"jsonrpc": "2.0", "id": -1, "error": {"code": -32601, "message": "Method not found"}}),
                ),
            }
        });
        Self { server, state }
    }
}
