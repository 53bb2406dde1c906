//! A fake nodeos net and chain API, from nodeos' documented shapes: POST bodies are bare JSON
//! strings, success is HTTP 201 with a message string, connect is asynchronous ("added
//! connection" and nothing happens until the test completes the handshake), and
//! `/v1/net/connections` mixes live, retrying and inbound entries.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::{FakeServer, Recorded, Reply, lock};

const ZERO_ID: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One connection as the fake lists it.
#[derive(Debug, Clone)]
pub struct Conn {
    /// `peer`: the configured address ("" for inbound).
    pub peer: String,
    /// Remote endpoint.
    pub remote: String,
    /// `connecting`.
    pub connecting: bool,
    /// Handshake done (otherwise `last_handshake` is zeroed).
    pub handshake: Option<(String, String)>,
}

/// Shared state of a [`FakeNodeos`].
#[derive(Debug, Default)]
pub struct NodeosState {
    /// The connection list.
    pub conns: Vec<Conn>,
    /// Head block number.
    pub head: u64,
    /// `head_block_time` (no `Z`).
    pub head_time: String,
}

/// The fake.
pub struct FakeNodeos {
    /// The server.
    pub server: FakeServer,
    /// Its state.
    pub state: Arc<Mutex<NodeosState>>,
}

fn conn_json(c: &Conn) -> Value {
    let (ip, port) = c.remote.rsplit_once(':').unwrap_or(("", ""));
    let hs = match &c.handshake {
        Some((node_id, p2p)) => json!({
            "network_version": 1212, "chain_id": "cf05", "node_id": node_id,
            "key": "EOS1111111111111111111111111111111114T1Anm", "time": "1717000000000000000",
            "p2p_address": p2p, "last_irreversible_block_num": 10, "head_num": 12,
            "os": "linux", "agent": "EOS Test Agent", "generation": 1
        }),
        None => json!({
            "network_version": 0, "chain_id": ZERO_ID, "node_id": ZERO_ID,
            "key": "EOS1111111111111111111111111111111114T1Anm", "time": "0",
            "p2p_address": "", "last_irreversible_block_num": 0, "head_num": 0,
            "os": "", "agent": "", "generation": 0
        }),
    };
    json!({
        "peer": c.peer, "remote_ip": ip, "remote_port": port,
        "connecting": c.connecting, "syncing": false, "is_bp_peer": false,
        "is_socket_open": !c.connecting, "is_blocks_only": false, "is_transactions_only": false,
        "last_handshake": hs
    })
}

impl FakeNodeos {
    /// Starts the fake.
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(NodeosState {
            head: 100,
            head_time: "2020-01-01T00:00:00.000".into(),
            ..Default::default()
        }));
        let st = state.clone();
        let server = FakeServer::start(move |r: &Recorded| {
            let mut s = lock(&st);
            let arg = r.json().as_str().map(str::to_owned);
            match r.path.as_str() {
                "/v1/net/connections" => {
                    Reply::json(Value::Array(s.conns.iter().map(conn_json).collect()))
                }
                "/v1/net/connect" => {
                    let Some(host) = arg else {
                        return bad_request();
                    };
                    if s.conns.iter().any(|c| c.peer == host) {
                        return Reply::json_status(201, json!("already connected"));
                    }
                    s.conns.push(Conn {
                        peer: host.clone(),
                        remote: host,
                        connecting: true,
                        handshake: None,
                    });
                    Reply::json_status(201, json!("added connection"))
                }
                "/v1/net/disconnect" => {
                    let Some(host) = arg else {
                        return bad_request();
                    };
                    let before = s.conns.len();
                    s.conns.retain(|c| c.peer != host);
                    if s.conns.len() < before {
                        Reply::json_status(201, json!("connection removed"))
                    } else {
                        Reply::json_status(201, json!("no known connection for host"))
                    }
                }
                "/v1/chain/get_info" => Reply::json(json!({
                    "server_version": "d1bc8d3", "chain_id": "cf05",
                    "head_block_num": s.head, "last_irreversible_block_num": s.head - 2,
                    "head_block_id": "0000", "head_block_time": s.head_time,
                    "head_block_producer": "eosio"
                })),
                _ => Reply::json_status(
                    404,
                    json!({"code": 404, "message": "Not Found", "error": {"code": 0, "name": "", "what": "Unknown Endpoint", "details": []}}),
                ),
            }
        });
        Self { server, state }
    }

    /// Completes the handshake of the outbound connection to `peer`.
    pub fn complete(&self, peer: &str, node_id: &str) {
        let mut s = lock(&self.state);
        for c in s.conns.iter_mut().filter(|c| c.peer == peer) {
            c.connecting = false;
            c.handshake = Some((node_id.into(), format!("{peer} - {}", &node_id[..7])));
        }
    }

    /// Adds an inbound connection from `remote` whose handshake announced `p2p`.
    pub fn add_inbound(&self, remote: &str, p2p: &str, node_id: &str) {
        lock(&self.state).conns.push(Conn {
            peer: String::new(),
            remote: remote.into(),
            connecting: false,
            handshake: Some((node_id.into(), format!("{p2p} - {}", &node_id[..7]))),
        });
    }
}

fn bad_request() -> Reply {
    Reply::json_status(
        400,
        json!({"code": 400, "message": "Bad Request", "error": {"code": 3200006, "name": "invalid_http_request", "what": "invalid http request", "details": [{"message": "Unable to parse valid input from POST body"}]}}),
    )
}
