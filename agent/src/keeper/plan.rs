//! `plan`: the peer keeper's decision, a pure function with no I/O.
//!
//! Inputs: the peers the daemon reports, the membership view, the parameters and the keeper's
//! memory. Output: connects and disconnects, each with its reason, plus the inputs it used (for
//! `/status` and the logs). The rules are DESIGN.md's "Peer keeper" and "Disconnect only what
//! asked to go"; the tests at the bottom are the table of those rules.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Instant;

use peerkeep_registry::{Endpoint, MembershipSnapshot, NodeId, NodeRecord, NodeState};
use serde::Serialize;

use crate::adapter::{Direction, Peer};

use super::rank::weight;
use super::state::KeeperState;

/// Record labels whose value is a daemon-level peer identity (geth's enode id, for example).
pub const IDENTITY_LABELS: [&str; 2] = ["identity", "enode"];

/// The keeper's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanParams {
    /// This node's id (never its own candidate).
    pub own_id: NodeId,
    /// K: the degree to reach.
    pub min_peers: usize,
    /// The degree above which peers are trimmed.
    pub max_peers: usize,
    /// Also disconnect peers that map to no record (only with a fresh view).
    pub strict_peers: bool,
}

/// Why a peer is disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// Its record says `draining`.
    Draining,
    /// The degree is above `--max-peers`.
    AboveMax,
    /// `--strict-peers` and it maps to no record.
    Unregistered,
    /// A second link to a node already connected (both dialed at once).
    Duplicate,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Dial a candidate at its `p2p` endpoint.
    Connect {
        /// The candidate.
        id: NodeId,
        /// Its advertised address.
        addr: Endpoint,
        /// Its daemon-level identity from the record's labels (geth dials by enode id).
        identity: Option<String>,
    },
    /// Drop a connected peer.
    Disconnect {
        /// The address the daemon listed.
        addr: SocketAddr,
        /// The record it maps to, if any.
        id: Option<NodeId>,
        /// Why.
        reason: DisconnectReason,
    },
}

/// The decision and the inputs behind it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// What to do, disconnects first.
    pub actions: Vec<Action>,
    /// Distinct peers the daemon reports, inbound included (several links to one node count once).
    pub degree: usize,
    /// Connects issued earlier and not yet confirmed.
    pub in_flight: usize,
    /// Eligible candidates, best first.
    pub candidates: Vec<NodeId>,
    /// Connected peers mapped to records, by id.
    pub mapped: BTreeMap<NodeId, SocketAddr>,
    /// Connected peers that map to no record, or ambiguously to several.
    pub unmapped: usize,
}

/// Decides which peers to connect and disconnect.
///
/// - the degree counts every distinct peer the daemon reports, inbound included; two links to
///   the same node count once, and the one not dialed by the smaller id is dropped;
/// - a peer maps to a record when its address is the record's `p2p` endpoint or its identity is
///   the record's id or identity label; when several records claim it, the one not `draining`
///   wins, and without a single such record the peer counts as unmapped and is never
///   disconnected (not even with `strict_peers`);
/// - candidates are peerable records (`starting`/`ready`) with a `p2p` endpoint, not ourselves,
///   not connected, not pending, not backing off, best rendezvous weight first; at most
///   `K − degree − in_flight` of them are dialed;
/// - only peers whose record is `draining` are disconnected, plus the lowest-ranked ones above
///   `max_peers` (outbound first), plus, with `strict_peers` and a fresh view, unmapped ones;
///   unmapped peers are otherwise left alone, and a vanished record is just no candidate;
/// - while the daemon says it is not synced, one outbound link to a `ready` node is kept (dialed
///   beyond K if needed): some daemons only download blocks from peers they dialed.
pub fn plan(
    observed: &[Peer],
    view: &MembershipSnapshot,
    params: &PlanParams,
    state: &KeeperState,
    now: Instant,
) -> Plan {
    let index = RecordIndex::new(view);
    let mut seen = BTreeSet::new();
    let peers: Vec<&Peer> = observed.iter().filter(|p| seen.insert(p.addr)).collect();
    let fresh_view = view.initialized && view.stale_since.is_none();

    let mut out = Plan::default();
    let mut keep: Vec<(&Peer, Option<&NodeRecord>)> = Vec::new();
    let mut links: BTreeMap<&NodeId, Vec<&Peer>> = BTreeMap::new();
    for peer in &peers {
        let mapping = index.lookup(peer);
        // A daemon listing itself (a self-dial) is nobody's record to act on.
        let record = mapping.other_than(&params.own_id);
        let reason = match record {
            Some(r) if r.state == NodeState::Draining => Some(DisconnectReason::Draining),
            Some(r) => {
                links.entry(&r.id).or_default().push(peer);
                None
            }
            // Never disconnect on an ambiguous mapping, even with --strict-peers: the peer may
            // well be registered.
            None if params.strict_peers && fresh_view && !matches!(mapping, Mapping::Ambiguous) => {
                Some(DisconnectReason::Unregistered)
            }
            None => {
                out.unmapped += 1;
                keep.push((peer, None));
                None
            }
        };
        if let Some(reason) = reason {
            out.actions.push(Action::Disconnect {
                addr: peer.addr,
                id: record.map(|r| r.id.clone()),
                reason,
            });
        }
    }
    for (id, node_links) in links {
        let (kept, duplicates) = split_duplicate_links(&params.own_id, id, node_links);
        out.mapped.insert(id.clone(), kept.addr);
        keep.push((kept, view.records.get(id)));
        for dup in duplicates {
            out.actions.push(Action::Disconnect {
                addr: dup.addr,
                id: Some(id.clone()),
                reason: DisconnectReason::Duplicate,
            });
        }
    }
    // Distinct peers: two links to the same node are one peer (the count readiness uses).
    out.degree = degree_in(&index, observed, &params.own_id);

    trim_above_max(&mut keep, params, &mut out.actions);
    let remaining = keep.len();

    out.in_flight = state.pending.len();
    out.candidates = view
        .peerable()
        .filter(|r| r.id != params.own_id)
        .filter(|r| r.p2p().is_some())
        .filter(|r| !out.mapped.contains_key(&r.id))
        .filter(|r| !state.pending.contains_key(&r.id))
        .filter(|r| !state.is_backing_off(&r.id, now))
        .map(|r| r.id.clone())
        .collect();
    out.candidates
        .sort_by_key(|c| std::cmp::Reverse(weight(&params.own_id, c)));

    let want = params.min_peers.saturating_sub(remaining + out.in_flight);
    let mut chosen: Vec<&NodeId> = out.candidates.iter().take(want).collect();
    if state.daemon_synced == Some(false)
        && !has_outbound_to_ready(&keep, view, state)
        && remaining + out.in_flight + chosen.len() < params.max_peers
        && !chosen.iter().any(|id| is_ready(view, id))
    {
        // A syncing daemon may fetch blocks from outbound peers only (Bitcoin Core during its
        // initial download): make sure one link to a ready node is ours, even at K already.
        if let Some(id) = out.candidates.iter().find(|c| is_ready(view, c)) {
            chosen.push(id);
        }
    }
    for id in chosen {
        if let Some(rec) = view.records.get(id)
            && let Some(addr) = rec.p2p()
        {
            out.actions.push(Action::Connect {
                id: id.clone(),
                addr,
                identity: identity_label(rec).map(str::to_owned),
            });
        }
    }
    out
}

fn is_ready(view: &MembershipSnapshot, id: &NodeId) -> bool {
    view.records
        .get(id)
        .is_some_and(|r| r.state == NodeState::Ready)
}

/// Whether an outbound link (established or pending) goes to a ready node.
fn has_outbound_to_ready(
    keep: &[(&Peer, Option<&NodeRecord>)],
    view: &MembershipSnapshot,
    state: &KeeperState,
) -> bool {
    keep.iter().any(|(p, r)| {
        p.direction == Some(Direction::Outbound) && r.is_some_and(|r| r.state == NodeState::Ready)
    }) || state.pending.keys().any(|id| is_ready(view, id))
}

/// Of several links to the same node, the one both ends agree to keep — the link dialed by the
/// node with the smaller id — and the others. Both ends apply the same rule, so they never drop
/// both links. Without the kept link's direction known, nothing is dropped.
fn split_duplicate_links<'p>(
    own: &NodeId,
    other: &NodeId,
    mut links: Vec<&'p Peer>,
) -> (&'p Peer, Vec<&'p Peer>) {
    let wanted = if own < other {
        Direction::Outbound
    } else {
        Direction::Inbound
    };
    match links.iter().position(|p| p.direction == Some(wanted)) {
        Some(i) if links.len() > 1 => {
            let kept = links.remove(i);
            (kept, links)
        }
        // `links` is never empty: an entry exists only once a link was pushed into it.
        _ => (links[0], Vec::new()),
    }
}

/// Above `max_peers`, drops the lowest-ranked mapped peers, outbound before the rest; unmapped
/// peers are not ours to judge and stay.
fn trim_above_max(
    keep: &mut Vec<(&Peer, Option<&NodeRecord>)>,
    params: &PlanParams,
    actions: &mut Vec<Action>,
) {
    if keep.len() <= params.max_peers {
        return;
    }
    let mut trimmable: Vec<(usize, bool, u64)> = keep
        .iter()
        .enumerate()
        .filter_map(|(i, (peer, rec))| {
            let rec = (*rec)?;
            let inbound_last = peer.direction != Some(Direction::Outbound);
            Some((i, inbound_last, weight(&params.own_id, &rec.id)))
        })
        .collect();
    // Outbound first (false sorts before true), then lowest weight.
    trimmable.sort_by_key(|&(_, inbound, w)| (inbound, w));
    let excess = keep.len() - params.max_peers;
    let mut drop: Vec<usize> = trimmable.iter().take(excess).map(|&(i, _, _)| i).collect();
    drop.sort_unstable_by(|a, b| b.cmp(a));
    for i in drop {
        let (peer, rec) = keep.remove(i);
        actions.push(Action::Disconnect {
            addr: peer.addr,
            id: rec.map(|r| r.id.clone()),
            reason: DisconnectReason::AboveMax,
        });
    }
}

/// The daemon-level identity a record publishes in its labels, if any.
pub fn identity_label(rec: &NodeRecord) -> Option<&str> {
    IDENTITY_LABELS
        .iter()
        .find_map(|k| rec.labels.get(*k))
        .map(String::as_str)
}

/// The ids of the records that the daemon's peers map to (ourselves excluded).
pub fn connected_ids(
    observed: &[Peer],
    view: &MembershipSnapshot,
    own: &NodeId,
) -> BTreeSet<NodeId> {
    let index = RecordIndex::new(view);
    observed
        .iter()
        .filter_map(|p| index.lookup(p).other_than(own))
        .map(|r| r.id.clone())
        .collect()
}

/// The number of distinct peers among `observed`, as [`plan`] counts its degree: listings of
/// one address count once, links that map to one record count once (draining records
/// included: they are still peers until disconnected), and every other address counts once
/// (unmapped peers, a daemon listing itself). Readiness uses it, so that the node's readiness
/// and the keeper agree on how many peers it has.
pub fn distinct_degree(observed: &[Peer], view: &MembershipSnapshot, own: &NodeId) -> usize {
    degree_in(&RecordIndex::new(view), observed, own)
}

fn degree_in(index: &RecordIndex<'_>, observed: &[Peer], own: &NodeId) -> usize {
    let mut addrs = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut others = 0;
    for peer in observed.iter().filter(|p| addrs.insert(p.addr)) {
        match index.lookup(peer).other_than(own) {
            Some(r) => {
                ids.insert(&r.id);
            }
            None => others += 1,
        }
    }
    ids.len() + others
}

/// What a peer the daemon lists maps to.
#[derive(Debug, Clone, Copy)]
enum Mapping<'v> {
    /// No record has its address or identity.
    Unknown,
    /// This record.
    Record(&'v NodeRecord),
    /// Several records claim it (an address reused by a new node while an old record lingers,
    /// a copied identity label) and none is clearly the one: the peer is left alone.
    Ambiguous,
}

impl<'v> Mapping<'v> {
    /// Of the records claiming one address or identity: a single one, else the single one not
    /// `draining` — a lingering draining record must not capture a live peer and get it
    /// disconnected — else ambiguous.
    fn among(claims: Option<&Vec<&'v NodeRecord>>) -> Self {
        match claims.map(Vec::as_slice).unwrap_or_default() {
            [] => Self::Unknown,
            [one] => Self::Record(one),
            several => {
                let mut live = several.iter().filter(|r| r.state != NodeState::Draining);
                match (live.next(), live.next()) {
                    (Some(one), None) => Self::Record(one),
                    _ => Self::Ambiguous,
                }
            }
        }
    }

    /// The record, unless it is `own` (a daemon listing itself is nobody's record to act on).
    fn other_than(self, own: &NodeId) -> Option<&'v NodeRecord> {
        match self {
            Self::Record(r) if &r.id != own => Some(r),
            _ => None,
        }
    }
}

/// Maps daemon peers to records by `p2p` address or identity; several records claiming one
/// key are resolved by [`Mapping::among`], never by "last one wins".
struct RecordIndex<'v> {
    by_addr: BTreeMap<SocketAddr, Vec<&'v NodeRecord>>,
    by_identity: BTreeMap<&'v str, Vec<&'v NodeRecord>>,
}

impl<'v> RecordIndex<'v> {
    fn new(view: &'v MembershipSnapshot) -> Self {
        fn claim<'v, K: Ord>(
            map: &mut BTreeMap<K, Vec<&'v NodeRecord>>,
            key: K,
            r: &'v NodeRecord,
        ) {
            let claims = map.entry(key).or_default();
            if !claims.iter().any(|c| c.id == r.id) {
                claims.push(r);
            }
        }
        let mut by_addr = BTreeMap::new();
        let mut by_identity = BTreeMap::new();
        for r in view.records.values() {
            if let Some(p2p) = r.p2p() {
                claim(&mut by_addr, p2p.addr(), r);
            }
            claim(&mut by_identity, r.id.as_str(), r);
            if let Some(v) = identity_label(r) {
                claim(&mut by_identity, v, r);
            }
        }
        Self {
            by_addr,
            by_identity,
        }
    }

    /// By address first; when the address maps to nothing or is ambiguous, by identity.
    fn lookup(&self, peer: &Peer) -> Mapping<'v> {
        let by_addr = Mapping::among(self.by_addr.get(&peer.addr));
        if let Mapping::Record(_) = by_addr {
            return by_addr;
        }
        let by_identity = peer.identity.as_deref().map_or(Mapping::Unknown, |i| {
            Mapping::among(self.by_identity.get(i))
        });
        match (by_addr, by_identity) {
            (_, Mapping::Record(r)) => Mapping::Record(r),
            (Mapping::Ambiguous, _) | (_, Mapping::Ambiguous) => Mapping::Ambiguous,
            _ => Mapping::Unknown,
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
