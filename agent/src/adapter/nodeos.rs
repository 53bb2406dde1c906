//! EOSIO / Antelope `nodeos` with the net and chain API plugins.
//!
//! - peers: `POST /v1/net/connections`. The list mixes live links, links nodeos is still
//!   (re)trying, and inbound links; only entries with a completed handshake and an open socket
//!   count. Outbound entries carry the dialed address in `peer`; inbound ones have an empty
//!   `peer` and are keyed by the address the peer announced in its handshake (`p2p_address`,
//!   `"host:port - id"`), falling back to the remote endpoint.
//! - connect/disconnect: `POST /v1/net/connect|disconnect` with a bare JSON string body
//!   (`"host:port"`); success is HTTP 201 with a message string. Connect is asynchronous:
//!   "added connection" says nothing about whether the dial will work, hence
//!   [`ConnectOutcome::Pending`]. Disconnect finds connections by their configured address
//!   only, so an inbound peer cannot be dropped from this side ("no known connection").
//! - sync: `POST /v1/chain/get_info`; `head_block_time` is UTC without a `Z`. nodeos makes no
//!   "synced" claim, so the lag is what matters.

use std::net::SocketAddr;

use reqwest::Method;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::http::{Body, HttpApi, Reply, parse_json};
use super::{
    AdapterError, AdapterKind, ConnectOutcome, Direction, NodeAdapter, Peer, SyncStatus, excerpt,
    lag_since_ms, parse_time_ms,
};

/// The nodeos adapter.
#[derive(Debug)]
pub struct NodeosAdapter {
    api: HttpApi,
}

#[derive(Debug, Deserialize)]
struct Connection {
    #[serde(default)]
    peer: String,
    #[serde(default)]
    connecting: bool,
    #[serde(default)]
    is_socket_open: Option<bool>,
    #[serde(default)]
    remote_ip: Option<String>,
    #[serde(default)]
    remote_port: Option<String>,
    #[serde(default)]
    last_handshake: Option<Handshake>,
}

#[derive(Debug, Deserialize)]
struct Handshake {
    #[serde(default)]
    network_version: u64,
    #[serde(default)]
    node_id: String,
    #[serde(default)]
    p2p_address: String,
}

#[derive(Debug, Deserialize)]
struct Info {
    head_block_num: u64,
    head_block_time: String,
}

impl NodeosAdapter {
    /// An adapter over `api` (the nodeos HTTP root).
    pub fn new(api: HttpApi) -> Self {
        Self { api }
    }

    async fn post(
        &self,
        call: &'static str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(url::Url, Reply), AdapterError> {
        let url = self.api.url(path)?;
        let body = body.map(|b| Body::Json(b.to_string().into_bytes()));
        let reply = self.api.send(call, Method::POST, url.clone(), body).await?;
        if !reply.status.is_success() {
            return Err(AdapterError::Rejected {
                call,
                endpoint: url.to_string(),
                status: Some(reply.status.as_u16()),
                message: error_message(&reply),
            });
        }
        Ok((url, reply))
    }

    async fn post_json<T: DeserializeOwned>(
        &self,
        call: &'static str,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, AdapterError> {
        let (url, reply) = self.post(call, path, body).await?;
        parse_json(call, &url, &reply)
    }
}

/// nodeos' error body: `{"code":500,"message":…,"error":{"what":…,"details":[{"message":…}]}}`.
fn error_message(reply: &Reply) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(&reply.body) else {
        return reply.text_excerpt();
    };
    let detail = v["error"]["details"][0]["message"]
        .as_str()
        .or(v["error"]["what"].as_str())
        .or(v["message"].as_str());
    detail.map_or_else(|| reply.text_excerpt(), excerpt)
}

fn to_peer(c: Connection) -> Option<Peer> {
    let hs = c.last_handshake?;
    if c.connecting || c.is_socket_open == Some(false) || hs.network_version == 0 {
        return None;
    }
    let identity =
        Some(hs.node_id.clone()).filter(|id| !id.is_empty() && id.bytes().any(|b| b != b'0'));
    if !c.peer.is_empty() {
        return Some(Peer {
            addr: c.peer.parse().ok()?,
            direction: Some(Direction::Outbound),
            identity,
        });
    }
    let announced = hs
        .p2p_address
        .split(" - ")
        .next()
        .and_then(|a| a.trim().parse::<SocketAddr>().ok());
    let remote = || {
        let ip = c.remote_ip.as_deref()?.parse().ok()?;
        let port = c.remote_port.as_deref()?.parse().ok()?;
        Some(SocketAddr::new(ip, port))
    };
    Some(Peer {
        addr: announced.or_else(remote)?,
        direction: Some(Direction::Inbound),
        identity,
    })
}

#[async_trait::async_trait]
impl NodeAdapter for NodeosAdapter {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Nodeos
    }

    async fn probe(&self) -> Result<(), AdapterError> {
        self.post_json::<Info>("probe", "v1/chain/get_info", None)
            .await
            .map(|_| ())
    }

    async fn peers(&self) -> Result<Vec<Peer>, AdapterError> {
        let conns: Vec<Connection> = self.post_json("peers", "v1/net/connections", None).await?;
        Ok(conns.into_iter().filter_map(to_peer).collect())
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        _identity: Option<&str>,
    ) -> Result<ConnectOutcome, AdapterError> {
        let msg: String = self
            .post_json(
                "connect",
                "v1/net/connect",
                Some(Value::String(addr.to_string())),
            )
            .await?;
        Ok(if msg.contains("already") {
            ConnectOutcome::AlreadyConnected
        } else {
            ConnectOutcome::Pending
        })
    }

    async fn disconnect(&self, addr: SocketAddr) -> Result<(), AdapterError> {
        let target = addr.to_string();
        let (url, reply) = self
            .post(
                "disconnect",
                "v1/net/disconnect",
                Some(Value::String(target)),
            )
            .await?;
        let msg: String = parse_json("disconnect", &url, &reply)?;
        if msg.contains("no known connection") {
            return Err(AdapterError::Rejected {
                call: "disconnect",
                endpoint: url.to_string(),
                status: Some(reply.status.as_u16()),
                message: excerpt(&msg),
            });
        }
        Ok(())
    }

    async fn sync_status(&self) -> Result<SyncStatus, AdapterError> {
        let info: Info = self
            .post_json("sync_status", "v1/chain/get_info", None)
            .await?;
        let lag = parse_time_ms(&info.head_block_time).map(lag_since_ms);
        Ok(SyncStatus {
            height: Some(info.head_block_num),
            progress: None,
            lag,
            synced: true,
        })
    }
}
