//! geth (and other go-ethereum derivatives) through its JSON-RPC with the `admin` API enabled
//! (`--http.api admin,eth`; `--http.vhosts` must admit the host name in `--node-api`).
//!
//! - peers: `admin_peers`. Peers are enode URLs; the identity is the enode's public key (128
//!   hex digits), which the record carries in `labels` (`enode=…`). Inbound peers' addresses
//!   carry ephemeral ports, so the identity is the only reliable key.
//! - connect: `admin_addPeer("enode://<id>@<addr>")`, asynchronous (→ [`ConnectOutcome::Pending`])
//!   and redialed forever by geth; it needs the target's enode id.
//! - disconnect: `admin_removePeer` with the enode geth lists for that address. A peer that
//!   was added but never connected is not listed, so it cannot be found by address: geth keeps
//!   redialing it until it connects (then it can be removed) or geth restarts.
//! - sync: `eth_syncing` and the latest block's age. After the merge `eth_syncing` can be
//!   `false` on a stalled node, which is why the lag is reported too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::Method;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::http::{Body, HttpApi, parse_json};
use super::{
    AdapterError, AdapterKind, ConnectOutcome, Direction, NodeAdapter, Peer, SyncStatus, excerpt,
    lag_since_ms,
};

/// The geth adapter.
#[derive(Debug)]
pub struct GethAdapter {
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
    enode: String,
    network: Network,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Network {
    remote_address: String,
    #[serde(default)]
    inbound: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct NodeInfo {
    enode: String,
}

#[derive(Debug, Deserialize)]
struct LatestBlock {
    number: String,
    timestamp: String,
}

/// The public key of an `enode://<key>@host:port?…` URL, when it is 128 hex digits.
pub fn enode_id(enode: &str) -> Option<&str> {
    let rest = enode.strip_prefix("enode://")?;
    let id = rest.split('@').next()?;
    is_enode_id(id).then_some(id)
}

fn is_enode_id(s: &str) -> bool {
    s.len() == 128 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hex_u64(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

impl GethAdapter {
    /// An adapter over `api`, whose root URL is the JSON-RPC endpoint.
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
        let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let reply = self
            .api
            .send(
                call,
                Method::POST,
                url.clone(),
                Some(Body::Json(body.to_string().into_bytes())),
            )
            .await?;
        if !reply.status.is_success() {
            return Err(AdapterError::Rejected {
                call,
                endpoint: url.to_string(),
                status: Some(reply.status.as_u16()),
                message: format!("{method}: {}", reply.text_excerpt()),
            });
        }
        let rpc: RpcReply = parse_json(call, &url, &reply)?;
        if let Some(e) = rpc.error {
            return Err(AdapterError::Rejected {
                call,
                endpoint: url.to_string(),
                status: None,
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
        self.rpc(call, "admin_peers", json!([])).await
    }
}

#[async_trait::async_trait]
impl NodeAdapter for GethAdapter {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Geth
    }

    async fn probe(&self) -> Result<(), AdapterError> {
        // admin_nodeInfo rather than a plain eth call: a missing admin API must show here.
        self.rpc::<NodeInfo>("probe", "admin_nodeInfo", json!([]))
            .await
            .map(|_| ())
    }

    async fn peers(&self) -> Result<Vec<Peer>, AdapterError> {
        let infos = self.peer_infos("peers").await?;
        Ok(infos
            .into_iter()
            .filter_map(|p| {
                Some(Peer {
                    addr: p.network.remote_address.parse().ok()?,
                    direction: p.network.inbound.map(|i| {
                        if i {
                            Direction::Inbound
                        } else {
                            Direction::Outbound
                        }
                    }),
                    identity: enode_id(&p.enode).map(str::to_owned),
                })
            })
            .collect())
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
    ) -> Result<ConnectOutcome, AdapterError> {
        let Some(id) = identity.filter(|i| is_enode_id(i)) else {
            return Err(AdapterError::Unsupported {
                adapter: "geth",
                call: "connect",
                why: "geth dials enode URLs: the target's record needs its enode id (128 hex digits) in labels (enode=…)",
            });
        };
        let infos = self.peer_infos("connect").await?;
        if infos.iter().any(|p| enode_id(&p.enode) == Some(id)) {
            return Ok(ConnectOutcome::AlreadyConnected);
        }
        let enode = format!("enode://{id}@{addr}");
        let accepted: bool = self.rpc("connect", "admin_addPeer", json!([enode])).await?;
        if !accepted {
            return Err(AdapterError::Rejected {
                call: "connect",
                endpoint: self.api.base().to_string(),
                status: None,
                message: format!("admin_addPeer returned false for {addr}"),
            });
        }
        Ok(ConnectOutcome::Pending)
    }

    async fn disconnect(&self, addr: SocketAddr) -> Result<(), AdapterError> {
        let infos = self.peer_infos("disconnect").await?;
        let Some(p) = infos.iter().find(|p| {
            p.network
                .remote_address
                .parse::<SocketAddr>()
                .is_ok_and(|a| a == addr)
        }) else {
            return Err(AdapterError::Rejected {
                call: "disconnect",
                endpoint: self.api.base().to_string(),
                status: None,
                message: format!("no peer at {addr} in admin_peers"),
            });
        };
        let _: bool = self
            .rpc("disconnect", "admin_removePeer", json!([p.enode]))
            .await?;
        Ok(())
    }

    async fn sync_status(&self) -> Result<SyncStatus, AdapterError> {
        let syncing: Value = self.rpc("sync_status", "eth_syncing", json!([])).await?;
        let latest: LatestBlock = self
            .rpc(
                "sync_status",
                "eth_getBlockByNumber",
                json!(["latest", false]),
            )
            .await?;
        let progress = match (
            syncing
                .get("currentBlock")
                .and_then(Value::as_str)
                .and_then(hex_u64),
            syncing
                .get("highestBlock")
                .and_then(Value::as_str)
                .and_then(hex_u64),
        ) {
            (Some(cur), Some(high)) if high > 0 => Some((cur as f64 / high as f64).min(1.0)),
            _ => None,
        };
        Ok(SyncStatus {
            height: hex_u64(&latest.number),
            progress,
            lag: hex_u64(&latest.timestamp).map(|s| lag_since_ms(s.saturating_mul(1000))),
            synced: syncing == Value::Bool(false),
        })
    }

    async fn own_identity(&self) -> Result<Option<String>, AdapterError> {
        let info: NodeInfo = self
            .rpc("own_identity", "admin_nodeInfo", json!([]))
            .await?;
        Ok(enode_id(&info.enode).map(str::to_owned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enode_ids_are_128_hex_digits() {
        let id = "a".repeat(128);
        assert_eq!(
            enode_id(&format!("enode://{id}@10.0.0.1:30303?discport=0")),
            Some(id.as_str())
        );
        assert_eq!(enode_id("enode://abc@10.0.0.1:30303"), None);
        assert_eq!(enode_id(&format!("enr:{id}")), None);
        assert_eq!(hex_u64("0x1f"), Some(31));
        assert_eq!(hex_u64("1f"), None);
    }
}
