//! Bitcoin Core-style JSON-RPC: bitcoind, litecoind and the other forks that kept its RPC.
//!
//! - peers: `getpeerinfo` (`addr`, `inbound`, `subver`). The agent starts the daemon with
//!   `-uacomment={node_id}`, so `subver` (e.g. `/LitecoinCore:0.21.2.1(node-3)/`) carries the
//!   peer's node id — the only way to recognise an inbound peer, whose `addr` has an
//!   ephemeral port.
//! - connect: `addnode <addr> onetry` (a one-off dial; `add` would make the daemon redial
//!   forever, and `addnode … remove` does not disconnect).
//! - disconnect: `disconnectnode <addr>`.
//! - sync: `getblockchaininfo` plus the best block's header time for the lag. On regtest
//!   `initialblockdownload` stays true until a recent block exists.
//!
//! Errors may arrive as HTTP 500 (or 404 for unknown methods) with the error in the JSON body;
//! they become [`AdapterError::Rejected`] with the RPC code and message.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use peerkeep_registry::NodeId;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::http::{Body, HttpApi, parse_json};
use super::{
    AdapterError, AdapterKind, ConnectOutcome, Direction, NodeAdapter, Peer, SyncStatus, excerpt,
    lag_since_ms,
};

/// The Bitcoin Core RPC adapter.
#[derive(Debug)]
pub struct BitcoindAdapter {
    api: HttpApi,
    next_id: AtomicU64,
}

#[derive(Debug, Deserialize)]
struct RpcReply {
    #[serde(default)]
    result: Value,
    #[serde(default)]
    error: Option<RpcError>,
}

#[derive(Debug, Deserialize)]
struct RpcError {
    code: i64,
    message: String,
}

#[derive(Debug, Deserialize)]
struct PeerInfo {
    addr: String,
    #[serde(default)]
    inbound: Option<bool>,
    #[serde(default)]
    subver: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChainInfo {
    blocks: u64,
    headers: u64,
    #[serde(default)]
    verificationprogress: Option<f64>,
    #[serde(default)]
    initialblockdownload: Option<bool>,
    bestblockhash: String,
}

#[derive(Debug, Deserialize)]
struct Header {
    time: u64,
}

/// The node id in a user agent such as `/Satoshi:27.0(node-3; other)/`: the first comment that
/// is a valid node id.
pub fn identity_from_subver(subver: &str) -> Option<String> {
    let open = subver.find('(')?;
    let close = subver[open..].find(')')? + open;
    subver[open + 1..close]
        .split(';')
        .map(str::trim)
        .find(|c| c.parse::<NodeId>().is_ok())
        .map(str::to_owned)
}

impl BitcoindAdapter {
    /// An adapter over `api`, whose root URL is the RPC endpoint.
    pub fn new(api: HttpApi) -> Self {
        Self {
            api,
            next_id: AtomicU64::new(1),
        }
    }

    async fn rpc<T: DeserializeOwned>(
        &self,
        call: &'static str,
        method: &str,
        params: Value,
    ) -> Result<T, AdapterError> {
        let url = self.api.base().clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({ "jsonrpc": "1.0", "id": id, "method": method, "params": params });
        let reply = self
            .api
            .send(
                call,
                Method::POST,
                url.clone(),
                Some(Body::Json(body.to_string().into_bytes())),
            )
            .await?;
        // Error replies come as 500/404 with a JSON body; only when that body is not JSON-RPC
        // is the status itself the message.
        let parsed: Result<RpcReply, _> = serde_json::from_slice(&reply.body);
        let rpc = match parsed {
            Ok(r) => r,
            Err(_) if reply.status != StatusCode::OK => {
                return Err(AdapterError::Rejected {
                    call,
                    endpoint: url.to_string(),
                    status: Some(reply.status.as_u16()),
                    message: format!("{method}: {}", reply.text_excerpt()),
                });
            }
            Err(_) => return parse_json(call, &url, &reply),
        };
        if let Some(e) = rpc.error {
            return Err(AdapterError::Rejected {
                call,
                endpoint: url.to_string(),
                status: Some(reply.status.as_u16()),
                message: format!("{method}: RPC error {}: {}", e.code, excerpt(&e.message)),
            });
        }
        serde_json::from_value(rpc.result).map_err(|e| AdapterError::BadResponse {
            call,
            endpoint: url.to_string(),
            detail: format!("{method}: {e}"),
        })
    }

    async fn peer_infos(&self, call: &'static str) -> Result<Vec<PeerInfo>, AdapterError> {
        self.rpc(call, "getpeerinfo", json!([])).await
    }
}

fn to_peer(p: PeerInfo) -> Option<Peer> {
    let addr = p.addr.parse().ok()?;
    Some(Peer {
        addr,
        direction: p.inbound.map(|i| {
            if i {
                Direction::Inbound
            } else {
                Direction::Outbound
            }
        }),
        identity: p.subver.as_deref().and_then(identity_from_subver),
    })
}

#[async_trait::async_trait]
impl NodeAdapter for BitcoindAdapter {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Bitcoind
    }

    async fn probe(&self) -> Result<(), AdapterError> {
        self.rpc::<u64>("probe", "getblockcount", json!([]))
            .await
            .map(|_| ())
    }

    async fn peers(&self) -> Result<Vec<Peer>, AdapterError> {
        let infos = self.peer_infos("peers").await?;
        // Onion/I2P peers and other non-IP addresses cannot be dialed by the agent: skipped.
        Ok(infos.into_iter().filter_map(to_peer).collect())
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        _identity: Option<&str>,
    ) -> Result<ConnectOutcome, AdapterError> {
        let listed = |infos: &[PeerInfo]| {
            infos
                .iter()
                .any(|p| p.addr.parse::<SocketAddr>().is_ok_and(|a| a == addr))
        };
        if listed(&self.peer_infos("connect").await?) {
            return Ok(ConnectOutcome::AlreadyConnected);
        }
        self.rpc::<Value>("connect", "addnode", json!([addr.to_string(), "onetry"]))
            .await?;
        // `onetry` dials before it returns but reports nothing; the peer list tells.
        Ok(if listed(&self.peer_infos("connect").await?) {
            ConnectOutcome::Established
        } else {
            ConnectOutcome::Pending
        })
    }

    async fn disconnect(&self, addr: SocketAddr) -> Result<(), AdapterError> {
        self.rpc::<Value>("disconnect", "disconnectnode", json!([addr.to_string()]))
            .await
            .map(|_| ())
    }

    async fn sync_status(&self) -> Result<SyncStatus, AdapterError> {
        let info: ChainInfo = self
            .rpc("sync_status", "getblockchaininfo", json!([]))
            .await?;
        let header: Header = self
            .rpc(
                "sync_status",
                "getblockheader",
                json!([info.bestblockhash, true]),
            )
            .await?;
        Ok(SyncStatus {
            height: Some(info.blocks),
            progress: info.verificationprogress,
            lag: Some(lag_since_ms(header.time.saturating_mul(1000))),
            synced: !info.initialblockdownload.unwrap_or(false) && info.blocks >= info.headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_comes_from_the_first_valid_ua_comment() {
        assert_eq!(
            identity_from_subver("/LitecoinCore:0.21.2.1(node-3)/").as_deref(),
            Some("node-3")
        );
        assert_eq!(
            identity_from_subver("/Satoshi:27.0(bad id; n1)/").as_deref(),
            Some("n1")
        );
        assert_eq!(identity_from_subver("/Satoshi:27.0/"), None);
        assert_eq!(identity_from_subver("/x(/"), None);
        assert_eq!(identity_from_subver(""), None);
    }
}
