//! `PeerKeeper`: the loop around [`plan`](super::plan::plan).
//!
//! It gathers the inputs — the daemon's peer list (polled every `--peer-poll`) and the membership
//! view (acted on as soon as it changes) — asks the plan, and applies the actions through the
//! node adapter. Everything it decides is logged with its reason, counted, and published as a
//! [`KeeperStatus`] for `/status` and readiness.
//!
//! What it never does: disconnect because the adapter call failed, because etcd is unreachable,
//! or because a record vanished. A failed peer listing skips the round.

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

/// How long a connect may stay unconfirmed by a peer listing before it counts as failed.
pub const DEFAULT_CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// The keeper's configuration.
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    /// The plan's parameters (own id, K, max, strict).
    pub params: PlanParams,
    /// `--peer-poll`.
    pub poll: Duration,
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
    /// Why the last peer listing failed, if it did.
    pub last_error: Option<String>,
}

/// The running keeper.
#[derive(Debug)]
pub struct PeerKeeper {
    adapter: Arc<dyn NodeAdapter>,
    view: watch::Receiver<Arc<MembershipSnapshot>>,
    config: KeeperConfig,
    state: KeeperState,
    status: watch::Sender<KeeperStatus>,
    counters: KeeperCounters,
}

impl PeerKeeper {
    /// A keeper over `adapter`, acting on `view`. Read its status from the returned receiver.
    pub fn new(
        adapter: Arc<dyn NodeAdapter>,
        view: watch::Receiver<Arc<MembershipSnapshot>>,
        config: KeeperConfig,
        counters: KeeperCounters,
    ) -> (Self, watch::Receiver<KeeperStatus>) {
        let (status, rx) = watch::channel(KeeperStatus::default());
        let state = KeeperState::new(config.backoff);
        (
            Self {
                adapter,
                view,
                config,
                state,
                status,
                counters,
            },
            rx,
        )
    }

    /// Runs until the task is dropped or aborted: a round on every poll tick and on every
    /// membership change.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.config.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut view_open = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = self.view.changed(), if view_open => {
                    if r.is_err() {
                        // The membership task ended; keep acting on the last view.
                        view_open = false;
                    }
                }
            }
            self.round().await;
        }
    }

    /// One round: list peers, plan, act.
    pub async fn round(&mut self) {
        let peers = match self.adapter.peers().await {
            Ok(p) => p,
            Err(e) => {
                let msg = e.to_string();
                if self.status.borrow().last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "peer listing failed; no peer changes this round");
                }
                self.status.send_modify(|s| s.last_error = Some(msg));
                return;
            }
        };
        // Only the claim matters here (a syncing daemon needs an outbound link to a ready
        // node); a daemon that cannot tell is treated as having nothing to ask for.
        self.state.daemon_synced = self.adapter.sync_status().await.ok().map(|s| s.synced);
        let view = self.view.borrow_and_update().clone();
        let now = Instant::now();
        let own = &self.config.params.own_id;
        let connected = connected_ids(&peers, &view, own);
        let expired = self.state.observe(&connected, now, jitter());
        for id in &expired {
            self.counters.connect_failures.inc();
            tracing::info!(peer_id = %id, "connect not confirmed before its deadline; backing off");
        }
        let known: BTreeSet<NodeId> = view.records.keys().cloned().collect();
        if view.initialized && view.stale_since.is_none() {
            self.state.retain_known(&known);
        }
        let mut decision = plan(&peers, &view, &self.config.params, &self.state, now);
        if own_draining(&view, own) {
            // A draining node's peers are leaving it; dialing them again would only flap.
            decision
                .actions
                .retain(|a| !matches!(a, Action::Connect { .. }));
        }
        self.apply(&decision.actions, &peers).await;
        self.publish(&decision, now);
    }

    async fn apply(&mut self, actions: &[Action], peers: &[Peer]) {
        let now = Instant::now();
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
                    if outcome == ConnectOutcome::AlreadyConnected {
                        // Listed under another address: the next listing confirms or expires it.
                        tracing::debug!(peer_id = %id, "daemon says already connected");
                    }
                }
                Err(e) => {
                    self.counters.connect_failures.inc();
                    tracing::info!(peer_id = %id, peer = %addr, error = %e, "connect failed; backing off");
                    self.state.record_failure(&id, Instant::now(), jitter());
                }
            }
        }
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
            last_error: None,
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

    /// A daemon whose peer list the test sets, recording every call.
    #[derive(Debug, Default)]
    struct FakeDaemon {
        peers: Mutex<Option<Vec<Peer>>>,
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
            self.peers
                .lock()
                .expect("lock")
                .clone()
                .ok_or(AdapterError::Unreachable {
                    call: "peers",
                    endpoint: "fake".into(),
                    detail: "down".into(),
                })
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
            Err(AdapterError::Unsupported {
                adapter: "fake",
                call: "sync_status",
                why: "test",
            })
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

    fn keeper(daemon: Arc<FakeDaemon>, states: &[NodeState]) -> (PeerKeeper, KeeperCounters) {
        let mut records = vec![record("me", 1, NodeState::Ready)];
        for (i, s) in states.iter().enumerate() {
            records.push(record(
                &format!("n{i}"),
                u8::try_from(i + 2).expect("small"),
                *s,
            ));
        }
        let snap = MembershipSnapshot::from_records(records, 1, AddressPolicy::default());
        let (_tx, rx) = watch::channel(Arc::new(snap));
        let counters = KeeperCounters::default();
        let config = KeeperConfig {
            params: PlanParams {
                own_id: "me".parse().expect("valid"),
                min_peers: 2,
                max_peers: 4,
                strict_peers: false,
            },
            poll: Duration::from_secs(1),
            connect_deadline: DEFAULT_CONNECT_DEADLINE,
            backoff: BackoffPolicy::default(),
        };
        let (k, _status) = PeerKeeper::new(daemon, rx, config, counters.clone());
        (k, counters)
    }

    #[tokio::test]
    async fn failed_listing_changes_nothing() {
        let daemon = Arc::new(FakeDaemon::default());
        let (mut k, counters) = keeper(daemon.clone(), &[NodeState::Ready, NodeState::Draining]);
        k.round().await;
        assert!(daemon.calls.lock().expect("lock").is_empty());
        assert_eq!(counters.disconnects.get(), 0);
        assert!(k.status.borrow().last_error.is_some());
    }

    #[tokio::test]
    async fn connects_to_k_then_waits_for_confirmation() {
        let daemon = Arc::new(FakeDaemon::default());
        *daemon.peers.lock().expect("lock") = Some(Vec::new());
        let (mut k, counters) = keeper(daemon.clone(), &[NodeState::Ready; 3]);
        k.round().await;
        assert_eq!(counters.connects.get(), 2);
        // Pending connects count as in flight: a second round issues no more.
        k.round().await;
        assert_eq!(counters.connects.get(), 2);
        assert_eq!(k.status.borrow().in_flight, 2);
    }

    #[tokio::test]
    async fn failed_connects_back_off() {
        let daemon = Arc::new(FakeDaemon {
            fail_connects: true,
            peers: Mutex::new(Some(Vec::new())),
            ..FakeDaemon::default()
        });
        let (mut k, counters) = keeper(daemon.clone(), &[NodeState::Ready; 2]);
        k.round().await;
        assert_eq!(counters.connect_failures.get(), 2);
        k.round().await;
        assert_eq!(counters.connects.get(), 2, "both candidates back off");
        assert_eq!(k.status.borrow().backoffs.len(), 2);
    }

    #[tokio::test]
    async fn draining_peer_is_disconnected_and_own_drain_stops_connects() {
        let daemon = Arc::new(FakeDaemon::default());
        *daemon.peers.lock().expect("lock") = Some(vec![Peer {
            addr: "10.0.0.3:3000".parse().expect("valid"),
            direction: None,
            identity: None,
        }]);
        let (mut k, counters) = keeper(daemon.clone(), &[NodeState::Ready, NodeState::Draining]);
        k.round().await;
        assert_eq!(counters.disconnects.get(), 1);
        assert!(
            daemon
                .calls
                .lock()
                .expect("lock")
                .contains(&"disconnect 10.0.0.3:3000".to_string())
        );

        let mut snap = (**k.view.borrow()).clone();
        snap.drain_requested.insert("me".parse().expect("valid"));
        let (_tx, rx) = watch::channel(Arc::new(snap));
        k.view = rx;
        *daemon.peers.lock().expect("lock") = Some(Vec::new());
        k.state = KeeperState::default();
        let before = counters.connects.get();
        k.round().await;
        assert_eq!(
            counters.connects.get(),
            before,
            "a draining node dials nobody"
        );
    }
}
