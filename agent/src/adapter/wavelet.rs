//! Wavelet's HTTP API (and devnode's, which copies it).
//!
//! - `GET /ledger`: peers at `.peers[].address` (`null` when there are none), the best block at
//!   `.block.height`, the claim at `.sync_status`. devnode adds `.peers[].id`/`.direction` and
//!   `.block.timestamp_ms`; Wavelet has `.peers[].public_key` as identity and no block time.
//! - `POST /node/connect` and `/node/disconnect` with `{"address":"ip:port"}` and a bearer
//!   token. Errors: 400/500 `{"status":…,"error":…}`, 401 plain text, 429 when rate limited.
//!
//! Wavelet's peer list is its routing table, not live connections: a dead peer can stay listed
//! and disconnecting it answers 500 "not found". So `connect` never short-circuits on "already
//! listed": re-dialing a listed address is how its liveness is tested.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::http::{Body, HttpApi, Reply, parse_json};
use super::{
    AdapterError, AdapterKind, ConnectOutcome, Direction, NodeAdapter, Peer, SyncStatus, excerpt,
};

/// `sync_status` values that mean "synced" in Wavelet's ledger.
const SYNCED_STATUSES: [&str; 2] = [
    "Node is fully synced",
    "Node is taking part in consensus process",
];

/// The Wavelet adapter.
#[derive(Debug)]
pub struct WaveletAdapter {
    api: HttpApi,
}

#[derive(Debug, Deserialize)]
struct Ledger {
    #[serde(default)]
    peers: Option<Vec<LedgerPeer>>,
    #[serde(default)]
    block: Option<Block>,
    #[serde(default)]
    sync_status: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LedgerPeer {
    address: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    direction: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Block {
    #[serde(default)]
    height: Option<u64>,
    #[serde(default)]
    timestamp_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
}

impl WaveletAdapter {
    /// An adapter over `api` (which must carry the bearer token).
    pub fn new(api: HttpApi) -> Self {
        Self { api }
    }

    async fn ledger(&self, call: &'static str) -> Result<Ledger, AdapterError> {
        let url = self.api.url("ledger")?;
        let reply = self.api.send(call, Method::GET, url.clone(), None).await?;
        if reply.status != StatusCode::OK {
            return Err(rejected(call, &url, &reply));
        }
        parse_json(call, &url, &reply)
    }

    async fn node_call(
        &self,
        call: &'static str,
        path: &str,
        addr: SocketAddr,
    ) -> Result<Reply, AdapterError> {
        let url = self.api.url(path)?;
        let body = serde_json::json!({ "address": addr.to_string() }).to_string();
        let reply = self
            .api
            .send(
                call,
                Method::POST,
                url.clone(),
                Some(Body::Json(body.into_bytes())),
            )
            .await?;
        if !reply.status.is_success() {
            return Err(rejected(call, &url, &reply));
        }
        Ok(reply)
    }
}

/// A non-2xx answer: Wavelet's JSON error if there is one, else the text.
fn rejected(call: &'static str, url: &url::Url, reply: &Reply) -> AdapterError {
    let message = match serde_json::from_slice::<ErrorBody>(&reply.body) {
        Ok(e) => excerpt(&e.error),
        Err(_) if reply.status == StatusCode::TOO_MANY_REQUESTS => "rate limited".to_string(),
        Err(_) => reply.text_excerpt(),
    };
    AdapterError::Rejected {
        call,
        endpoint: url.to_string(),
        status: Some(reply.status.as_u16()),
        message,
    }
}

#[async_trait::async_trait]
impl NodeAdapter for WaveletAdapter {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Wavelet
    }

    async fn probe(&self) -> Result<(), AdapterError> {
        self.ledger("probe").await.map(|_| ())
    }

    async fn peers(&self) -> Result<Vec<Peer>, AdapterError> {
        let ledger = self.ledger("peers").await?;
        let mut out = Vec::new();
        for p in ledger.peers.unwrap_or_default() {
            let Ok(addr) = p.address.parse::<SocketAddr>() else {
                // Wavelet lists whatever address a peer claimed; one we cannot dial is skipped
                // rather than failing the whole listing.
                tracing::debug!(address = %excerpt(&p.address), "skipping unparsable Wavelet peer address");
                continue;
            };
            let direction = match p.direction.as_deref() {
                Some("inbound") => Some(Direction::Inbound),
                Some("outbound") => Some(Direction::Outbound),
                _ => None,
            };
            let identity = p.id.or(p.public_key).filter(|s| !s.is_empty());
            out.push(Peer {
                addr,
                direction,
                identity,
            });
        }
        Ok(out)
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        _identity: Option<&str>,
    ) -> Result<ConnectOutcome, AdapterError> {
        let reply = self.node_call("connect", "node/connect", addr).await?;
        // Wavelet dials synchronously ("Successfully connected to …"); devnode can answer
        // "Already connected" or, with --async-connect, "Connecting to …".
        let msg = serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("msg")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        Ok(if msg.starts_with("Already connected") {
            ConnectOutcome::AlreadyConnected
        } else if msg.starts_with("Connecting to") {
            ConnectOutcome::Pending
        } else {
            ConnectOutcome::Established
        })
    }

    async fn disconnect(&self, addr: SocketAddr) -> Result<(), AdapterError> {
        self.node_call("disconnect", "node/disconnect", addr)
            .await
            .map(|_| ())
    }

    async fn sync_status(&self) -> Result<SyncStatus, AdapterError> {
        let ledger = self.ledger("sync_status").await?;
        let block = ledger.block.unwrap_or(Block {
            height: None,
            timestamp_ms: None,
        });
        let lag = block.timestamp_ms.map(|t| {
            let now = super::unix_ms_now();
            Duration::from_millis(now.saturating_sub(t))
        });
        let synced = ledger
            .sync_status
            .as_deref()
            .is_none_or(|s| SYNCED_STATUSES.contains(&s));
        Ok(SyncStatus {
            height: block.height,
            progress: None,
            lag,
            synced,
        })
    }
}
