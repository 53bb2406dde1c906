//! `peerkeep-agent run`: the lifecycle of one node container.
//!
//! Order of events, and why:
//!
//! 1. The supervisor comes first, so signals are handled before anything else exists (as PID 1
//!    an unhandled TERM would be dropped by the kernel).
//! 2. Addresses are resolved and the health listener bound *before* the daemon starts: the
//!    daemon is told its addresses on its command line, and a node without health checks must
//!    fail at start rather than run unobserved.
//! 3. The daemon is spawned; etcd is not needed for that (an etcd outage at start must not keep
//!    the node down). The membership view starts at once; the registration starts when the
//!    daemon first answers, as `starting`.
//! 4. The loop probes the daemon, applies the readiness rule and the operator's drain key, and
//!    publishes the record state, `/status` and metrics — until the daemon exits, a shutdown is
//!    requested (the `shutdown` module), or the node id turns out to be taken (exit 4).
//!
//! With a node adapter, the peer keeper ([`crate::keeper`]) runs beside this loop as its own
//! task (started in [`run`], stopped when the phase leaves Running); this loop only reads the
//! peer count for readiness.

mod daemon;
mod phase;
mod setup;
mod shutdown;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use peerkeep_registry::registration::{
    NodeInfo, Registration, RegistrationConfig, RegistrationEvent, RegistrationStatus,
};
use peerkeep_registry::{Etcd, MembershipSnapshot, NodeId, NodeState, RegistryError};
use peerkeep_supervise::{ChildHandle, ExitStatus, ShutdownRequests, Supervisor};
use tokio::sync::{broadcast, watch};

use crate::health::metrics::Metrics;
use crate::health::status::AgentStatus;
use crate::readiness::{self, Observation, Readiness, ReadinessParams};

pub use daemon::{DaemonProbe, ProbeReport};
pub use phase::{Phase, PhaseMachine};
pub use setup::{RunError, run};

/// Probe interval until the daemon first answers: registration should follow the daemon's
/// first answer closely, whatever `--peer-poll` is.
const FIRST_ANSWER_POLL: Duration = Duration::from_millis(100);

/// Consecutive failed probes after which a daemon that answered before counts as unreachable
/// for readiness (`/status` shows every failure at once).
const UNREACHABLE_AFTER_FAILURES: u32 = 3;

/// How often "daemon not answering yet" is repeated while waiting for the first answer.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(10);

/// Time allowed to revoke the lease before giving up and letting it expire (a healthy etcd
/// answers in milliseconds; a hung one must not eat the orchestrator's grace period).
const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often `/status` (and its liveness heartbeat) is refreshed during shutdown waits.
const SHUTDOWN_HEARTBEAT: Duration = Duration::from_secs(1);

/// Grace for leftover processes when sweeping as PID 1.
const SWEEP_GRACE: Duration = Duration::from_secs(2);

/// The states the registration can report, for the one-hot metric.
const REGISTRATION_STATES: [&str; 6] = [
    "unregistered",
    "registered",
    "unconfirmed",
    "lost",
    "id_taken",
    "revoked",
];

/// The record label carrying the daemon's own identity (one of the keeper's identity labels).
const IDENTITY_LABEL: &str = "identity";

/// The record states, for the one-hot metric.
const NODE_STATES: [&str; 3] = ["starting", "ready", "draining"];

/// Timing and thresholds of the lifecycle.
#[derive(Debug, Clone)]
pub struct LifecycleParams {
    /// The readiness rule's thresholds.
    pub readiness: ReadinessParams,
    /// Probe interval once the daemon has answered.
    pub poll: Duration,
    /// `--drain-delay`.
    pub drain_delay: Duration,
    /// `--stop-signal`.
    pub stop_signal: Signal,
    /// `--stop-timeout`.
    pub stop_timeout: Duration,
}

/// Everything the running agent holds.
struct Agent {
    params: LifecycleParams,
    sup: Supervisor,
    requests: ShutdownRequests,
    daemon: ChildHandle,
    probe: DaemonProbe,
    etcd: Etcd,
    reg_config: RegistrationConfig,
    reg_info: NodeInfo,
    registration: Option<Registration>,
    view: watch::Receiver<Arc<MembershipSnapshot>>,
    status: watch::Sender<AgentStatus>,
    metrics: Arc<Metrics>,
    phase: PhaseMachine,
    readiness: Readiness,
    observation: Observation,
    last_answer: Option<Instant>,
    /// Probes failed in a row since the last answer.
    failed_probes: u32,
    /// When "daemon not answering yet" was last logged (start time initially, so the first
    /// message comes after one interval rather than on the very first probe).
    waiting_logged: Instant,
    published_state: Option<NodeState>,
}

/// What woke the loop.
enum Wake {
    DaemonExited(ExitStatus),
    Shutdown(Signal),
    RegistrationStopped(RegistryError),
    Tick,
    ViewChanged,
    RegistrationChanged,
    RegistrationEvent(RegistrationEvent),
    Closed(Stream),
}

/// A channel the loop listens to.
enum Stream {
    View,
    RegistrationStatus,
    RegistrationEvents,
}

impl Agent {
    fn node_id(&self) -> &NodeId {
        &self.reg_config.id
    }

    /// The loop of the Running phase; returns the exit code.
    async fn run(mut self) -> Result<i32, RunError> {
        let mut poll = tokio::time::interval(FIRST_ANSWER_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut polling_fast = true;
        let mut reg_status: Option<watch::Receiver<RegistrationStatus>> = None;
        let mut reg_events: Option<broadcast::Receiver<RegistrationEvent>> = None;
        let mut subscribed = false;
        let mut view_open = true;
        loop {
            let wake = {
                let reg = self.registration.as_ref();
                tokio::select! {
                    status = self.daemon.wait() => Wake::DaemonExited(status),
                    req = self.requests.at_least(1) => Wake::Shutdown(req.signal),
                    err = async { match reg { Some(r) => r.stopped().await, None => std::future::pending().await } } => {
                        Wake::RegistrationStopped(err)
                    }
                    _ = poll.tick() => Wake::Tick,
                    r = self.view.changed(), if view_open => match r {
                        Ok(()) => Wake::ViewChanged,
                        Err(_) => Wake::Closed(Stream::View),
                    },
                    r = async { match reg_status.as_mut() { Some(rx) => rx.changed().await, None => std::future::pending().await } } => match r {
                        Ok(()) => Wake::RegistrationChanged,
                        Err(_) => Wake::Closed(Stream::RegistrationStatus),
                    },
                    r = async { match reg_events.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => match r {
                        Ok(event) => Wake::RegistrationEvent(event),
                        // A burst of events was dropped: counts may undercount, nothing else.
                        Err(broadcast::error::RecvError::Lagged(_)) => Wake::RegistrationChanged,
                        Err(broadcast::error::RecvError::Closed) => Wake::Closed(Stream::RegistrationEvents),
                    },
                }
            };
            match wake {
                Wake::DaemonExited(status) => return Ok(self.daemon_exited(status).await),
                Wake::Shutdown(signal) => return Ok(self.shutdown(signal).await),
                Wake::RegistrationStopped(err) => return self.registration_stopped(err).await,
                Wake::Tick => {
                    self.probe_round().await?;
                    if polling_fast && self.last_answer.is_some() {
                        polling_fast = false;
                        poll = tokio::time::interval(self.params.poll);
                        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        poll.reset();
                    }
                    if !subscribed && let Some(reg) = &self.registration {
                        subscribed = true;
                        reg_status = Some(reg.watch_status());
                        reg_events = Some(reg.events());
                    }
                }
                // A sender went away (the registration task ended, or the runtime is shutting
                // down): stop listening to it. The registration's end is handled through
                // `stopped()`; the membership view keeps its last value.
                Wake::Closed(Stream::View) => view_open = false,
                Wake::Closed(Stream::RegistrationStatus) => reg_status = None,
                Wake::Closed(Stream::RegistrationEvents) => reg_events = None,
                Wake::ViewChanged => self.apply_view(),
                Wake::RegistrationChanged => {}
                Wake::RegistrationEvent(event) => {
                    if matches!(event, RegistrationEvent::EtcdUnreachable { .. }) {
                        self.metrics.etcd_errors.inc();
                    }
                }
            }
            self.publish_record_state();
            self.publish_status();
        }
    }

    /// Asks the daemon, applies the readiness rule, and starts the registration on the first
    /// answer.
    async fn probe_round(&mut self) -> Result<(), RunError> {
        // A slow probe must not delay a shutdown or a daemon exit: both are level-triggered,
        // so the loop's next select sees them at once.
        let result = tokio::select! {
            r = self.probe.check() => r,
            _ = self.requests.at_least(1) => return Ok(()),
            _ = self.daemon.wait() => return Ok(()),
        };
        let now = Instant::now();
        let reachable = result.is_ok();
        let changed = reachable != self.status.borrow().daemon.reachable;
        let first_answer = self.last_answer.is_none() && reachable;
        let still_waiting = self.last_answer.is_none()
            && now.saturating_duration_since(self.waiting_logged) >= WAITING_LOG_EVERY;
        match &result {
            Ok(_) if changed || first_answer => tracing::info!("daemon answers"),
            Err(e) if still_waiting => {
                self.waiting_logged = now;
                tracing::info!(error = %e, "daemon not answering yet");
            }
            Err(e) if changed => tracing::warn!(error = %e, "daemon stopped answering"),
            _ => {}
        }
        match result {
            Ok(report) => {
                self.last_answer = Some(now);
                self.failed_probes = 0;
                self.observation.reachable = true;
                self.observation.synced = report.synced;
                self.observation.lag = report.lag;
                self.observation.peers = report.peers.as_ref().map(Vec::len);
                self.status.send_modify(|s| {
                    s.daemon.reachable = true;
                    s.daemon.answered = true;
                    s.daemon.probe_error = None;
                });
            }
            Err(e) => {
                // One slow answer must not pull a serving node out of the load balancer.
                self.failed_probes = self.failed_probes.saturating_add(1);
                self.observation.reachable =
                    self.last_answer.is_some() && self.failed_probes < UNREACHABLE_AFTER_FAILURES;
                self.status.send_modify(|s| {
                    s.daemon.reachable = false;
                    s.daemon.probe_error = Some(e);
                });
            }
        }
        let before = self.readiness;
        self.readiness = readiness::next(before, &self.observation, &self.params.readiness, now);
        if before.is_ready() != self.readiness.is_ready() {
            tracing::info!(
                ready = self.readiness.is_ready(),
                reachable = self.observation.reachable,
                peers = ?self.observation.peers,
                lag = ?self.observation.lag,
                other_live = self.observation.other_live,
                "readiness changed"
            );
        }
        if self.registration.is_none() && self.last_answer.is_some() {
            self.start_registration().await?;
        }
        Ok(())
    }

    async fn start_registration(&mut self) -> Result<(), RunError> {
        self.publish_identity().await;
        let mut info = self.reg_info.clone();
        info.state = self.desired_state();
        let reg = Registration::spawn(self.etcd.clone(), self.reg_config.clone(), info.clone())
            .map_err(RunError::Registry)?;
        tracing::info!(node_id = %self.node_id(), state = %info.state, "registering");
        self.published_state = Some(info.state);
        self.registration = Some(reg);
        Ok(())
    }

    /// Puts the daemon's own identity (geth's enode id) in the record's `identity` label, so
    /// peers whose daemons list it by identity can map it to this record. An explicit
    /// `--label identity=…` wins; a daemon that cannot tell is registered without it.
    async fn publish_identity(&mut self) {
        let DaemonProbe::Adapter(adapter) = &self.probe else {
            return;
        };
        if self.reg_info.labels.contains_key(IDENTITY_LABEL) {
            return;
        }
        match tokio::time::timeout(daemon::PROBE_TIMEOUT, adapter.own_identity()).await {
            Ok(Ok(Some(identity))) => {
                tracing::info!(%identity, "daemon identity published in the record");
                self.reg_info
                    .labels
                    .insert(IDENTITY_LABEL.to_owned(), identity);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "daemon identity unavailable; registering without it")
            }
            Err(_) => tracing::warn!("daemon identity not given in time; registering without it"),
        }
    }

    fn apply_view(&mut self) {
        let snap = self.view.borrow_and_update().clone();
        let me = self.node_id().clone();
        self.observation.other_live = snap.peerable().filter(|r| r.id != me).count();
        let drain = snap.drain_requested.contains(&me);
        let was = self.status.borrow().drain_requested;
        if drain != was {
            tracing::info!(drain_requested = drain, "operator drain key changed");
        }
        self.status.send_modify(|s| {
            s.drain_requested = drain;
            s.view.revision = snap.revision;
            s.view.other_live = self.observation.other_live;
        });
    }

    /// The record state the node should publish now.
    fn desired_state(&self) -> NodeState {
        if self.phase.get() != Phase::Running || self.status.borrow().drain_requested {
            NodeState::Draining
        } else if self.readiness.is_ready() {
            NodeState::Ready
        } else {
            NodeState::Starting
        }
    }

    fn publish_record_state(&mut self) {
        let Some(reg) = &self.registration else {
            return;
        };
        let want = self.desired_state();
        if self.published_state != Some(want) {
            tracing::info!(
                from = self.published_state.map(NodeState::as_str),
                to = want.as_str(),
                "node state"
            );
            self.published_state = Some(want);
        }
        reg.set_state(want);
    }

    fn publish_status(&self) {
        let reg = self.registration.as_ref().map(Registration::status);
        let m = &self.metrics;
        if let Some(r) = &reg {
            Metrics::set_state(
                &m.registration_state,
                &REGISTRATION_STATES,
                r.state.as_str(),
            );
            m.mirror_total(
                "lease_regrants",
                &m.lease_regrants,
                r.lease_grants.saturating_sub(1),
            );
        }
        if let Some(state) = self.published_state {
            Metrics::set_state(&m.node_state, &NODE_STATES, state.as_str());
        }
        m.ready.set(i64::from(self.readiness.is_ready()));
        m.peers.set(
            self.observation
                .peers
                .map_or(0, |p| i64::try_from(p).unwrap_or(i64::MAX)),
        );
        m.daemon_up
            .set(i64::from(self.daemon.try_status().is_none()));
        // Recomputed on every round: a stale view publishes no change while it ages.
        let stale = self.view.borrow().stale_for().map(|d| d.as_secs_f64());
        m.view_age_seconds.set(stale.unwrap_or(0.0));
        let now = Instant::now();
        self.status.send_modify(|s| {
            s.heartbeat = now;
            s.view.stale_secs = stale;
            s.lifecycle = self.phase.get().as_str();
            s.state = self.published_state.map(NodeState::as_str);
            s.ready = self.readiness.is_ready();
            s.peers = self.observation.peers;
            s.lag_secs = self.observation.lag.map(|d| d.as_secs_f64());
            s.synced = self.observation.synced;
            s.daemon.last_answer_secs = self
                .last_answer
                .map(|t| now.saturating_duration_since(t).as_secs_f64());
            if let Some(r) = &reg {
                s.registration = r.state.as_str().to_owned();
                s.lease_id = r.lease;
            }
        });
    }

    /// The node id is held by another live instance: stop the daemon cleanly, exit 4.
    async fn registration_stopped(mut self, err: RegistryError) -> Result<i32, RunError> {
        tracing::error!(error = %err, "registration stopped; stopping the daemon");
        self.registration = None;
        self.phase.advance(Phase::Stopping, "registration failed");
        self.publish_status();
        let outcome = self
            .sup
            .stop(
                &self.daemon,
                self.params.stop_signal,
                self.params.stop_timeout,
                self.requests.at_least(self.requests.received() + 1),
            )
            .await;
        self.daemon_gone(outcome.status);
        self.sup.sweep(SWEEP_GRACE).await;
        Err(RunError::Registry(err))
    }

    /// Awaits `fut` while refreshing the published status, so a long drain delay or stop
    /// timeout does not look like a stuck agent to `/livez`.
    async fn beating<F: std::future::Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut tick = tokio::time::interval(SHUTDOWN_HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                out = &mut fut => return out,
                _ = tick.tick() => self.publish_status(),
            }
        }
    }

    /// Bookkeeping once the daemon has been reaped.
    fn daemon_gone(&mut self, status: ExitStatus) {
        self.metrics.daemon_exits.inc();
        self.metrics.daemon_up.set(0);
        self.status.send_modify(|s| {
            s.daemon.running = false;
            s.daemon.reachable = false;
            s.daemon.exit = Some(status.to_string());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_identity_label_is_one_the_peer_keeper_reads() {
        assert!(crate::keeper::plan::IDENTITY_LABELS.contains(&IDENTITY_LABEL));
    }
}
