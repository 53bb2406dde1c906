//! A fake Wavelet API with the shapes of Wavelet's gateway: `/ledger` with `peers: null` when
//! empty and `public_key` identities, bearer-protected `/node/connect|disconnect` answering 401
//! in plain text, 400/500 as `{"status":…,"error":…}`, and 429 when "rate limited".

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::{FakeServer, Recorded, Reply, lock};

/// Shared state of a [`FakeWavelet`].
#[derive(Debug, Default)]
pub struct WaveletState {
    /// Listed peers (routing table): address strings.
    pub peers: BTreeSet<String>,
    /// Addresses a connect succeeds for; others fail with 500.
    pub dialable: BTreeSet<String>,
    /// Block height reported.
    pub height: u64,
    /// `sync_status` reported.
    pub sync_status: String,
}

/// The fake.
pub struct FakeWavelet {
    /// The server.
    pub server: FakeServer,
    /// Its state, editable by the test.
    pub state: Arc<Mutex<WaveletState>>,
    /// Answer every request with 429 while set.
    pub rate_limited: Arc<AtomicBool>,
}

fn err(status: u16, reason: &str, msg: &str) -> Reply {
    Reply::json_status(status, json!({ "status": reason, "error": msg }))
}

impl FakeWavelet {
    /// Starts the fake; node calls need `Authorization: Bearer <token>`.
    pub fn start(token: &str) -> Self {
        let state = Arc::new(Mutex::new(WaveletState {
            sync_status: "Node is fully synced".into(),
            ..Default::default()
        }));
        let rate_limited = Arc::new(AtomicBool::new(false));
        let (st, rl, token) = (
            state.clone(),
            rate_limited.clone(),
            format!("Bearer {token}"),
        );
        let server = FakeServer::start(move |r: &Recorded| {
            if rl.load(Ordering::SeqCst) {
                return Reply::text(429, "Too Many Requests");
            }
            let mut s = lock(&st);
            match (r.method.as_str(), r.path.as_str()) {
                ("GET", "/ledger") => {
                    let peers: Vec<Value> = s
                        .peers
                        .iter()
                        .map(|a| json!({ "address": a, "public_key": format!("pk-{a}") }))
                        .collect();
                    Reply::json(json!({
                        "public_key": "00",
                        "address": "127.0.0.1:3000",
                        "num_accounts": 1,
                        "sync_status": s.sync_status,
                        "block": { "height": s.height, "id": "00", "merkle_root": "00", "transactions": 0 },
                        "preferred": null,
                        "peers": if peers.is_empty() { Value::Null } else { Value::Array(peers) },
                    }))
                }
                ("POST", "/node/connect" | "/node/disconnect") => {
                    if r.authorization.as_deref() != Some(token.as_str()) {
                        return Reply::text(401, "Unauthorized");
                    }
                    let Some(addr) = r
                        .json()
                        .get("address")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                    else {
                        return err(400, "Bad Request", "address is missing");
                    };
                    if r.path == "/node/connect" {
                        if !s.dialable.contains(&addr) {
                            return err(
                                500,
                                "Internal Server Error",
                                "error connecting to peer: dial failed",
                            );
                        }
                        s.peers.insert(addr.clone());
                        Reply::json(json!({ "msg": format!("Successfully connected to {addr}") }))
                    } else if s.peers.remove(&addr) {
                        Reply::json(
                            json!({ "msg": format!("Successfully disconnected from {addr}") }),
                        )
                    } else {
                        err(
                            500,
                            "Internal Server Error",
                            "error disconnecting from peer: peer not found",
                        )
                    }
                }
                _ => Reply::text(404, "Not Found"),
            }
        });
        Self {
            server,
            state,
            rate_limited,
        }
    }
}
