//! The pure decisions of claiming a node id and a slot: no etcd, no tasks, table-tested.
//!
//! The worker reads the node key and the slot keys, asks these functions what to do, and turns
//! the answer into one compare-guarded transaction. Keeping the rules here means the subtle
//! cases (our own leftover key after a restart, our old slot, a slot key that is not a number)
//! are decided in one place that tests can reach without a server.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::names::{MAX_SLOT, NodeId, Slot};

/// Who holds the node key, as far as the claim is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeKeyHolder {
    /// No key: the id is free.
    Absent,
    /// The key carries our instance token (our own key, possibly under an older lease).
    Ours,
    /// The value is not a record; see [`node_key_holder`].
    Unreadable,
    /// Another instance holds it.
    Other {
        /// Its instance token, or a description when the value cannot be read.
        instance: String,
        /// Its `started_at`, if readable.
        started_at: String,
    },
}

/// The two fields the claim needs, read leniently so that a record written by another agent
/// version (extra or missing optional fields) is still recognised.
#[derive(Deserialize)]
struct HolderFields {
    instance: String,
    #[serde(default)]
    started_at: String,
}

/// Decides who holds the node key from its current value (`None` when absent).
///
/// A value that is not a record at all is reported as [`NodeKeyHolder::Unreadable`]. When
/// claiming, it counts as held by someone unknown: overwriting what we cannot read could steal
/// the id of a live node running a newer format, so we wait for the claim timeout and report it.
/// Once registered, it is damage to our own key and is repaired.
pub(crate) fn node_key_holder(value: Option<&[u8]>, our_instance: &str) -> NodeKeyHolder {
    let Some(bytes) = value else {
        return NodeKeyHolder::Absent;
    };
    match serde_json::from_slice::<HolderFields>(bytes) {
        Ok(h) if h.instance == our_instance => NodeKeyHolder::Ours,
        Ok(h) => NodeKeyHolder::Other {
            instance: h.instance,
            started_at: h.started_at,
        },
        Err(_) => NodeKeyHolder::Unreadable,
    }
}

/// The slot to claim and whether its key already names us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotChoice {
    /// The slot.
    pub slot: Slot,
    /// `slots/{n}` already holds our id (rebind it to our lease rather than create it).
    pub already_ours: bool,
}

/// Chooses the slot to claim, given the current holders of `slots/{n}`.
///
/// In order: our `previous` slot if it is free or still ours (a node keeps its slot across
/// re-registration, so the load balancer keeps its server); else the lowest slot already naming
/// us (left by a previous instance of this node); else the lowest free slot. `None` when every
/// slot up to [`MAX_SLOT`] is held by others.
pub(crate) fn choose_slot(
    holders: &BTreeMap<Slot, String>,
    me: &NodeId,
    previous: Option<Slot>,
) -> Option<SlotChoice> {
    let is_mine = |s: &Slot| holders.get(s).is_some_and(|h| h == me.as_str());
    if let Some(p) = previous
        && (!holders.contains_key(&p) || is_mine(&p))
    {
        return Some(SlotChoice {
            slot: p,
            already_ours: is_mine(&p),
        });
    }
    if let Some(s) = holders.keys().copied().find(|s| is_mine(s)) {
        return Some(SlotChoice {
            slot: s,
            already_ours: true,
        });
    }
    (1..=MAX_SLOT)
        .filter_map(|n| Slot::new(n).ok())
        .find(|s| !holders.contains_key(s))
        .map(|slot| SlotChoice {
            slot,
            already_ours: false,
        })
}

/// Parses the slot keys read under `slots/` into holders. Keys whose last segment is not a slot
/// number in its canonical form (`3`, not `03`) are ignored (they can never be claimed); values are kept as raw text, because a value
/// that is not our id is simply "someone else".
pub(crate) fn slot_holders<'a>(
    slots_prefix: &str,
    kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> BTreeMap<Slot, String> {
    kvs.into_iter()
        .filter_map(|(k, v)| {
            let key = std::str::from_utf8(k).ok()?;
            let slot: Slot = key.strip_prefix(slots_prefix)?.parse().ok()?;
            Some((slot, String::from_utf8_lossy(v).into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(n: u32) -> Slot {
        Slot::new(n).expect("valid slot")
    }

    fn id(s: &str) -> NodeId {
        s.parse().expect("valid id")
    }

    fn holders(pairs: &[(u32, &str)]) -> BTreeMap<Slot, String> {
        pairs
            .iter()
            .map(|(n, h)| (slot(*n), h.to_string()))
            .collect()
    }

    #[test]
    fn slot_choice_table() {
        let me = id("me");
        // (slot holders, previous slot, expected (slot, already ours))
        type Case<'a> = (&'a [(u32, &'a str)], Option<u32>, Option<(u32, bool)>);
        let cases: &[Case] = &[
            (&[], None, Some((1, false))),
            (&[(1, "a"), (2, "b")], None, Some((3, false))),
            (&[(1, "a"), (3, "b")], None, Some((2, false))),
            // Our previous slot, free again after our lease expired: take it back.
            (&[(1, "a")], Some(5), Some((5, false))),
            // Our previous slot still naming us: rebind it.
            (&[(1, "a"), (5, "me")], Some(5), Some((5, true))),
            // Our previous slot taken by someone else meanwhile: lowest free.
            (&[(1, "a"), (5, "b")], Some(5), Some((2, false))),
            // A slot left by an earlier instance of this node wins over a lower free one.
            (&[(1, "a"), (4, "me")], None, Some((4, true))),
        ];
        for (h, prev, want) in cases {
            let got = choose_slot(&holders(h), &me, prev.map(slot));
            let want = want.map(|(n, ours)| SlotChoice {
                slot: slot(n),
                already_ours: ours,
            });
            assert_eq!(got, want, "holders {h:?}, previous {prev:?}");
        }
    }

    #[test]
    fn no_slot_when_all_are_held() {
        let all: BTreeMap<Slot, String> = (1..=MAX_SLOT).map(|n| (slot(n), "x".into())).collect();
        assert_eq!(choose_slot(&all, &id("me"), None), None);
    }

    #[test]
    fn holder_decision_table() {
        let ours = br#"{"id":"n","instance":"abc","started_at":"t0","extra":1}"#;
        let theirs = br#"{"id":"n","instance":"xyz","started_at":"t1"}"#;
        assert_eq!(node_key_holder(None, "abc"), NodeKeyHolder::Absent);
        assert_eq!(node_key_holder(Some(ours), "abc"), NodeKeyHolder::Ours);
        assert_eq!(
            node_key_holder(Some(theirs), "abc"),
            NodeKeyHolder::Other {
                instance: "xyz".into(),
                started_at: "t1".into()
            }
        );
        assert_eq!(
            node_key_holder(Some(b"garbage"), "abc"),
            NodeKeyHolder::Unreadable
        );
    }

    #[test]
    fn slot_keys_are_parsed_and_junk_ignored() {
        let p = "/p/clusters/c/slots/";
        let kvs: Vec<(&[u8], &[u8])> = vec![
            (b"/p/clusters/c/slots/2", b"a"),
            (b"/p/clusters/c/slots/0", b"b"),
            (b"/p/clusters/c/slots/x", b"c"),
            (b"/p/clusters/c/slots/7", b"me"),
            // Not the keys of slots 3 and 4: claiming them would compare `slots/3`.
            (b"/p/clusters/c/slots/03", b"me"),
            (b"/p/clusters/c/slots/+4", b"me"),
        ];
        assert_eq!(slot_holders(p, kvs), holders(&[(2, "a"), (7, "me")]));
    }
}
