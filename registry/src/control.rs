//! Operator control keys (`control/{node_id}`) and the administrative writes of the CLI.
//!
//! A control key is the only thing an operator writes into the registry: `{"drain":true}` asks
//! the node's agent to hold its node in `draining`. Its value is parsed here with the same care as
//! a node record, because the watcher reads it from etcd like any other input.
//!
//! [`remove_node`] deletes a node's record and slot claim; it is the cleanup for a node that died
//! without revoking its lease (or for a stray key written by hand). For a live node it is futile —
//! its agent puts the keys back — so it reports whether a live lease held them.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::connect::Etcd;
use crate::error::RegistryError;
use crate::keys::Keyspace;
use crate::names::{NodeId, Slot};

/// Largest accepted control value, in bytes (the same bound as a node record).
pub const MAX_CONTROL_BYTES: usize = crate::record::MAX_RECORD_BYTES;

/// The value of a control key. Unknown fields are ignored, as in node records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlValue {
    /// Hold the node in `draining` while set.
    pub drain: bool,
}

/// Why a control key's value or key is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Larger than [`MAX_CONTROL_BYTES`].
    #[error("control value is {size_bytes} bytes, the limit is {MAX_CONTROL_BYTES}")]
    TooLarge {
        /// Encoded size.
        size_bytes: usize,
    },
    /// Not JSON of the form `{"drain":bool}`.
    #[error("control value is not {{\"drain\":true|false}}: {0}")]
    Invalid(String),
    /// The key's last segment is not a valid node id.
    #[error("control key segment {0:?} is not a valid node id")]
    BadKey(String),
}

impl ControlValue {
    /// A request to drain.
    pub const DRAIN: Self = Self { drain: true };

    /// Parses the value stored under the control key whose last segment is `key_id`.
    pub fn parse(key_id: &str, bytes: &[u8]) -> Result<(NodeId, Self), ControlError> {
        if bytes.len() > MAX_CONTROL_BYTES {
            return Err(ControlError::TooLarge {
                size_bytes: bytes.len(),
            });
        }
        let id: NodeId = key_id
            .parse()
            .map_err(|_| ControlError::BadKey(key_id.chars().take(80).collect()))?;
        let value =
            serde_json::from_slice(bytes).map_err(|e| ControlError::Invalid(e.to_string()))?;
        Ok((id, value))
    }

    /// The stored encoding.
    pub fn encode(&self) -> String {
        format!("{{\"drain\":{}}}", self.drain)
    }
}

/// Asks `id`'s agent to hold its node in `draining` (the key may precede the node).
pub async fn drain(etcd: &Etcd, keyspace: &Keyspace, id: &NodeId) -> Result<(), RegistryError> {
    let key = keyspace.control_key(id);
    etcd.put(&key, ControlValue::DRAIN.encode().into_bytes(), None)
        .await
        .map(drop)
}

/// Withdraws a drain request. Returns whether there was one.
pub async fn undrain(etcd: &Etcd, keyspace: &Keyspace, id: &NodeId) -> Result<bool, RegistryError> {
    let key = keyspace.control_key(id);
    Ok(etcd.delete(&key, None).await?.deleted() > 0)
}

/// What [`remove_node`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal {
    /// Whether `nodes/{id}` existed and was deleted.
    pub record_deleted: bool,
    /// The slot claims (`slots/{n}` holding the id) that were deleted.
    pub slots_deleted: Vec<Slot>,
    /// A lease that held the keys and is still alive (seconds left): the node's agent is
    /// running and will put its keys back.
    pub live_lease: Option<(i64, i64)>,
}

impl Removal {
    /// Whether anything was deleted.
    pub fn deleted_anything(&self) -> bool {
        self.record_deleted || !self.slots_deleted.is_empty()
    }
}

/// Deletes `id`'s record and the slot claims whose value is `id`, in one transaction guarded by
/// what was read, so a slot claimed by another node in between is never deleted.
pub async fn remove_node(
    etcd: &Etcd,
    keyspace: &Keyspace,
    id: &NodeId,
) -> Result<Removal, RegistryError> {
    let node_key = keyspace.node_key(id);
    let record = etcd.get(&node_key, None).await?;
    let slots = etcd.get_prefix(&keyspace.slots_prefix()).await?;
    let mut compares = Vec::new();
    let mut deletes = Vec::new();
    let mut leases = Vec::new();
    let mut removal = Removal::default();
    if let Some(kv) = record.kvs().first() {
        compares.push(Compare::mod_revision(
            node_key.as_str(),
            CompareOp::Equal,
            kv.mod_revision(),
        ));
        deletes.push(TxnOp::delete(node_key.as_str(), None));
        leases.push(kv.lease());
        removal.record_deleted = true;
    }
    let slots_prefix = keyspace.slots_prefix();
    for kv in slots
        .kvs()
        .iter()
        .filter(|kv| kv.value() == id.as_str().as_bytes())
    {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        compares.push(Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            kv.mod_revision(),
        ));
        deletes.push(TxnOp::delete(key.as_str(), None));
        leases.push(kv.lease());
        // A claim under a malformed slot key is removed too, but only real slots are reported.
        if let Some(slot) = key.strip_prefix(&slots_prefix).and_then(|n| n.parse().ok()) {
            removal.slots_deleted.push(slot);
        }
    }
    if deletes.is_empty() {
        return Ok(removal);
    }
    leases.sort_unstable();
    leases.dedup();
    for lease in leases.into_iter().filter(|l| *l != 0) {
        if let Some(ttl) = etcd.lease_ttl(lease).await? {
            removal.live_lease = Some((lease, ttl));
            break;
        }
    }
    let txn = Txn::new().when(compares).and_then(deletes);
    let resp = etcd.txn(&node_key, txn).await?;
    if !resp.succeeded() {
        return Err(RegistryError::Request {
            endpoints: etcd.endpoints().join(","),
            op: "remove",
            key: node_key,
            detail: "the node's keys changed while removing them; nothing was deleted, try again"
                .to_owned(),
        });
    }
    Ok(removal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_values() {
        let (id, v) = ControlValue::parse("n1", br#"{"drain":true,"by":"ops"}"#).expect("valid");
        assert_eq!((id.as_str(), v), ("n1", ControlValue::DRAIN));
        assert_eq!(
            ControlValue::parse("n1", ControlValue::DRAIN.encode().as_bytes()),
            Ok((id, ControlValue::DRAIN))
        );
        for bad in [&b"true"[..], b"{}", br#"{"drain":"yes"}"#, b""] {
            assert!(ControlValue::parse("n1", bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            ControlValue::parse("a/b", br#"{"drain":true}"#),
            Err(ControlError::BadKey(_))
        ));
        let big = format!(r#"{{"drain":true,"x":"{}"}}"#, "a".repeat(4096));
        assert!(matches!(
            ControlValue::parse("n1", big.as_bytes()),
            Err(ControlError::TooLarge { .. })
        ));
    }
}
