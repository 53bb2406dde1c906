//! The `ready` rule of DESIGN.md as a pure function, with its hysteresis.
//!
//! Ready means: the daemon answers, it is synced (by its own claim, and with its best block no
//! older than `--max-lag` when that is set), and it has at least
//! min(K, number of other live records) peers — so a cluster smaller than K+1 can be ready. A
//! ready node falls back only when its lag exceeds `--max-lag` or the daemon stops answering
//! (at once), or after staying short of peers for `--unready-after`: one peer dropping must not
//! pull a serving node out of the load balancer. What the adapter cannot tell (`--adapter none`
//! reports neither peers nor lag) does not count against the node.

use std::time::{Duration, Instant};

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
    /// Live records in the view other than this node.
    pub other_live: usize,
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
    let enough_peers = obs
        .peers
        .is_none_or(|n| n >= required_peers(p.min_peers, obs.other_live));
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
            other_live: others,
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
