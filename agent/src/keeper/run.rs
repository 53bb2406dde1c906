//! `PeerKeeper`: the loop around [`plan`](super::plan::plan).
//!
//! It gathers the inputs — the daemon's peer list and sync claim, as the agent's probe observes
//! them every `--peer-poll` ([`PeerObservation`]), and the membership view, acted on as soon as
//! it changes — asks the plan, and applies the actions through the node adapter. The probe is
//! the one poller of the daemon, so the daemon is asked for its peers once per round, not once
//! per consumer. Everything the keeper decides is logged with its reason, counted, and published
//! as a [`KeeperStatus`] for `/status`.
//!
//! What it never does: disconnect because the daemon did not answer, because etcd is
//! unreachable, or because a record vanished. Without a fresh observation it does nothing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use peerkeep_registry::{MembershipSnapshot, NodeId, NodeState};
use prometheus_client::metrics::counter::Counter;
use rand::Rng;
use serde::Serialize;
use tokio::sync::watch;

use super::plan::{Action, DisconnectReason, PlanParams, connected_ids, plan};
use super::state::{BackoffPolicy, KeeperState};
use crate::adapter::{ConnectOutcome, NodeAdapter, Peer};

/// Plans per round when connects fail at once: bounds the work of one round while a handful of
/// dead candidates are skipped without waiting for the next poll.
const REPLANS_PER_ROUND: usize = 4;

/// How long a connect may stay unconfirmed by a peer listing before it counts as failed.
pub const DEFAULT_CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// What the agent's probe saw of the daemon in one round.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerObservation {
    /// The daemon's peers, inbound included.
    pub peers: Vec<Peer>,
    /// The daemon's own sync claim, when it makes one.
    pub synced: Option<bool>,
    /// When the probe that listed them started: links the daemon reported up before this
    /// must be in the list.
    pub listed_at: Instant,
}

/// The channel carrying observations: `None` while the daemon does not answer.
pub type Observations = watch::Receiver<Option<Arc<PeerObservation>>>;

/// The keeper's configuration.
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    /// The plan's parameters (own id, K, max, strict).
    pub params: PlanParams,
    /// See [`DEFAULT_CONNECT_DEADLINE`].
    pub connect_deadline: Duration,
    /// Backoff after failed connects.
    pub backoff: BackoffPolicy,
}

/// Counters the keeper increments (shared with the agent's metrics registry).
#[derive(Debug, Clone, Default)]
pub struct KeeperCounters {
    /// Connects asked of the daemon.
    pub connects: Counter,
    /// Connects that failed (error, or not confirmed before the deadline).
    pub connect_failures: Counter,
    /// Disconnects asked of the daemon.
    pub disconnects: Counter,
}

/// One candidate waiting out its backoff, for `/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackoffEntry {
    /// The candidate.
    pub id: NodeId,
    /// Failures in a row.
    pub failures: u32,
    /// Seconds until it may be tried again.
    pub retry_in_secs: f64,
}

/// The plan inputs and outcome of the last round, for `/status` and readiness.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KeeperStatus {
    /// Peers the daemon reported last (inbound included); `None` until a listing succeeded.
    pub degree: Option<usize>,
    /// Peers that map to no record.
    pub unmapped: usize,
    /// Connects in flight.
    pub in_flight: usize,
    /// Eligible candidates, best first (at most 16 shown).
    pub candidates: Vec<NodeId>,
    /// Candidates backing off.
    pub backoffs: Vec<BackoffEntry>,
    /// Why the keeper is idle, when it is (the daemon does not answer, nothing observed yet).
    pub idle_reason: Option<String>,
}

/// The running keeper.
#[derive(Debug)]
pub struct PeerKeeper {
    adapter: Arc<dyn NodeAdapter>,
    observed: Observations,
    view: watch::Receiver<Arc<MembershipSnapshot>>,
    config: KeeperConfig,
    state: KeeperState,
    status: watch::Sender<KeeperStatus>,
    counters: KeeperCounters,
}

impl PeerKeeper {
    /// A keeper acting through `adapter` on what `observed` and `view` say. Read its status
    /// from the returned receiver.
    pub fn new(
        adapter: Arc<dyn NodeAdapter>,
        observed: Observations,
        view: watch::Receiver<Arc<MembershipSnapshot>>,
        config: KeeperConfig,
        counters: KeeperCounters,
    ) -> (Self, watch::Receiver<KeeperStatus>) {
        let (status, rx) = watch::channel(KeeperStatus::default());
        let state = KeeperState::new(config.backoff);
        (
            Self {
                adapter,
                observed,
                view,
                config,
                state,
                status,
                counters,
            },
            rx,
        )
    }

    /// Runs until the task is dropped or aborted: a round on every observation and on every
    /// membership change.
    pub async fn run(mut self) {
        let (mut observed_open, mut view_open) = (true, true);
        while observed_open || view_open {
            tokio::select! {
                r = self.observed.changed(), if observed_open => observed_open = r.is_ok(),
                // When the membership task ends, keep acting on the last view.
                r = self.view.changed(), if view_open => view_open = r.is_ok(),
            }
            self.round().await;
        }
    }

    /// One round on the latest observation and view: plan, act.
    pub async fn round(&mut self) {
        let Some(observation) = self.observed.borrow_and_update().clone() else {
            self.status.send_modify(|s| {
                s.idle_reason = Some("the daemon does not answer (or has not yet)".to_owned());
            });
            return;
        };
        self.state.daemon_synced = observation.synced;
        let peers = &observation.peers;
        let view = self.view.borrow_and_update().clone();
        let now = Instant::now();
        let own = &self.config.params.own_id;
        let connected = connected_ids(peers, &view, own);
        let expired = self
            .state
            .observe(&connected, observation.listed_at, now, jitter());
        for id in &expired {
            self.counters.connect_failures.inc();
            tracing::info!(peer_id = %id, "connect not confirmed by the daemon's peer list; backing off");
        }
        let known: BTreeSet<NodeId> = view.records.keys().cloned().collect();
        if view.initialized && view.stale_since.is_none() {
            self.state.retain_known(&known);
        }
        let draining = own_draining(&view, own);
        let mut decision = plan(peers, &view, &self.config.params, &self.state, now);
        for _ in 0..REPLANS_PER_ROUND {
            if draining {
                // A draining node's peers are leaving it; dialing them again would only flap.
                decision
                    .actions
                    .retain(|a| !matches!(a, Action::Connect { .. }));
            }
            let failed = self.apply(&decision.actions, peers).await;
            if failed == 0 {
                break;
            }
            // Connects that failed at once (a crashed node still registered until its lease
            // expires) now back off: plan again so the next candidates are dialed in this
            // round, not one poll later. Only connects remain: disconnects were applied.
            decision = plan(
                peers,
                &view,
                &self.config.params,
                &self.state,
                Instant::now(),
            );
            decision
                .actions
                .retain(|a| matches!(a, Action::Connect { .. }));
        }
        self.publish(&decision, now);
    }

    /// Applies the actions; returns how many connects failed at once.
    async fn apply(&mut self, actions: &[Action], peers: &[Peer]) -> usize {
        let now = Instant::now();
        let mut failed = 0;
        let mut connects = Vec::new();
        for action in actions {
            match action {
                Action::Disconnect { addr, id, reason } => {
                    self.counters.disconnects.inc();
                    let result = self.adapter.disconnect(*addr).await;
                    log_disconnect(*addr, id.as_ref(), *reason, &result);
                }
                Action::Connect { id, addr, identity } => {
                    self.counters.connects.inc();
                    self.state.connect_started(
                        id.clone(),
                        *addr,
                        now + self.config.connect_deadline,
                    );
                    let adapter = self.adapter.clone();
                    let (id, addr, identity) = (id.clone(), *addr, identity.clone());
                    connects.push(async move {
                        let r = adapter.connect(addr.addr(), identity.as_deref()).await;
                        (id, addr, r)
                    });
                }
            }
        }
        let degree = peers.len();
        for (id, addr, result) in join_all(connects).await {
            match result {
                Ok(outcome) => {
                    tracing::info!(peer_id = %id, peer = %addr, degree, outcome = ?outcome, reason = "below min peers", "connect");
                    if outcome != ConnectOutcome::Pending {
                        self.state.connect_established(&id, Instant::now());
                    }
                    if outcome == ConnectOutcome::AlreadyConnected {
                        // Listed under another address: the next listing confirms or expires it.
                        tracing::debug!(peer_id = %id, "daemon says already connected");
                    }
                }
                Err(e) => {
                    self.counters.connect_failures.inc();
                    tracing::info!(peer_id = %id, peer = %addr, error = %e, "connect failed; backing off");
                    self.state.record_failure(&id, Instant::now(), jitter());
                    failed += 1;
                }
            }
        }
        failed
    }

    fn publish(&self, decision: &super::plan::Plan, now: Instant) {
        let backoffs = self
            .state
            .backoff
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(id, b)| BackoffEntry {
                id: id.clone(),
                failures: b.failures,
                retry_in_secs: (b.until - now).as_secs_f64(),
            })
            .collect();
        self.status.send_replace(KeeperStatus {
            degree: Some(decision.degree),
            unmapped: decision.unmapped,
            in_flight: self.state.pending.len(),
            candidates: decision.candidates.iter().take(16).cloned().collect(),
            backoffs,
            idle_reason: None,
        });
    }
}

fn own_draining(view: &MembershipSnapshot, own: &NodeId) -> bool {
    view.drain_requested.contains(own)
        || view
            .records
            .get(own)
            .is_some_and(|r| r.state == NodeState::Draining)
}

fn log_disconnect(
    addr: std::net::SocketAddr,
    id: Option<&NodeId>,
    reason: DisconnectReason,
    result: &Result<(), crate::adapter::AdapterError>,
) {
    let id = id.map(NodeId::as_str);
    match result {
        Ok(()) => tracing::info!(peer = %addr, peer_id = id, reason = ?reason, "disconnect"),
        Err(e) => {
            tracing::warn!(peer = %addr, peer_id = id, reason = ?reason, error = %e, "disconnect failed")
        }
    }
}

/// Jitter in `[0, 1)` for backoff, so nodes that failed together retry apart.
fn jitter() -> f64 {
    rand::rng().random::<f64>()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use peerkeep_registry::{AddressPolicy, NodeRecord, Slot};

    use super::*;
    use crate::adapter::{AdapterError, AdapterKind, SyncStatus};

    /// A daemon that records the connects and disconnects asked of it.
    #[derive(Debug, Default)]
    struct FakeDaemon {
        fail_connects: bool,
        calls: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl NodeAdapter for FakeDaemon {
        fn kind(&self) -> AdapterKind {
            AdapterKind::None
        }
        async fn probe(&self) -> Result<(), AdapterError> {
            Ok(())
        }
        async fn peers(&self) -> Result<Vec<Peer>, AdapterError> {
            panic!("the keeper must act on the probe's observations, not list peers itself")
        }
        async fn connect(
            &self,
            addr: SocketAddr,
            _identity: Option<&str>,
        ) -> Result<ConnectOutcome, AdapterError> {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("connect {addr}"));
            if self.fail_connects {
                return Err(AdapterError::Rejected {
                    call: "connect",
                    endpoint: "fake".into(),
                    status: Some(500),
                    message: "no".into(),
                });
            }
            Ok(ConnectOutcome::Pending)
        }
        async fn disconnect(&self, addr: SocketAddr) -> Result<(), AdapterError> {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("disconnect {addr}"));
            Ok(())
        }
        async fn sync_status(&self) -> Result<SyncStatus, AdapterError> {
            panic!("the keeper must take the sync claim from the probe's observations")
        }
    }

    fn record(name: &str, n: u8, state: NodeState) -> NodeRecord {
        NodeRecord {
            id: name.parse().expect("valid"),
            state,
            endpoints: BTreeMap::from([(
                "p2p".parse().expect("valid"),
                format!("10.0.0.{n}:3000").parse().expect("valid"),
            )]),
            slot: Slot::new(u32::from(n)).expect("valid"),
            instance: "i".into(),
            version: String::new(),
            started_at: String::new(),
            labels: BTreeMap::new(),
        }
    }

    struct Harness {
        keeper: PeerKeeper,
        counters: KeeperCounters,
        observe: watch::Sender<Option<Arc<PeerObservation>>>,
        view_tx: watch::Sender<Arc<MembershipSnapshot>>,
    }

    impl Harness {
        fn new(daemon: Arc<FakeDaemon>, states: &[NodeState]) -> Self {
            let mut records = vec![record("me", 1, NodeState::Ready)];
            for (i, s) in states.iter().enumerate() {
                records.push(record(
                    &format!("n{i}"),
                    u8::try_from(i + 2).expect("small"),
                    *s,
                ));
            }
            let snap = MembershipSnapshot::from_records(records, 1, AddressPolicy::default());
            let (view_tx, view) = watch::channel(Arc::new(snap));
            let (observe, observed) = watch::channel(None);
            let counters = KeeperCounters::default();
            let config = KeeperConfig {
                params: PlanParams {
                    own_id: "me".parse().expect("valid"),
                    min_peers: 2,
                    max_peers: 4,
                    strict_peers: false,
                },
                connect_deadline: DEFAULT_CONNECT_DEADLINE,
                backoff: BackoffPolicy::default(),
            };
            let (keeper, _status) =
                PeerKeeper::new(daemon, observed, view, config, counters.clone());
            Self {
                keeper,
                counters,
                observe,
                view_tx,
            }
        }

        fn sees(&self, peers: &[&str]) {
            let peers = peers
                .iter()
                .map(|a| Peer {
                    addr: a.parse().expect("valid"),
                    direction: None,
                    identity: None,
                })
                .collect();
            self.observe.send_replace(Some(Arc::new(PeerObservation {
                peers,
                synced: None,
                listed_at: Instant::now(),
            })));
        }
    }

    #[tokio::test]
    async fn a_daemon_that_does_not_answer_changes_nothing() {
        let daemon = Arc::new(FakeDaemon::default());
        let mut h = Harness::new(daemon.clone(), &[NodeState::Ready, NodeState::Draining]);
        h.keeper.round().await;
        assert!(daemon.calls.lock().expect("lock").is_empty());
        assert_eq!(h.counters.disconnects.get(), 0);
        assert!(h.keeper.status.borrow().idle_reason.is_some());
    }

    #[tokio::test]
    async fn connects_to_k_then_waits_for_confirmation() {
        let daemon = Arc::new(FakeDaemon::default());
        let mut h = Harness::new(daemon.clone(), &[NodeState::Ready; 3]);
        h.sees(&[]);
        h.keeper.round().await;
        assert_eq!(h.counters.connects.get(), 2);
        // Pending connects count as in flight: a second round issues no more.
        h.keeper.round().await;
        assert_eq!(h.counters.connects.get(), 2);
        assert_eq!(h.keeper.status.borrow().in_flight, 2);
    }

    #[tokio::test]
    async fn failed_connects_back_off() {
        let daemon = Arc::new(FakeDaemon {
            fail_connects: true,
            ..FakeDaemon::default()
        });
        let mut h = Harness::new(daemon.clone(), &[NodeState::Ready; 2]);
        h.sees(&[]);
        h.keeper.round().await;
        assert_eq!(h.counters.connect_failures.get(), 2);
        h.keeper.round().await;
        assert_eq!(h.counters.connects.get(), 2, "both candidates back off");
        assert_eq!(h.keeper.status.borrow().backoffs.len(), 2);
    }

    #[tokio::test]
    async fn candidates_failing_at_once_are_replaced_within_the_same_round() {
        // K = 2 and four candidates that all refuse (crashed, still registered): one round
        // tries all four instead of two per poll.
        let daemon = Arc::new(FakeDaemon {
            fail_connects: true,
            ..FakeDaemon::default()
        });
        let mut h = Harness::new(daemon.clone(), &[NodeState::Ready; 4]);
        h.sees(&[]);
        h.keeper.round().await;
        assert_eq!(h.counters.connects.get(), 4);
        assert_eq!(h.counters.connect_failures.get(), 4);
    }

    #[tokio::test]
    async fn draining_peer_is_disconnected_and_own_drain_stops_connects() {
        let daemon = Arc::new(FakeDaemon::default());
        let mut h = Harness::new(daemon.clone(), &[NodeState::Ready, NodeState::Draining]);
        h.sees(&["10.0.0.3:3000"]);
        h.keeper.round().await;
        assert_eq!(h.counters.disconnects.get(), 1);
        assert!(
            daemon
                .calls
                .lock()
                .expect("lock")
                .contains(&"disconnect 10.0.0.3:3000".to_string())
        );

        let mut snap = (**h.keeper.view.borrow()).clone();
        snap.drain_requested.insert("me".parse().expect("valid"));
        h.view_tx.send_replace(Arc::new(snap));
        h.sees(&[]);
        h.keeper.state = KeeperState::default();
        let before = h.counters.connects.get();
        h.keeper.round().await;
        assert_eq!(
            h.counters.connects.get(),
            before,
            "a draining node dials nobody"
        );
    }
}
