//! Leaving: the shutdown sequence on TERM/INT, and the daemon exiting on its own.
//!
//! The sequence is the one of DESIGN.md and issue 4, in this order because each step protects
//! the next: readiness false (so `/readyz` fails at once) → record `draining` in etcd (load
//! balancers and peers stop choosing the node) → wait until `--drain-delay` after that request
//! (in-flight requests drain; etcd's confirmation is awaited within the delay, not on top of
//! it) → revoke the lease (the record and slot disappear) → `--stop-signal` + CONT to the
//! daemon's process group → wait `--stop-timeout` → SIGKILL, logged as unclean → sweep
//! leftovers when PID 1 → exit with the daemon's status. A second TERM/INT skips whatever
//! waits remain; etcd trouble never blocks the stop (every etcd step is bounded), so the total
//! is at most drain delay + `REVOKE_TIMEOUT` + stop timeout + the sweep.

use nix::sys::signal::Signal;
use peerkeep_registry::NodeState;
use peerkeep_registry::registration::RegistrationState;
use peerkeep_supervise::ExitStatus;

use super::{Agent, Phase, REVOKE_TIMEOUT, SWEEP_GRACE};

impl Agent {
    /// The shutdown sequence; returns the exit code (the daemon's status).
    pub(super) async fn shutdown(mut self, signal: Signal) -> i32 {
        self.phase
            .advance(Phase::Draining, &format!("{signal} received"));
        let skip = self.requests.clone();
        let skipped = || skip.at_least(2);
        // Readiness false first: /readyz fails from this moment on.
        self.publish_status();

        // A node that never got into etcd is in no load balancer: nothing to drain.
        let ever_registered = self
            .registration
            .as_ref()
            .is_some_and(|r| r.status().state != RegistrationState::Unregistered);
        if let Some(reg) = self.registration.as_ref().filter(|_| ever_registered) {
            // The drain delay runs from the moment `draining` is asked for: waiting for etcd to
            // confirm it is part of the delay, not added to it, so an etcd outage costs no
            // more than the delay itself (plus the bounded revoke) within the grace period.
            let drain_until = tokio::time::Instant::now() + self.params.drain_delay;
            let generation = reg.set_state(NodeState::Draining);
            self.published_state = Some(NodeState::Draining);
            self.publish_status();
            tracing::info!(delay = ?self.params.drain_delay, "draining: waiting for load balancers to drain");
            self.beating(async {
                tokio::select! {
                    status = self.daemon.wait() => tracing::warn!(%status, "daemon exited while draining"),
                    r = tokio::time::timeout_at(drain_until, reg.written(generation)) => match r {
                        Ok(Ok(())) => tracing::info!("record marked draining"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "could not mark the record draining"),
                        Err(_) => tracing::warn!(
                            waited = ?self.params.drain_delay,
                            "etcd did not confirm draining within the drain delay; continuing"
                        ),
                    },
                    _ = skipped() => tracing::info!("second shutdown request: skipping the drain"),
                }
            })
            .await;
            if skip.received() < 2 && self.daemon.try_status().is_none() {
                self.beating(async {
                    tokio::select! {
                        () = tokio::time::sleep_until(drain_until) => {}
                        // Nothing left to drain for: the daemon is gone.
                        status = self.daemon.wait() => tracing::warn!(%status, "daemon exited while draining"),
                        _ = skipped() => tracing::info!("second shutdown request: skipping the drain delay"),
                    }
                })
                .await;
            }
        }
        // Even after a second TERM: revoking is quick (bounded by REVOKE_TIMEOUT) and keeps
        // the order "record gone before the daemon is signalled".
        self.revoke().await;

        self.phase
            .advance(Phase::Stopping, "drained; stopping the daemon");
        self.publish_status();
        let outcome = self
            .beating(self.sup.stop(
                &self.daemon,
                self.params.stop_signal,
                self.params.stop_timeout,
                skipped(),
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
        self.finish(outcome.status).await
    }

    /// The daemon exited without being asked: deregister at once and pass its status on.
    pub(super) async fn daemon_exited(mut self, status: ExitStatus) -> i32 {
        tracing::warn!(%status, "daemon exited on its own; deregistering");
        self.phase.advance(Phase::Stopping, "daemon exited");
        self.daemon_gone(status);
        self.publish_status();
        self.revoke().await;
        self.finish(status).await
    }

    /// Revokes the lease (record and slot disappear at once), bounded by `REVOKE_TIMEOUT`.
    pub(super) async fn revoke(&mut self) {
        let Some(reg) = self.registration.take() else {
            return;
        };
        match self
            .beating(tokio::time::timeout(REVOKE_TIMEOUT, reg.revoke()))
            .await
        {
            Ok(Ok(())) => tracing::info!("lease revoked; record removed"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not revoke the lease; the record expires with it")
            }
            Err(_) => tracing::warn!(
                waited = ?REVOKE_TIMEOUT,
                "lease revocation timed out; the record expires with the lease"
            ),
        }
    }

    async fn finish(mut self, status: ExitStatus) -> i32 {
        self.sup.sweep(SWEEP_GRACE).await;
        self.phase.advance(Phase::Exited, "daemon reaped");
        self.publish_status();
        let code = status.to_exit_code();
        tracing::info!(%status, exit_code = code, "agent exiting");
        code
    }
}
