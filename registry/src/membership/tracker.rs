//! The watcher's bookkeeping, without I/O: raw etcd entries in, [`MembershipSnapshot`] out.
//!
//! Every key the watcher reads or is told about goes through [`Tracker::put`],
//! [`Tracker::delete`] or [`Tracker::replace_all`]. Values are parsed once, when their revision is
//! first seen, so that an invalid record is logged and counted exactly once per key and revision
//! — also across re-reads after a compaction, which keep the entries whose revision did not move.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::control::ControlValue;
use crate::endpoint::AddressPolicy;
use crate::keys::Keyspace;
use crate::names::NodeId;
use crate::record::NodeRecord;
use crate::view::{MembershipSnapshot, SkippedRecord, policy_refusal};

/// One key-value pair as read from etcd, detached from the client's types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawKv {
    /// The full key, lossily decoded (a non-UTF-8 segment can never be a valid name anyway).
    pub key: String,
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The revision of the last change to this key.
    pub mod_revision: i64,
}

/// A parsed value and the revision it was parsed at.
#[derive(Debug, Clone)]
struct Entry<T> {
    mod_revision: i64,
    parsed: Result<T, String>,
}

/// What a key under the cluster prefix holds.
enum KeyKind<'k> {
    Node(&'k str),
    Control(&'k str),
    /// Slots and anything unknown: not part of the view.
    Other,
}

/// The current state of one cluster's keys and the counters of the view.
#[derive(Debug)]
pub(crate) struct Tracker {
    keyspace: Keyspace,
    policy: AddressPolicy,
    nodes_prefix: String,
    control_prefix: String,
    nodes: BTreeMap<String, Entry<NodeRecord>>,
    /// `Ok(Some(id))` when the key asks `id` to drain, `Ok(None)` for a valid "don't drain".
    control: BTreeMap<String, Entry<Option<NodeId>>>,
    revision: i64,
    invalid_total: u64,
    resyncs: u64,
    initialized: bool,
}

impl Tracker {
    /// An empty, uninitialized view of the keyspace's cluster.
    pub fn new(keyspace: Keyspace, policy: AddressPolicy) -> Self {
        Self {
            nodes_prefix: keyspace.nodes_prefix(),
            control_prefix: keyspace.control_prefix(),
            keyspace,
            policy,
            nodes: BTreeMap::new(),
            control: BTreeMap::new(),
            revision: 0,
            invalid_total: 0,
            resyncs: 0,
            initialized: false,
        }
    }

    /// The cluster prefix the tracker expects keys under.
    pub fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    /// Whether the first full read has been applied.
    pub fn initialized(&self) -> bool {
        self.initialized
    }

    /// Replaces everything with a full read taken at `revision`. Entries whose revision did not
    /// change keep their parse (and are not counted again).
    pub fn replace_all(&mut self, kvs: Vec<RawKv>, revision: i64) {
        let old_nodes = std::mem::take(&mut self.nodes);
        let old_control = std::mem::take(&mut self.control);
        for kv in kvs {
            let kept = match self.kind(&kv.key) {
                KeyKind::Node(_) => old_nodes
                    .get(&kv.key)
                    .filter(|e| e.mod_revision == kv.mod_revision)
                    .map(|e| {
                        self.nodes.insert(kv.key.clone(), e.clone());
                    }),
                KeyKind::Control(_) => old_control
                    .get(&kv.key)
                    .filter(|e| e.mod_revision == kv.mod_revision)
                    .map(|e| {
                        self.control.insert(kv.key.clone(), e.clone());
                    }),
                KeyKind::Other => Some(()),
            };
            if kept.is_none() {
                self.put(kv);
            }
        }
        if self.initialized {
            self.resyncs += 1;
        }
        self.initialized = true;
        self.revision = revision;
    }

    /// Applies a put seen by the watch.
    pub fn put(&mut self, kv: RawKv) {
        self.revision = self.revision.max(kv.mod_revision);
        match self.kind(&kv.key) {
            KeyKind::Node(segment) => {
                let parsed = NodeRecord::parse(segment, &kv.value)
                    .map_err(|e| e.to_string())
                    .and_then(|r| match policy_refusal(&r, self.policy) {
                        Some(reason) => Err(reason),
                        None => Ok(r),
                    });
                let entry = self.checked(&kv, parsed);
                self.nodes.insert(kv.key, entry);
            }
            KeyKind::Control(segment) => {
                let parsed = ControlValue::parse(segment, &kv.value)
                    .map(|(id, v)| v.drain.then_some(id))
                    .map_err(|e| e.to_string());
                let entry = self.checked(&kv, parsed);
                self.control.insert(kv.key, entry);
            }
            KeyKind::Other => {}
        }
    }

    /// Applies a delete seen by the watch at `revision`.
    pub fn delete(&mut self, key: &str, revision: i64) {
        self.revision = self.revision.max(revision);
        self.nodes.remove(key);
        self.control.remove(key);
    }

    /// Records that the view has seen everything up to `revision` (a progress notification).
    pub fn advance(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// The view as a snapshot; `stale_since` is the watcher's to decide.
    pub fn snapshot(&self, stale_since: Option<SystemTime>) -> MembershipSnapshot {
        let mut snap = MembershipSnapshot {
            revision: self.revision,
            stale_since,
            invalid_total: self.invalid_total,
            resyncs: self.resyncs,
            initialized: self.initialized,
            ..MembershipSnapshot::default()
        };
        for (key, entry) in &self.nodes {
            match &entry.parsed {
                Ok(record) => {
                    snap.insert_checked(key.clone(), record.clone(), self.policy);
                }
                Err(reason) => snap.skipped.push(skipped(key, reason)),
            }
        }
        for (key, entry) in &self.control {
            match &entry.parsed {
                Ok(Some(id)) => {
                    snap.drain_requested.insert(id.clone());
                }
                Ok(None) => {}
                Err(reason) => snap.skipped.push(skipped(key, reason)),
            }
        }
        snap
    }

    fn kind<'k>(&self, key: &'k str) -> KeyKind<'k> {
        if let Some(segment) = key.strip_prefix(self.nodes_prefix.as_str()) {
            KeyKind::Node(segment)
        } else if let Some(segment) = key.strip_prefix(self.control_prefix.as_str()) {
            KeyKind::Control(segment)
        } else {
            KeyKind::Other
        }
    }

    /// Wraps a parse result, logging and counting it when invalid. Each call is for a new
    /// (key, revision): callers reuse entries whose revision did not change.
    fn checked<T>(&mut self, kv: &RawKv, parsed: Result<T, String>) -> Entry<T> {
        if let Err(reason) = &parsed {
            self.invalid_total += 1;
            tracing::warn!(
                key = ?kv.key,
                revision = kv.mod_revision,
                %reason,
                "skipping invalid entry in etcd"
            );
        }
        Entry {
            mod_revision: kv.mod_revision,
            parsed,
        }
    }
}

fn skipped(key: &str, reason: &str) -> SkippedRecord {
    SkippedRecord {
        // Debug formatting escapes control characters and quotes: the key is shown, never used.
        key: format!("{key:?}"),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::ClusterName;

    fn tracker(allow_loopback: bool) -> Tracker {
        let ks = Keyspace::new("/p", "c".parse::<ClusterName>().expect("valid")).expect("valid");
        Tracker::new(ks, AddressPolicy { allow_loopback })
    }

    fn record(id: &str, p2p: &str) -> Vec<u8> {
        format!(
            r#"{{"id":"{id}","state":"ready","endpoints":{{"p2p":"{p2p}"}},"slot":1,"instance":"i"}}"#
        )
        .into_bytes()
    }

    fn kv(key: &str, value: Vec<u8>, rev: i64) -> RawKv {
        RawKv {
            key: key.to_owned(),
            value,
            mod_revision: rev,
        }
    }

    #[test]
    fn invalid_counted_once_per_revision_across_relists() {
        let mut t = tracker(false);
        let good = kv("/p/clusters/c/nodes/a", record("a", "10.0.0.1:1"), 2);
        let bad = kv("/p/clusters/c/nodes/b", b"nope".to_vec(), 3);
        t.replace_all(vec![good.clone(), bad.clone()], 3);
        assert_eq!(t.snapshot(None).invalid_total, 1);
        t.replace_all(vec![good.clone(), bad.clone()], 5);
        let s = t.snapshot(None);
        assert_eq!((s.invalid_total, s.resyncs, s.revision), (1, 1, 5));
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.skipped.len(), 1);
        t.put(kv("/p/clusters/c/nodes/b", b"still bad".to_vec(), 6));
        assert_eq!(t.snapshot(None).invalid_total, 2);
        t.delete("/p/clusters/c/nodes/b", 7);
        let s = t.snapshot(None);
        assert!(s.skipped.is_empty());
        assert_eq!(s.revision, 7);
    }

    #[test]
    fn policy_refusals_are_skipped_and_counted() {
        let mut strict = tracker(false);
        strict.put(kv("/p/clusters/c/nodes/a", record("a", "127.0.0.1:1"), 2));
        let s = strict.snapshot(None);
        assert!(s.records.is_empty());
        assert_eq!(s.invalid_total, 1);
        let mut lax = tracker(true);
        lax.put(kv("/p/clusters/c/nodes/a", record("a", "127.0.0.1:1"), 2));
        lax.put(kv("/p/clusters/c/nodes/z", record("z", "0.0.0.0:1"), 3));
        let s = lax.snapshot(None);
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.invalid_total, 1);
    }

    #[test]
    fn control_keys_fill_drain_requested() {
        let mut t = tracker(false);
        t.put(kv(
            "/p/clusters/c/control/a",
            br#"{"drain":true}"#.to_vec(),
            2,
        ));
        t.put(kv(
            "/p/clusters/c/control/b",
            br#"{"drain":false}"#.to_vec(),
            3,
        ));
        t.put(kv("/p/clusters/c/control/c", b"drain".to_vec(), 4));
        t.put(kv("/p/clusters/c/slots/1", b"a".to_vec(), 5));
        let s = t.snapshot(None);
        let ids: Vec<_> = s.drain_requested.iter().map(|i| i.to_string()).collect();
        assert_eq!(ids, ["a"]);
        assert_eq!(s.invalid_total, 1);
        assert_eq!(s.revision, 5);
        t.delete("/p/clusters/c/control/a", 6);
        assert!(t.snapshot(None).drain_requested.is_empty());
    }

    #[test]
    fn skipped_keys_are_escaped() {
        let mut t = tracker(false);
        t.put(kv("/p/clusters/c/nodes/a\nb", record("a", "10.0.0.1:1"), 2));
        let s = t.snapshot(None);
        assert_eq!(s.skipped[0].key, r#""/p/clusters/c/nodes/a\nb""#);
    }
}
