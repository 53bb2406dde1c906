//! `MembershipSnapshot`: one consistent, validated picture of a cluster's records.
//!
//! A snapshot is plain data (no etcd, no tasks) so that consumers' decisions — the peer keeper's
//! plan, the load balancer's model — can be tested by building snapshots by hand. The watcher in
//! [`crate::membership`] publishes a new snapshot for every applied revision.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use crate::endpoint::AddressPolicy;
use crate::names::NodeId;
use crate::record::{NodeRecord, NodeState};

/// Why a record in etcd was left out of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRecord {
    /// The raw key (shown escaped; never used as a name).
    pub key: String,
    /// What was wrong with it.
    pub reason: String,
}

/// Why the policy refuses `record` (its first refused endpoint), or `None` if it is acceptable.
///
/// The watcher uses it to log and count a refusal once per key and revision, before
/// [`MembershipSnapshot::insert_checked`] applies the same rule.
pub fn policy_refusal(record: &NodeRecord, policy: AddressPolicy) -> Option<String> {
    record.endpoints.iter().find_map(|(name, ep)| {
        policy
            .check(ep)
            .err()
            .map(|e| format!("endpoint {name}: {e}"))
    })
}

/// The validated records of one cluster at one etcd revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipSnapshot {
    /// Valid records that passed the address policy, by node id.
    pub records: BTreeMap<NodeId, NodeRecord>,
    /// The etcd revision this view reflects (0 before the first read).
    pub revision: i64,
    /// Set while the watch is broken: the view is the last one known, since this moment.
    pub stale_since: Option<SystemTime>,
    /// Nodes whose operator control key asks them to drain (`peerkeep drain`).
    pub drain_requested: BTreeSet<NodeId>,
    /// Records currently present in etcd but skipped as invalid or refused by the policy.
    pub skipped: Vec<SkippedRecord>,
    /// Invalid records seen since the view started (counted once per key and revision).
    pub invalid_total: u64,
    /// Full re-reads after the first (compaction, broken streams, etcd restarts).
    pub resyncs: u64,
    /// False until the first successful read.
    pub initialized: bool,
}

impl MembershipSnapshot {
    /// Builds a snapshot from records, applying the address policy the same way the watcher
    /// does. For tests and for one-shot reads.
    pub fn from_records(
        records: impl IntoIterator<Item = NodeRecord>,
        revision: i64,
        policy: AddressPolicy,
    ) -> Self {
        let mut snap = Self {
            revision,
            initialized: true,
            ..Self::default()
        };
        for r in records {
            snap.insert_checked(format!("(record {})", r.id), r, policy);
        }
        snap
    }

    /// Inserts a parsed record if every endpoint passes the policy; otherwise records why it was
    /// skipped. Returns whether it was inserted.
    pub fn insert_checked(
        &mut self,
        key: String,
        record: NodeRecord,
        policy: AddressPolicy,
    ) -> bool {
        if let Some(reason) = policy_refusal(&record, policy) {
            self.records.remove(&record.id);
            self.skipped.push(SkippedRecord { key, reason });
            return false;
        }
        self.records.insert(record.id.clone(), record);
        true
    }

    /// Whether the view is the last one known rather than current (the watch is broken).
    pub fn is_stale(&self) -> bool {
        self.stale_since.is_some()
    }

    /// How long the view has been stale, if it is.
    pub fn stale_for(&self) -> Option<Duration> {
        self.stale_since
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
    }

    /// Records in the given state.
    pub fn in_state(&self, state: NodeState) -> impl Iterator<Item = &NodeRecord> {
        self.records.values().filter(move |r| r.state == state)
    }

    /// Records that may be picked as peers (`starting` or `ready`).
    pub fn peerable(&self) -> impl Iterator<Item = &NodeRecord> {
        self.records.values().filter(|r| r.state.is_peerable())
    }
}
