//! What the peer keeper remembers between rounds: connects in flight and per-candidate backoff.
//!
//! Still pure: time and randomness come in as arguments, so the rules ("a pending connect counts
//! as in flight until a listing confirms it or its deadline passes", "each failure doubles the
//! wait, with jitter") are tested without a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use peerkeep_registry::{Endpoint, NodeId};

/// Exponential backoff bounds for failed connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Wait after the first failure.
    pub base: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// A connect that was issued and not yet confirmed by a peer listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The address dialed.
    pub addr: Endpoint,
    /// After this instant the connect is considered failed.
    pub deadline: Instant,
    /// When the daemon said the link was up (`Established`, `AlreadyConnected`): a listing
    /// taken after that which does not show the peer means the link is already gone.
    pub established_at: Option<Instant>,
}

/// Consecutive failures of one candidate and when it may be tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Failures in a row.
    pub failures: u32,
    /// Not a candidate before this instant.
    pub until: Instant,
}

/// The keeper's memory.
#[derive(Debug, Clone, Default)]
pub struct KeeperState {
    /// Connects in flight, by candidate.
    pub pending: BTreeMap<NodeId, Pending>,
    /// Candidates backing off after failures.
    pub backoff: BTreeMap<NodeId, Backoff>,
    /// Backoff bounds.
    pub policy: BackoffPolicy,
    /// Records the daemon was connected to at the last listing.
    pub last_connected: BTreeSet<NodeId>,
    /// The daemon's own sync claim at the last round (`None`: it cannot tell).
    pub daemon_synced: Option<bool>,
}

impl KeeperState {
    /// A state with the given backoff bounds.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// Folds in a fresh peer listing, taken at `listed_at`: pending connects that now show up as
    /// connected are confirmed; those past their deadline count as failures, and so do those
    /// the daemon reported established before the listing was taken but that it does not list
    /// (the other side dropped the link at once, e.g. trimming above its maximum) — waiting out
    /// the deadline for them would hold the node below K for nothing. A peer that was connected
    /// and is gone also backs off before it is dialed again: whoever dropped the link would
    /// otherwise be redialed at once, and two nodes that disagree would flap. Returns the ids
    /// whose pending connect failed this way.
    pub fn observe(
        &mut self,
        connected: &BTreeSet<NodeId>,
        listed_at: Instant,
        now: Instant,
        jitter: f64,
    ) -> Vec<NodeId> {
        let lost: Vec<NodeId> = self.last_connected.difference(connected).cloned().collect();
        for id in lost {
            self.record_failure(&id, now, jitter);
        }
        for id in connected {
            if self.pending.remove(id).is_some() {
                // A confirmed connect is a success: the next failure starts from the base wait.
                self.backoff.remove(id);
            }
        }
        self.last_connected.clone_from(connected);
        let expired: Vec<NodeId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now || p.established_at.is_some_and(|t| t <= listed_at))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.pending.remove(id);
            self.record_failure(id, now, jitter);
        }
        expired
    }

    /// Remembers a connect just issued.
    pub fn connect_started(&mut self, id: NodeId, addr: Endpoint, deadline: Instant) {
        self.pending.insert(
            id,
            Pending {
                addr,
                deadline,
                established_at: None,
            },
        );
    }

    /// The daemon answered that the link to `id` is up, at `at`.
    pub fn connect_established(&mut self, id: &NodeId, at: Instant) {
        if let Some(p) = self.pending.get_mut(id) {
            p.established_at = Some(at);
        }
    }

    /// A connect failed: drop it from the in-flight set and back off exponentially.
    /// `jitter` in `[0, 1)` shortens the wait by up to half, so nodes that failed together retry
    /// apart.
    pub fn record_failure(&mut self, id: &NodeId, now: Instant, jitter: f64) {
        self.pending.remove(id);
        let failures = self
            .backoff
            .get(id)
            .map_or(0, |b| b.failures)
            .saturating_add(1);
        let exp = failures.saturating_sub(1).min(20);
        let full = self
            .policy
            .base
            .saturating_mul(1u32 << exp)
            .min(self.policy.max);
        let wait = full.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0));
        self.backoff.insert(
            id.clone(),
            Backoff {
                failures,
                until: now + wait,
            },
        );
    }

    /// Whether `id` is waiting out a backoff at `now`.
    pub fn is_backing_off(&self, id: &NodeId, now: Instant) -> bool {
        self.backoff.get(id).is_some_and(|b| b.until > now)
    }

    /// Forgets candidates that are no longer in the registry, so state stays bounded.
    pub fn retain_known(&mut self, known: &BTreeSet<NodeId>) {
        self.pending.retain(|id, _| known.contains(id));
        self.backoff.retain(|id, _| known.contains(id));
        self.last_connected.retain(|id| known.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        s.parse().expect("valid id")
    }
    fn ep(s: &str) -> Endpoint {
        s.parse().expect("valid endpoint")
    }

    #[test]
    fn pending_is_confirmed_by_a_listing() {
        let now = Instant::now();
        let mut st = KeeperState::default();
        st.connect_started(id("b"), ep("10.0.0.2:1"), now + Duration::from_secs(5));
        let expired = st.observe(&BTreeSet::from([id("b")]), now, now, 0.0);
        assert!(expired.is_empty());
        assert!(st.pending.is_empty());
        assert!(!st.is_backing_off(&id("b"), now));
    }

    #[test]
    fn pending_past_deadline_backs_off() {
        let now = Instant::now();
        let mut st = KeeperState::default();
        st.connect_started(id("b"), ep("10.0.0.2:1"), now + Duration::from_secs(5));
        assert!(
            st.observe(
                &BTreeSet::new(),
                now + Duration::from_secs(4),
                now + Duration::from_secs(4),
                0.0
            )
            .is_empty()
        );
        let later = now + Duration::from_secs(5);
        assert_eq!(
            st.observe(&BTreeSet::new(), later, later, 0.0),
            vec![id("b")]
        );
        assert!(st.is_backing_off(&id("b"), later));
        assert!(!st.is_backing_off(&id("b"), later + Duration::from_secs(1)));
    }

    #[test]
    fn an_established_connect_missing_from_a_later_listing_fails_at_once() {
        let now = Instant::now();
        let mut st = KeeperState::default();
        st.connect_started(id("b"), ep("10.0.0.2:1"), now + Duration::from_secs(10));
        st.connect_established(&id("b"), now + Duration::from_millis(10));
        // A listing taken before the daemon answered proves nothing.
        assert!(
            st.observe(&BTreeSet::new(), now, now + Duration::from_millis(20), 0.0)
                .is_empty()
        );
        // One taken after it, without the peer: the other side dropped the link.
        let later = now + Duration::from_millis(500);
        assert_eq!(
            st.observe(&BTreeSet::new(), later, later, 0.0),
            vec![id("b")]
        );
        assert!(st.is_backing_off(&id("b"), later));
    }

    #[test]
    fn a_lost_peer_backs_off_before_it_is_redialed() {
        let now = Instant::now();
        let mut st = KeeperState::default();
        st.observe(&BTreeSet::from([id("b"), id("c")]), now, now, 0.0);
        st.observe(&BTreeSet::from([id("c")]), now, now, 0.0);
        assert!(st.is_backing_off(&id("b"), now));
        assert!(!st.is_backing_off(&id("c"), now));
        // Lost again right after the next connect: the wait grows.
        let t = now + Duration::from_secs(2);
        st.observe(&BTreeSet::from([id("b"), id("c")]), t, t, 0.0);
        st.observe(&BTreeSet::from([id("c")]), t, t, 0.0);
        assert_eq!(st.backoff[&id("b")].failures, 2);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let now = Instant::now();
        let mut st = KeeperState::new(BackoffPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
        });
        let waits: Vec<Duration> = (0..6)
            .map(|_| {
                st.record_failure(&id("b"), now, 0.0);
                st.backoff[&id("b")].until - now
            })
            .collect();
        let secs: Vec<u64> = waits.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 8, 8]);
        st.record_failure(&id("c"), now, 0.999);
        let jittered = st.backoff[&id("c")].until - now;
        assert!(jittered >= Duration::from_millis(500) && jittered < Duration::from_secs(1));
    }
}
