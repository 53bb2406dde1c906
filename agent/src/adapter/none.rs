//! `--adapter none`: the agent registers the node and serves health, but has no way to ask the
//! daemon anything. Every call says so with [`AdapterError::Unsupported`]; the agent falls back
//! to a TCP connect to the node's p2p port for liveness and does no peer keeping.

use std::net::SocketAddr;

use super::{AdapterError, AdapterKind, ConnectOutcome, NodeAdapter, Peer, SyncStatus};

/// The adapter that knows no daemon.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoneAdapter;

const WHY: &str = "no node API is configured (--adapter none): the agent checks the p2p port instead and keeps no peers";

fn unsupported(call: &'static str) -> AdapterError {
    AdapterError::Unsupported {
        adapter: "none",
        call,
        why: WHY,
    }
}

#[async_trait::async_trait]
impl NodeAdapter for NoneAdapter {
    fn kind(&self) -> AdapterKind {
        AdapterKind::None
    }
    async fn probe(&self) -> Result<(), AdapterError> {
        Err(unsupported("probe"))
    }
    async fn peers(&self) -> Result<Vec<Peer>, AdapterError> {
        Err(unsupported("peers"))
    }
    async fn connect(
        &self,
        _addr: SocketAddr,
        _identity: Option<&str>,
    ) -> Result<ConnectOutcome, AdapterError> {
        Err(unsupported("connect"))
    }
    async fn disconnect(&self, _addr: SocketAddr) -> Result<(), AdapterError> {
        Err(unsupported("disconnect"))
    }
    async fn sync_status(&self) -> Result<SyncStatus, AdapterError> {
        Err(unsupported("sync_status"))
    }
}
