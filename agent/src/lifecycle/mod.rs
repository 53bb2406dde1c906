//! `peerkeep-agent run`: the lifecycle of one node container.
//!
//! Order of events, and why:
//!
//! 1. The supervisor comes first, so signals are handled before anything else exists (as PID 1
//!    an unhandled TERM would be dropped by the kernel).
//! 2. Addresses are resolved and the health listener bound *before* the daemon starts: the
//!    daemon is told its addresses on its command line, and a node without health checks must
//!    fail at start rather than run unobserved. A TERM/INT received until then ends the start
//!    without spawning the daemon (exit 128 + signal).
//! 3. The daemon is spawned; etcd is not needed for that (an etcd outage at start must not keep
//!    the node down). The membership view starts at once; the registration starts when the
//!    daemon first answers, as `starting`.
//! 4. The loop probes the daemon, applies the readiness rule and the operator's drain key, and
//!    publishes the record state, `/status` and metrics — until the daemon exits, a shutdown is
//!    requested (the `shutdown` module), or the node id turns out to be taken (exit 4).
//!
//! Modules: `setup` (flags → a running agent), `error` (early exits and their codes), this loop, `observe` (probe, readiness, view,
//! registration start), `publish` (record state, `/status`, metrics), `shutdown`, `phase`,
//! `daemon` (command line and probe).
//!
//! With a node adapter, the peer keeper ([`crate::keeper`]) runs beside this loop as its own
//! task (started in [`run`], stopped when the phase leaves Running); this loop only reads the
//! peer count for readiness.

mod daemon;
mod error;
mod observe;
mod phase;
mod publish;
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
use crate::keeper::PeerObservation;
use crate::readiness::{Observation, Readiness, ReadinessParams};

pub use daemon::{DaemonProbe, ProbeReport};
pub use error::RunError;
pub use phase::{Phase, PhaseMachine};
pub use setup::run;

/// Probe interval until the daemon first answers: registration should follow the daemon's
/// first answer closely, whatever `--peer-poll` is.
const FIRST_ANSWER_POLL: Duration = Duration::from_millis(100);

/// Time allowed to revoke the lease before giving up and letting it expire (a healthy etcd
/// answers in milliseconds; a hung one must not eat the orchestrator's grace period).
const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often `/status` (and its liveness heartbeat) is refreshed during shutdown waits.
const SHUTDOWN_HEARTBEAT: Duration = Duration::from_secs(1);

/// Grace for leftover processes when sweeping as PID 1.
const SWEEP_GRACE: Duration = Duration::from_secs(2);

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
    /// What each probe saw of the daemon's peers, for the peer keeper (`None` while the daemon
    /// does not answer).
    peer_observations: watch::Sender<Option<Arc<PeerObservation>>>,
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
        // The view may have loaded before this loop subscribed to its changes.
        self.apply_view();
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
                    if let Err(err) = self.probe_round().await {
                        return self.stop_after_error(err).await;
                    }
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

    /// The node id is held by another live instance: stop the daemon cleanly, exit 4.
    async fn registration_stopped(mut self, err: RegistryError) -> Result<i32, RunError> {
        // Nothing of ours to revoke: the registration has ended.
        self.registration = None;
        self.stop_after_error(RunError::Registry(err)).await
    }

    /// Something failed after the daemon was started: deregister (bounded), stop the daemon
    /// with `--stop-signal` and `--stop-timeout`, sweep, and return the error for its exit
    /// code. The daemon is never left behind: as PID 1 the agent's exit would have the kernel
    /// SIGKILL it without a drain.
    async fn stop_after_error(mut self, err: RunError) -> Result<i32, RunError> {
        tracing::error!(error = %err, "stopping the daemon after an error");
        self.phase.advance(Phase::Stopping, "error");
        self.publish_status();
        self.revoke().await;
        // Beating like the shutdown's stop: a long --stop-timeout must not fail /livez.
        let outcome = self
            .beating(self.sup.stop(
                &self.daemon,
                self.params.stop_signal,
                self.params.stop_timeout,
                self.requests.at_least(self.requests.received() + 1),
            ))
            .await;
        if outcome.killed {
            tracing::error!(
                status = %outcome.status,
                stop_timeout = ?self.params.stop_timeout,
                "daemon killed with SIGKILL: unclean stop (raise --stop-timeout if it needs longer)"
            );
        } else {
            tracing::info!(status = %outcome.status, "daemon stopped");
        }
        self.daemon_gone(outcome.status);
        self.sup.sweep(SWEEP_GRACE).await;
        self.phase.advance(Phase::Exited, "daemon reaped");
        self.publish_status();
        Err(err)
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
