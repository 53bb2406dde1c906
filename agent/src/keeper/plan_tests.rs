//! The rules of `plan`, one table row per rule.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use peerkeep_registry::{AddressPolicy, MembershipSnapshot, NodeId, NodeRecord, NodeState, Slot};

use super::*;
use crate::adapter::{Direction, Peer};
use crate::keeper::state::KeeperState;

fn id(s: &str) -> NodeId {
    s.parse().expect("valid id")
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 3000))
}

fn record(name: &str, n: u8, state: NodeState) -> NodeRecord {
    NodeRecord {
        id: id(name),
        state,
        endpoints: BTreeMap::from([(
            "p2p".parse().expect("valid"),
            addr(n).to_string().parse().expect("valid"),
        )]),
        slot: Slot::new(u32::from(n)).expect("valid"),
        instance: "i".into(),
        version: String::new(),
        started_at: String::new(),
        labels: BTreeMap::new(),
    }
}

/// `me` is 10.0.0.1; `n1..` are 10.0.0.2.. in the given states.
fn view(states: &[NodeState]) -> MembershipSnapshot {
    let mut records = vec![record("me", 1, NodeState::Ready)];
    for (i, s) in states.iter().enumerate() {
        let n = u8::try_from(i + 2).expect("small");
        records.push(record(&format!("n{}", i + 1), n, *s));
    }
    MembershipSnapshot::from_records(records, 10, AddressPolicy::default())
}

fn peer(n: u8, dir: Option<Direction>) -> Peer {
    Peer {
        addr: addr(n),
        direction: dir,
        identity: None,
    }
}

fn params(k: usize, max: usize) -> PlanParams {
    PlanParams {
        own_id: id("me"),
        min_peers: k,
        max_peers: max,
        strict_peers: false,
    }
}

fn connects(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Connect { id, .. } => Some(id.to_string()),
            Action::Disconnect { .. } => None,
        })
        .collect()
}

fn disconnects(p: &Plan) -> Vec<(SocketAddr, DisconnectReason)> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Disconnect { addr, reason, .. } => Some((*addr, *reason)),
            Action::Connect { .. } => None,
        })
        .collect()
}

use NodeState::{Draining, Ready, Starting};

#[test]
fn connects_up_to_k_from_ready_and_starting_records() {
    let v = view(&[Ready, Starting, Ready, Ready, Draining]);
    let p = plan(
        &[],
        &v,
        &params(3, 6),
        &KeeperState::default(),
        Instant::now(),
    );
    assert_eq!(connects(&p).len(), 3);
    assert!(
        !connects(&p).contains(&"n5".to_string()),
        "draining is no candidate"
    );
    assert!(!connects(&p).contains(&"me".to_string()), "never itself");
    assert_eq!(p.candidates.len(), 4);
}

#[test]
fn degree_counts_inbound_and_unmapped_peers() {
    let v = view(&[Ready, Ready, Ready, Ready]);
    let observed = [
        peer(2, Some(Direction::Inbound)),
        Peer {
            addr: SocketAddr::from(([192, 0, 2, 9], 1)),
            direction: None,
            identity: None,
        },
    ];
    let p = plan(
        &observed,
        &v,
        &params(3, 6),
        &KeeperState::default(),
        Instant::now(),
    );
    assert_eq!(p.degree, 2);
    assert_eq!(p.unmapped, 1);
    assert_eq!(connects(&p).len(), 1, "K − degree");
    assert!(
        !connects(&p).contains(&"n1".to_string()),
        "already connected"
    );
}

#[test]
fn duplicate_listings_count_once() {
    let v = view(&[Ready, Ready, Ready]);
    let observed = [peer(2, None), peer(2, None)];
    let p = plan(
        &observed,
        &v,
        &params(3, 6),
        &KeeperState::default(),
        Instant::now(),
    );
    assert_eq!(p.degree, 1);
    assert_eq!(connects(&p).len(), 2);
}

#[test]
fn peers_map_by_identity_when_the_address_differs() {
    let mut v = view(&[Ready, Ready]);
    if let Some(r) = v.records.get_mut(&id("n2")) {
        r.labels.insert("enode".into(), "abcdef".into());
    }
    let observed = [
        Peer {
            addr: SocketAddr::from(([10, 0, 0, 2], 51234)),
            direction: Some(Direction::Inbound),
            identity: Some("n1".into()),
        },
        Peer {
            addr: SocketAddr::from(([10, 0, 0, 3], 40000)),
            direction: Some(Direction::Inbound),
            identity: Some("abcdef".into()),
        },
    ];
    let p = plan(
        &observed,
        &v,
        &params(3, 6),
        &KeeperState::default(),
        Instant::now(),
    );
    assert_eq!(
        p.mapped.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
        ["n1", "n2"]
    );
    assert_eq!(p.unmapped, 0);
}

#[test]
fn pending_connects_count_as_in_flight() {
    let v = view(&[Ready, Ready, Ready, Ready]);
    let now = Instant::now();
    let mut st = KeeperState::default();
    let target = v.records[&id("n1")].p2p().expect("p2p");
    st.connect_started(id("n1"), target, now + Duration::from_secs(5));
    st.connect_started(id("n2"), target, now + Duration::from_secs(5));
    let p = plan(&[], &v, &params(3, 6), &st, now);
    assert_eq!(p.in_flight, 2);
    assert_eq!(connects(&p).len(), 1);
    assert!(!connects(&p).contains(&"n1".to_string()));
}

#[test]
fn backing_off_candidates_are_skipped() {
    let v = view(&[Ready, Ready]);
    let now = Instant::now();
    let mut st = KeeperState::default();
    st.record_failure(&id("n1"), now, 0.0);
    let p = plan(&[], &v, &params(3, 6), &st, now);
    assert_eq!(connects(&p), ["n2"]);
    let later = plan(&[], &v, &params(3, 6), &st, now + Duration::from_secs(2));
    assert_eq!(connects(&later).len(), 2);
}

#[test]
fn only_draining_peers_are_disconnected() {
    let v = view(&[Ready, Draining, Starting]);
    let observed = [peer(2, None), peer(3, None), peer(4, None)];
    let p = plan(
        &observed,
        &v,
        &params(3, 6),
        &KeeperState::default(),
        Instant::now(),
    );
    assert_eq!(disconnects(&p), vec![(addr(3), DisconnectReason::Draining)]);
}

#[test]
fn vanished_record_is_not_disconnected() {
    // n1 is connected but its record is gone (dead, or cut off from etcd): leave it be.
    let v = view(&[Ready, Ready]);
    let observed = [peer(9, Some(Direction::Outbound))];
    let p = plan(
        &observed,
        &v,
        &params(3, 6),
        &KeeperState::default(),
        Instant::now(),
    );
    assert!(disconnects(&p).is_empty());
    assert_eq!(p.unmapped, 1);
    assert_eq!(connects(&p).len(), 2);
}

#[test]
fn strict_peers_disconnects_unmapped_only_with_a_fresh_view() {
    let mut v = view(&[Ready]);
    let observed = [peer(9, None), peer(2, None)];
    let mut prm = params(1, 6);
    prm.strict_peers = true;
    let p = plan(&observed, &v, &prm, &KeeperState::default(), Instant::now());
    assert_eq!(
        disconnects(&p),
        vec![(addr(9), DisconnectReason::Unregistered)]
    );
    v.stale_since = Some(SystemTime::now());
    let stale = plan(&observed, &v, &prm, &KeeperState::default(), Instant::now());
    assert!(
        disconnects(&stale).is_empty(),
        "etcd trouble must not look like no peers"
    );
    v.stale_since = None;
    v.initialized = false;
    let unloaded = plan(&observed, &v, &prm, &KeeperState::default(), Instant::now());
    assert!(disconnects(&unloaded).is_empty());
}

#[test]
fn stale_view_changes_nothing_but_candidate_choice() {
    let fresh = view(&[Ready, Ready, Ready, Draining]);
    let mut stale = fresh.clone();
    stale.stale_since = Some(SystemTime::now());
    let observed = [peer(2, None), peer(5, None)];
    let now = Instant::now();
    let a = plan(
        &observed,
        &fresh,
        &params(3, 6),
        &KeeperState::default(),
        now,
    );
    let b = plan(
        &observed,
        &stale,
        &params(3, 6),
        &KeeperState::default(),
        now,
    );
    assert_eq!(a, b);
}

#[test]
fn empty_view_disconnects_nothing() {
    let v = MembershipSnapshot::default();
    let observed = [peer(2, None), peer(3, None)];
    let p = plan(
        &observed,
        &v,
        &params(3, 6),
        &KeeperState::default(),
        Instant::now(),
    );
    assert!(p.actions.is_empty());
}

#[test]
fn trims_above_max_lowest_ranked_outbound_first() {
    let v = view(&[Ready, Ready, Ready, Ready, Ready]);
    let observed = [
        peer(2, Some(Direction::Inbound)),
        peer(3, Some(Direction::Outbound)),
        peer(4, Some(Direction::Outbound)),
        peer(5, Some(Direction::Inbound)),
        peer(6, None),
    ];
    let p = plan(
        &observed,
        &v,
        &params(2, 3),
        &KeeperState::default(),
        Instant::now(),
    );
    let d = disconnects(&p);
    assert_eq!(d.len(), 2);
    assert!(d.iter().all(|(_, r)| *r == DisconnectReason::AboveMax));
    // Both outbound peers go before any inbound one.
    let mut dropped: Vec<SocketAddr> = d.iter().map(|(a, _)| *a).collect();
    dropped.sort();
    assert_eq!(dropped, vec![addr(3), addr(4)]);
    assert!(connects(&p).is_empty());
}

#[test]
fn trimming_never_touches_unmapped_peers() {
    let v = view(&[Ready]);
    let observed = [
        peer(2, Some(Direction::Outbound)),
        peer(20, None),
        peer(21, None),
        peer(22, None),
    ];
    let p = plan(
        &observed,
        &v,
        &params(1, 2),
        &KeeperState::default(),
        Instant::now(),
    );
    assert_eq!(disconnects(&p), vec![(addr(2), DisconnectReason::AboveMax)]);
}

#[test]
fn ranking_differs_between_nodes() {
    let records: Vec<NodeRecord> = (2..40u8)
        .map(|n| record(&format!("x{n}"), n, Ready))
        .collect();
    let v = MembershipSnapshot::from_records(records, 1, AddressPolicy::default());
    let choice = |own: &str| {
        let mut prm = params(3, 6);
        prm.own_id = id(own);
        connects(&plan(
            &[],
            &v,
            &prm,
            &KeeperState::default(),
            Instant::now(),
        ))
    };
    assert_ne!(choice("a"), choice("b"));
    assert_eq!(choice("a"), choice("a"), "deterministic");
}

#[test]
fn two_links_to_one_node_count_once_and_both_ends_drop_the_same_link() {
    // "me" < "n1": me keeps its outbound link, n1 keeps its inbound one: the same link.
    let v = view(&[Ready, Ready, Ready]);
    let out_link = Peer {
        addr: addr(2),
        direction: Some(Direction::Outbound),
        identity: Some("n1".into()),
    };
    let in_link = Peer {
        addr: SocketAddr::from(([10, 0, 0, 2], 50123)),
        direction: Some(Direction::Inbound),
        identity: Some("n1".into()),
    };
    let p = plan(
        &[out_link.clone(), in_link.clone()],
        &v,
        &params(1, 6),
        &KeeperState::default(),
        Instant::now(),
    );
    assert_eq!(p.degree, 1);
    assert_eq!(
        disconnects(&p),
        vec![(in_link.addr, DisconnectReason::Duplicate)]
    );
    assert!(
        connects(&p).is_empty(),
        "one distinct peer is enough for K = 1"
    );

    // Seen from the other end ("n1" > "me"): keep the inbound link, drop its own outbound one.
    let mut other = params(1, 6);
    other.own_id = id("n1");
    let theirs = [
        Peer {
            addr: addr(1),
            direction: Some(Direction::Outbound),
            identity: Some("me".into()),
        },
        Peer {
            addr: SocketAddr::from(([10, 0, 0, 1], 40000)),
            direction: Some(Direction::Inbound),
            identity: Some("me".into()),
        },
    ];
    let q = plan(&theirs, &v, &other, &KeeperState::default(), Instant::now());
    assert_eq!(
        disconnects(&q),
        vec![(addr(1), DisconnectReason::Duplicate)]
    );
}

#[test]
fn duplicate_links_of_unknown_direction_are_left_alone() {
    let v = view(&[Ready]);
    let links = [
        Peer {
            addr: addr(2),
            direction: None,
            identity: Some("n1".into()),
        },
        Peer {
            addr: SocketAddr::from(([10, 0, 0, 2], 50123)),
            direction: None,
            identity: Some("n1".into()),
        },
    ];
    let p = plan(
        &links,
        &v,
        &params(1, 6),
        &KeeperState::default(),
        Instant::now(),
    );
    assert_eq!(p.degree, 1);
    assert!(p.actions.is_empty());
}

#[test]
fn a_syncing_daemon_dials_a_ready_node_when_no_outbound_link_reaches_one() {
    // At K already, but every link is inbound or goes to a node that is itself starting.
    let v = view(&[Starting, Starting, Ready, Ready]);
    let observed = [
        peer(2, Some(Direction::Outbound)),
        peer(3, Some(Direction::Inbound)),
    ];
    let mut st = KeeperState {
        daemon_synced: Some(false),
        ..KeeperState::default()
    };
    let p = plan(&observed, &v, &params(2, 4), &st, Instant::now());
    let c = connects(&p);
    assert_eq!(c.len(), 1);
    assert!(c[0] == "n3" || c[0] == "n4", "a ready node: {c:?}");

    // Synced, or already holding an outbound link to a ready node: nothing extra.
    st.daemon_synced = Some(true);
    assert!(connects(&plan(&observed, &v, &params(2, 4), &st, Instant::now())).is_empty());
    st.daemon_synced = Some(false);
    let with_ready = [
        peer(4, Some(Direction::Outbound)),
        peer(3, Some(Direction::Inbound)),
    ];
    assert!(connects(&plan(&with_ready, &v, &params(2, 4), &st, Instant::now())).is_empty());
    // Never beyond the maximum.
    assert!(connects(&plan(&observed, &v, &params(2, 2), &st, Instant::now())).is_empty());
}

/// Regression: readiness counted the daemon's raw links (`peers.len()`: a node listed twice,
/// or linked both ways, counted twice) while the keeper counted distinct peers.
#[test]
fn readiness_degree_counts_distinct_peers_exactly_as_the_keeper_does() {
    let v = view(&[Ready, Ready, Draining]);
    let linked = |n: u8, port: u16, dir: Direction, who: &str| Peer {
        addr: SocketAddr::from(([10, 0, 0, n], port)),
        direction: Some(dir),
        identity: Some(who.into()),
    };
    let stranger = |port: u16| Peer {
        addr: SocketAddr::from(([192, 0, 2, 9], port)),
        direction: None,
        identity: None,
    };
    #[rustfmt::skip]
    let rows: Vec<(&str, Vec<Peer>, usize)> = vec![
        ("nothing",                        vec![], 0),
        ("one address listed twice",       vec![peer(2, None), peer(2, None)], 1),
        ("both-way links to one node",     vec![linked(2, 3000, Direction::Outbound, "n1"),
                                                linked(2, 50123, Direction::Inbound, "n1")], 1),
        ("two links to a draining node",   vec![peer(4, None), linked(4, 40000, Direction::Inbound, "n3")], 1),
        ("unmapped peers count each",      vec![stranger(1), stranger(2), stranger(2)], 2),
        ("mixed",                          vec![peer(2, None), peer(3, None), peer(3, None), stranger(1)], 3),
    ];
    for (name, observed, want) in rows {
        let own = id("me");
        assert_eq!(distinct_degree(&observed, &v, &own), want, "{name}");
        let p = plan(
            &observed,
            &v,
            &params(3, 6),
            &KeeperState::default(),
            Instant::now(),
        );
        assert_eq!(p.degree, want, "{name}: the keeper's degree");
    }
}

/// One row: name, view, the one peer listed, params, the record it maps to, disconnect reasons.
type Row = (
    &'static str,
    MembershipSnapshot,
    Peer,
    PlanParams,
    Option<&'static str>,
    Vec<DisconnectReason>,
);

/// Regression: the peer-to-record index was "last one wins", so a lingering `draining` record
/// sharing a live peer's address (IP reuse) or identity label could capture it and get it
/// disconnected. Now the single non-draining claim wins, and an ambiguous peer is left alone.
#[test]
fn a_draining_record_sharing_an_address_or_identity_never_gets_a_live_peer_disconnected() {
    // n1..n3 at 10.0.0.2..4; `extra` records claim some of their addresses or identities.
    fn with(extra: &[(&str, u8, NodeState, Option<&str>)]) -> MembershipSnapshot {
        let mut v = view(&[Ready, Ready, Ready]);
        if let Some(r) = v.records.get_mut(&id("n2")) {
            r.labels.insert("enode".into(), "abc".into());
        }
        for (i, (name, at, state, enode)) in extra.iter().enumerate() {
            let mut r = record(name, 20 + u8::try_from(i).expect("small"), *state);
            r.endpoints = BTreeMap::from([(
                "p2p".parse().expect("valid"),
                addr(*at).to_string().parse().expect("valid"),
            )]);
            if let Some(e) = enode {
                r.labels.insert("enode".into(), (*e).into());
            }
            v.records.insert(r.id.clone(), r);
        }
        v
    }
    let by_identity = |port: u16, who: &str| Peer {
        addr: SocketAddr::from(([10, 9, 9, 9], port)),
        direction: Some(Direction::Inbound),
        identity: Some(who.into()),
    };
    let strict = |k: usize| PlanParams {
        strict_peers: true,
        ..params(k, 6)
    };
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("draining record on a live node's address",  with(&[("old", 2, Draining, None)]),
            peer(2, None), params(1, 6), Some("n1"), vec![]),
        ("both orders of insertion agree",           with(&[("a-old", 2, Draining, None)]),
            peer(2, None), params(1, 6), Some("n1"), vec![]),
        ("two live records on one address",          with(&[("twin", 2, Ready, None)]),
            peer(2, None), strict(1), None, vec![]),
        ("two draining records on one address",      with(&[("d1", 9, Draining, None), ("d2", 9, Draining, None)]),
            peer(9, None), strict(1), None, vec![]),
        ("draining record copying an identity",      with(&[("old", 9, Draining, Some("abc"))]),
            by_identity(1, "abc"), params(1, 6), Some("n2"), vec![]),
        ("two live records sharing an identity",     with(&[("twin", 9, Ready, Some("abc"))]),
            by_identity(1, "abc"), strict(1), None, vec![]),
        ("ambiguous address, unique identity",       with(&[("twin", 2, Ready, None)]),
            Peer { identity: Some("n3".into()), ..peer(2, None) }, params(1, 6), Some("n3"), vec![]),
        ("a lone draining record still goes",        with(&[("old", 9, Draining, None)]),
            peer(9, None), params(1, 6), None, vec![DisconnectReason::Draining]),
    ];
    for (name, v, observed, p, want_mapped, want_disconnects) in rows {
        let plan = plan(
            std::slice::from_ref(&observed),
            &v,
            &p,
            &KeeperState::default(),
            Instant::now(),
        );
        let mapped: Vec<String> = plan.mapped.keys().map(ToString::to_string).collect();
        assert_eq!(
            mapped,
            want_mapped.into_iter().collect::<Vec<_>>(),
            "{name}"
        );
        let reasons: Vec<DisconnectReason> =
            disconnects(&plan).into_iter().map(|(_, r)| r).collect();
        assert_eq!(reasons, want_disconnects, "{name}");
        assert_eq!(plan.degree, 1, "{name}: one peer either way");
    }
}
