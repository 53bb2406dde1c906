//! `NodeRecord`, the JSON value stored under `nodes/{node_id}`, and its validation.
//!
//! Parsing is the validation: [`NodeRecord::parse`] is the only way consumers turn etcd bytes into
//! a record, and it enforces every rule of the schema (size, JSON shape, name and endpoint syntax,
//! known state, id equal to the key's last segment). Unknown fields are ignored so that newer
//! agents can add fields without breaking older consumers.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::endpoint::Endpoint;
use crate::names::{EndpointName, NodeId, Slot};

/// Largest accepted encoded record, in bytes.
pub const MAX_RECORD_BYTES: usize = 4096;

/// Where a node is in its life, as far as peers and load balancers are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// The daemon answers and can be peered with, but it is not synced or is short of peers.
    Starting,
    /// May receive client traffic.
    Ready,
    /// Leaving: remove from the load balancer now and do not pick as a new peer.
    Draining,
}

impl NodeState {
    /// The lower-case name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Draining => "draining",
        }
    }
    /// Whether peers may pick this node as a new peer.
    pub fn is_peerable(self) -> bool {
        matches!(self, Self::Starting | Self::Ready)
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown state name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown node state {0:?} (expected starting, ready or draining)")]
pub struct UnknownState(pub String);

impl FromStr for NodeState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, UnknownState> {
        match s {
            "starting" => Ok(Self::Starting),
            "ready" => Ok(Self::Ready),
            "draining" => Ok(Self::Draining),
            other => Err(UnknownState(other.chars().take(40).collect())),
        }
    }
}

/// One node's registration, as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node id; equals the last segment of the record's key.
    pub id: NodeId,
    /// Lifecycle state.
    pub state: NodeState,
    /// Named endpoints. `p2p` is what peers dial; others are what the load balancer dials.
    pub endpoints: BTreeMap<EndpointName, Endpoint>,
    /// The node's slot (server `s<slot>` in the load balancer).
    pub slot: Slot,
    /// Random token made at each agent start; distinguishes a restarted agent from a live twin.
    pub instance: String,
    /// The agent's version string.
    #[serde(default)]
    pub version: String,
    /// When the agent started (RFC 3339, UTC).
    #[serde(default)]
    pub started_at: String,
    /// Free-form labels (for example a geth enode id). Display only: never rendered into config.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Why bytes read from etcd are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Larger than [`MAX_RECORD_BYTES`].
    #[error("record is {size_bytes} bytes, the limit is {MAX_RECORD_BYTES}")]
    TooLarge {
        /// Encoded size.
        size_bytes: usize,
    },
    /// Not JSON, or JSON that breaks a field rule (the message names the field).
    #[error("record is not a valid node record: {0}")]
    Invalid(String),
    /// The `id` field disagrees with the key.
    #[error("record id {record_id:?} does not match its key's node id {key_id:?}")]
    IdMismatch {
        /// The id in the key.
        key_id: String,
        /// The id in the value.
        record_id: String,
    },
    /// The key's last segment is not a valid node id.
    #[error("key segment {0:?} is not a valid node id")]
    BadKey(String),
}

impl NodeRecord {
    /// Parses and validates the value stored under the node key whose last segment is `key_id`.
    pub fn parse(key_id: &str, bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge {
                size_bytes: bytes.len(),
            });
        }
        let key_id: NodeId = key_id
            .parse()
            .map_err(|_| RecordError::BadKey(key_id.chars().take(80).collect()))?;
        let record: NodeRecord =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Invalid(e.to_string()))?;
        if record.id != key_id {
            return Err(RecordError::IdMismatch {
                key_id: key_id.to_string(),
                record_id: record.id.to_string(),
            });
        }
        Ok(record)
    }

    /// Encodes the record as stored in etcd, refusing records that would exceed the size limit.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let bytes = serde_json::to_vec(self).map_err(|e| RecordError::Invalid(e.to_string()))?;
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge {
                size_bytes: bytes.len(),
            });
        }
        Ok(bytes)
    }

    /// The named endpoint, if published.
    pub fn endpoint(&self, name: &str) -> Option<Endpoint> {
        self.endpoints
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| *v)
    }

    /// The `p2p` endpoint peers dial, if published.
    pub fn p2p(&self) -> Option<Endpoint> {
        self.endpoint("p2p")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> &'static str {
        r#"{"id":"node-3","state":"ready","endpoints":{"p2p":"203.0.113.7:3000","health":"10.0.1.5:8080"},
            "slot":3,"instance":"5f0c9a2e7b1d4c36","version":"peerkeep-agent 0.1.0",
            "started_at":"2026-11-26T10:00:00Z","labels":{},"future_field":[1,2]}"#
    }

    #[test]
    fn parses_design_example_and_ignores_unknown_fields() {
        let r = NodeRecord::parse("node-3", sample().as_bytes()).expect("valid");
        assert_eq!(r.state, NodeState::Ready);
        assert_eq!(r.slot.get(), 3);
        assert_eq!(r.p2p().map(|e| e.port()), Some(3000));
    }

    #[test]
    fn rejects_each_rule() {
        let cases: &[(&str, &str)] = &[
            ("node-3", "not json"),
            ("node-4", sample()),
            ("node-3", &sample().replace("\"ready\"", "\"sleeping\"")),
            (
                "node-3",
                &sample().replace("203.0.113.7:3000", "203.0.113.7:0"),
            ),
            (
                "node-3",
                &sample().replace("203.0.113.7:3000", "evil\nhost:1"),
            ),
            ("node-3", &sample().replace("\"p2p\"", "\"p 2p\"")),
            ("node-3", &sample().replace("\"slot\":3", "\"slot\":0")),
            ("bad key", sample()),
        ];
        for (key, value) in cases {
            assert!(
                NodeRecord::parse(key, value.as_bytes()).is_err(),
                "{key}: {value}"
            );
        }
        let big = sample().replace(
            "\"labels\":{}",
            &format!("\"labels\":{{\"x\":\"{}\"}}", "a".repeat(4096)),
        );
        assert!(matches!(
            NodeRecord::parse("node-3", big.as_bytes()),
            Err(RecordError::TooLarge { .. })
        ));
    }
}
