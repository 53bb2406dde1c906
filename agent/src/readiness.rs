//! The `ready` rule of DESIGN.md as a pure function, with its hysteresis.
//!
//! Ready means: the daemon answers, it is synced (by its own claim, and with its best block no
//! older than `--max-lag` when that is set), and it has at least
//! min(K, number of other live records) peers — so a cluster smaller than K+1 can be ready. A
//! ready node falls back only when its lag exceeds `--max-lag` or the daemon stops answering
//! (at once), or after staying short of peers for `--unready-after`: one peer dropping must not
//! pull a serving node out of the load balancer. What the adapter cannot tell (`--adapter none`
//! reports neither peers nor lag) does not count against the node.
//!
//! The number of other live records is unknown until the membership view has loaded once
//! (`other_live: None`). Until then a known peer count cannot meet the requirement — min(K, 0)
//! would let any node pass with zero peers — and the hysteresis does not apply either: a node
//! has not been ready against a rule it could not be measured by. Once loaded, the view never
//! becomes unknown again: an etcd outage keeps the last view and its count.

use std::time::{Duration, Instant};

use peerkeep_registry::{MembershipSnapshot, NodeId};

/// What the agent observed in one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The daemon answered its probe.
    pub reachable: bool,
    /// The daemon's own claim to be synced; `None` if the adapter cannot tell.
    pub synced: Option<bool>,
    /// Age of the daemon's best block; `None` if not reported.
    pub lag: Option<Duration>,
    /// Peers the daemon reports, inbound included; `None` if not reported.
    pub peers: Option<usize>,
    /// Live records in the view other than this node; `None` until the membership view has
    /// loaded (a stale view keeps its last count).
    pub other_live: Option<usize>,
}

/// The thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadinessParams {
    /// K, `--min-peers`.
    pub min_peers: usize,
    /// `--max-lag`: the oldest acceptable best block; `None` trusts the daemon's claim alone.
    pub max_lag: Option<Duration>,
    /// `--unready-after`.
    pub unready_after: Duration,
}

/// Readiness with its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Readiness {
    /// Not ready: not answering, not synced, or short of peers and never ready since.
    #[default]
    NotReady,
    /// Ready; `short_since` is when it first fell short of peers, if it currently is.
    Ready {
        /// Start of the current shortfall of peers.
        short_since: Option<Instant>,
    },
}

impl Readiness {
    /// True for [`Readiness::Ready`].
    pub fn is_ready(self) -> bool {
        matches!(self, Self::Ready { .. })
    }
}

/// The peer count needed: min(K, other live records).
pub fn required_peers(min_peers: usize, other_live: usize) -> usize {
    min_peers.min(other_live)
}

/// Live records in `view` other than `own`, for [`Observation::other_live`]: `None` until the
/// view has loaded once; a stale view (etcd away) keeps its last records, hence its count, so
/// an outage never makes a ready node short of peers.
pub fn other_live(view: &MembershipSnapshot, own: &NodeId) -> Option<usize> {
    view.initialized
        .then(|| view.peerable().filter(|r| &r.id != own).count())
}

/// Readiness after observing `obs` at `now`, given the previous value.
pub fn next(prev: Readiness, obs: &Observation, p: &ReadinessParams, now: Instant) -> Readiness {
    let within_lag = match (obs.lag, p.max_lag) {
        (Some(lag), Some(max)) => lag <= max,
        _ => true,
    };
    let synced = obs.synced.unwrap_or(true) && within_lag;
    if !obs.reachable || !synced {
        return Readiness::NotReady;
    }
    let enough_peers = match (obs.peers, obs.other_live) {
        // The adapter cannot tell: the peer rule cannot be applied.
        (None, _) => true,
        (Some(n), Some(others)) => n >= required_peers(p.min_peers, others),
        // How many peers are required is unknown until the view has loaded: no ready, and
        // no hysteresis for a node that was never measured against the rule.
        (Some(_), None) => return Readiness::NotReady,
    };
    match (prev, enough_peers) {
        (_, true) => Readiness::Ready { short_since: None },
        (Readiness::NotReady, false) => Readiness::NotReady,
        (Readiness::Ready { short_since }, false) => {
            let since = short_since.unwrap_or(now);
            if now.saturating_duration_since(since) >= p.unready_after {
                Readiness::NotReady
            } else {
                Readiness::Ready {
                    short_since: Some(since),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ReadinessParams = ReadinessParams {
        min_peers: 3,
        max_lag: Some(Duration::from_secs(60)),
        unready_after: Duration::from_secs(30),
    };

    /// `lag` in seconds; `synced` is the daemon's claim.
    fn obs(reachable: bool, lag: Option<u64>, peers: Option<usize>, others: usize) -> Observation {
        Observation {
            reachable,
            synced: lag.map(|_| true),
            lag: lag.map(Duration::from_secs),
            peers,
            other_live: Some(others),
        }
    }

    /// Like [`obs`], before the membership view has loaded.
    fn unloaded(peers: Option<usize>) -> Observation {
        Observation {
            other_live: None,
            ..obs(true, Some(0), peers, 0)
        }
    }

    #[test]
    fn table() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let ready = Readiness::Ready { short_since: None };
        let short = |at: u64| Readiness::Ready {
            short_since: Some(s(at)),
        };
        let not = Readiness::NotReady;
        #[rustfmt::skip]
        let rows: &[(&str, Readiness, Observation, Instant, Readiness)] = &[
            ("synced with K peers",                not,      obs(true, Some(0), Some(3), 9), s(0), ready),
            ("unreachable",                        ready,    obs(false, Some(0), Some(3), 9), s(0), not),
            ("lag within max-lag",                 not,      obs(true, Some(60), Some(3), 9), s(0), ready),
            ("lag over max-lag drops at once",     ready,    obs(true, Some(61), Some(3), 9), s(0), not),
            ("short of peers, never ready",        not,      obs(true, Some(0), Some(2), 9), s(0), not),
            ("small cluster: min(K, others)",      not,      obs(true, Some(0), Some(1), 1), s(0), ready),
            ("lone bootstrap node",                not,      obs(true, Some(0), Some(0), 0), s(0), ready),
            ("one peer drops: still ready",        ready,    obs(true, Some(0), Some(2), 9), s(5), short(5)),
            ("still short within unready-after",   short(5), obs(true, Some(0), Some(2), 9), s(34), short(5)),
            ("short for unready-after: not ready", short(5), obs(true, Some(0), Some(2), 9), s(35), not),
            ("recovers: shortfall forgotten",      short(5), obs(true, Some(0), Some(3), 9), s(20), ready),
            ("adapter none: reachable is enough",  not,      obs(true, None, None, 9), s(0), ready),
            ("adapter none: unreachable",          ready,    obs(false, None, None, 9), s(0), not),
        ];
        for (name, prev, o, now, want) in rows {
            assert_eq!(next(*prev, o, &P, *now), *want, "{name}");
        }
    }

    /// Regression: `other_live` used to start at 0 before the view loaded, so min(K, 0) = 0
    /// peers passed and the hysteresis then kept the node ready with no peers.
    #[test]
    fn no_ready_with_zero_peers_before_the_membership_view_loads() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let ready = Readiness::Ready { short_since: None };
        let short = Readiness::Ready {
            short_since: Some(s(5)),
        };
        let not = Readiness::NotReady;
        let adapter_none = Observation {
            peers: None,
            ..unloaded(None)
        };
        #[rustfmt::skip]
        let rows: &[(&str, Readiness, Observation, Instant, Readiness)] = &[
            ("zero peers: not ready",                 not,   unloaded(Some(0)), s(0), not),
            ("K peers: still not ready",              not,   unloaded(Some(3)), s(0), not),
            ("ready before: no hysteresis",           ready, unloaded(Some(0)), s(0), not),
            ("short before: no hysteresis",           short, unloaded(Some(0)), s(6), not),
            ("peers unknown (adapter none): ready",   not,   adapter_none,      s(0), ready),
            ("loaded, lone bootstrap node: ready",    not,   obs(true, Some(0), Some(0), 0), s(0), ready),
            ("loaded, others live: needs its peers",  not,   obs(true, Some(0), Some(0), 2), s(0), not),
        ];
        for (name, prev, o, now, want) in rows {
            assert_eq!(next(*prev, o, &P, *now), *want, "{name}");
        }
    }

    #[test]
    fn other_live_is_unknown_until_the_view_loads_and_kept_while_it_is_stale() {
        use std::collections::BTreeMap;

        use peerkeep_registry::{AddressPolicy, NodeRecord, NodeState, Slot};

        let record = |name: &str, slot: u32, state: NodeState| NodeRecord {
            id: name.parse().expect("valid id"),
            state,
            endpoints: BTreeMap::new(),
            slot: Slot::new(slot).expect("valid slot"),
            instance: "i".into(),
            version: String::new(),
            started_at: String::new(),
            labels: BTreeMap::new(),
        };
        let me: NodeId = "me".parse().expect("valid id");
        assert_eq!(other_live(&MembershipSnapshot::default(), &me), None);
        let lone = MembershipSnapshot::from_records(
            [record("me", 1, NodeState::Starting)],
            5,
            AddressPolicy::default(),
        );
        assert_eq!(other_live(&lone, &me), Some(0), "lone bootstrap node");
        let mut three = MembershipSnapshot::from_records(
            [
                record("me", 1, NodeState::Ready),
                record("a", 2, NodeState::Ready),
                record("b", 3, NodeState::Starting),
                record("c", 4, NodeState::Draining),
            ],
            6,
            AddressPolicy::default(),
        );
        assert_eq!(other_live(&three, &me), Some(2), "draining is not live");
        three.stale_since = Some(std::time::SystemTime::now());
        assert_eq!(
            other_live(&three, &me),
            Some(2),
            "etcd outage keeps the count"
        );
    }

    #[test]
    fn daemon_claim_and_unset_max_lag() {
        let now = Instant::now();
        let mut o = obs(true, Some(3600), Some(3), 3);
        o.synced = Some(false);
        assert_eq!(
            next(Readiness::NotReady, &o, &P, now),
            Readiness::NotReady,
            "daemon says not synced"
        );
        o.synced = Some(true);
        assert_eq!(
            next(Readiness::NotReady, &o, &P, now),
            Readiness::NotReady,
            "an hour behind"
        );
        let trusting = ReadinessParams { max_lag: None, ..P };
        assert!(
            next(Readiness::NotReady, &o, &trusting, now).is_ready(),
            "no --max-lag: the claim decides"
        );
    }
}
