//! Publishing: the record state asked of the registration, `/status`, and the metrics, all
//! derived from the agent's current phase, readiness and observations.

use std::time::Instant;

use peerkeep_registry::NodeState;
use peerkeep_registry::registration::Registration;

use super::{Agent, Phase};
use crate::health::metrics::Metrics;

/// The states the registration can report, for the one-hot metric.
const REGISTRATION_STATES: [&str; 6] = [
    "unregistered",
    "registered",
    "unconfirmed",
    "lost",
    "id_taken",
    "revoked",
];

/// The record states, for the one-hot metric.
const NODE_STATES: [&str; 3] = ["starting", "ready", "draining"];

impl Agent {
    /// The record state the node should publish now.
    pub(super) fn desired_state(&self) -> NodeState {
        if self.phase.get() != Phase::Running || self.status.borrow().drain_requested {
            NodeState::Draining
        } else if self.readiness.is_ready() {
            NodeState::Ready
        } else {
            NodeState::Starting
        }
    }

    pub(super) fn publish_record_state(&mut self) {
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

    pub(super) fn publish_status(&self) {
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
}
