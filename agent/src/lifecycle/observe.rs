//! Observing: probing the daemon, applying the readiness rule, following the membership view,
//! and starting the registration on the daemon's first answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use peerkeep_registry::registration::Registration;

use super::daemon::{self, DaemonProbe};
use super::{Agent, RunError, setup};
use crate::keeper::{self, PeerObservation};
use crate::readiness;

/// Consecutive failed probes after which a daemon that answered before counts as unreachable
/// for readiness (`/status` shows every failure at once).
const UNREACHABLE_AFTER_FAILURES: u32 = 3;

/// How often "daemon not answering yet" is repeated while waiting for the first answer.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(10);

/// The record label carrying the daemon's own identity (one of the keeper's identity labels).
const IDENTITY_LABEL: &str = "identity";

impl Agent {
    /// Asks the daemon, applies the readiness rule, and starts the registration on the first
    /// answer.
    pub(super) async fn probe_round(&mut self) -> Result<(), RunError> {
        // A slow probe must not delay a shutdown or a daemon exit: both are level-triggered,
        // so the loop's next select sees them at once.
        let probe_started = Instant::now();
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
                // Distinct peers, counted as the keeper counts its degree.
                let degree = report.peers.as_ref().map(|peers| {
                    keeper::plan::distinct_degree(peers, &self.view.borrow(), self.node_id())
                });
                self.observation.peers = degree;
                self.peer_observations
                    .send_replace(report.peers.map(|peers| {
                        Arc::new(PeerObservation {
                            peers,
                            synced: report.synced,
                            listed_at: probe_started,
                        })
                    }));
                self.status.send_modify(|s| {
                    s.daemon.reachable = true;
                    s.daemon.answered = true;
                    s.daemon.probe_error = None;
                });
            }
            Err(e) => {
                self.peer_observations.send_replace(None);
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
                other_live = ?self.observation.other_live,
                "readiness changed"
            );
        }
        if self.registration.is_none() && self.last_answer.is_some() {
            self.start_registration().await?;
        }
        Ok(())
    }

    pub(super) async fn start_registration(&mut self) -> Result<(), RunError> {
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
    pub(super) async fn publish_identity(&mut self) {
        let DaemonProbe::Adapter(adapter) = &self.probe else {
            return;
        };
        if self.reg_info.labels.contains_key(IDENTITY_LABEL) {
            return;
        }
        match tokio::time::timeout(daemon::PROBE_TIMEOUT, adapter.own_identity()).await {
            Ok(Ok(Some(identity))) => {
                let mut with = self.reg_info.clone();
                with.labels
                    .insert(IDENTITY_LABEL.to_owned(), identity.clone());
                // The other labels were checked before the daemon started; the identity must
                // not turn a working node into one that cannot register.
                match setup::record_fits(&self.reg_config, &with) {
                    Ok(()) => {
                        tracing::info!(%identity, "daemon identity published in the record");
                        self.reg_info = with;
                    }
                    Err(e) => tracing::warn!(
                        %identity,
                        error = %e,
                        "daemon identity left out of the record: it would not fit beside the --label values"
                    ),
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "daemon identity unavailable; registering without it")
            }
            Err(_) => tracing::warn!("daemon identity not given in time; registering without it"),
        }
    }

    pub(super) fn apply_view(&mut self) {
        let snap = self.view.borrow_and_update().clone();
        let me = self.node_id().clone();
        self.observation.other_live = readiness::other_live(&snap, &me);
        let drain = snap.drain_requested.contains(&me);
        let was = self.status.borrow().drain_requested;
        if drain != was {
            tracing::info!(drain_requested = drain, "operator drain key changed");
        }
        // The registration counts its own etcd failures; a broken watch is counted here, once
        // per outage. The view itself is kept: an outage never looks like "no peers".
        let was_stale = self.status.borrow().view.stale_secs.is_some();
        if snap.stale_since.is_some() && !was_stale {
            self.metrics.etcd_errors.inc();
            tracing::warn!(
                revision = snap.revision,
                "membership watch broken; keeping the last view"
            );
        }
        self.status.send_modify(|s| {
            s.drain_requested = drain;
            s.view.revision = snap.revision;
            s.view.other_live = self.observation.other_live.unwrap_or(0);
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
