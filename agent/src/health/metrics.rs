//! The agent's Prometheus metrics (`peerkeep_agent_*`), served on `/metrics`.
//!
//! Names follow `peerkeep_<subsystem>_<noun>_<unit>[_total]`; prometheus-client appends
//! `_total` to counters. Label sets are bounded (state names only). Totals kept by other
//! components (the registration's lease re-grants, etcd errors) are mirrored with
//! [`Metrics::mirror_total`], which adds only the growth since the last call.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A `state` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state's name.
    pub state: String,
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// 1 for the current registration state, 0 for the others seen.
    pub registration_state: Family<StateLabel, Gauge>,
    /// 1 for the node state last published (starting, ready, draining).
    pub node_state: Family<StateLabel, Gauge>,
    /// New leases granted after the first (the old one expired or was revoked).
    pub lease_regrants: Counter,
    /// Failed etcd requests and broken streams.
    pub etcd_errors: Counter,
    /// Age of the membership view when stale, 0 while the watch is live.
    pub view_age_seconds: Gauge<f64, AtomicU64>,
    /// Peers the daemon reports (inbound included).
    pub peers: Gauge,
    /// 1 while the readiness rule holds.
    pub ready: Gauge,
    /// Connects asked of the daemon.
    pub peer_connects: Counter,
    /// Disconnects asked of the daemon.
    pub peer_disconnects: Counter,
    /// Connects that failed or were not confirmed by a peer listing in time.
    pub peer_connect_failures: Counter,
    /// 1 while the daemon process runs.
    pub daemon_up: Gauge,
    /// Daemon exits seen (the agent exits after the first; a scrape shows it while draining).
    pub daemon_exits: Counter,
    mirrored: Mutex<std::collections::HashMap<&'static str, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("peerkeep_agent");
        let m = Self {
            registration_state: Family::default(),
            node_state: Family::default(),
            lease_regrants: Counter::default(),
            etcd_errors: Counter::default(),
            view_age_seconds: Gauge::default(),
            peers: Gauge::default(),
            ready: Gauge::default(),
            peer_connects: Counter::default(),
            peer_disconnects: Counter::default(),
            peer_connect_failures: Counter::default(),
            daemon_up: Gauge::default(),
            daemon_exits: Counter::default(),
            mirrored: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "registration_state",
            "Registration state (1 = current)",
            m.registration_state.clone(),
        );
        registry.register(
            "node_state",
            "Node state last published in the record (1 = current)",
            m.node_state.clone(),
        );
        registry.register(
            "lease_regrants",
            "New leases granted after the first",
            m.lease_regrants.clone(),
        );
        registry.register(
            "etcd_errors",
            "Failed etcd requests and broken streams",
            m.etcd_errors.clone(),
        );
        registry.register(
            "view_age_seconds",
            "How long the membership view has been stale (0 when live)",
            m.view_age_seconds.clone(),
        );
        registry.register("peers", "Peers the daemon reports", m.peers.clone());
        registry.register("ready", "1 while the node is ready", m.ready.clone());
        registry.register(
            "peer_connects",
            "Connects asked of the daemon",
            m.peer_connects.clone(),
        );
        registry.register(
            "peer_disconnects",
            "Disconnects asked of the daemon",
            m.peer_disconnects.clone(),
        );
        registry.register(
            "peer_connect_failures",
            "Connects that failed or were not confirmed by a peer listing in time",
            m.peer_connect_failures.clone(),
        );
        registry.register("daemon_up", "1 while the daemon runs", m.daemon_up.clone());
        registry.register("daemon_exits", "Daemon exits seen", m.daemon_exits.clone());
        // Families print nothing until a label set exists; a scrape before the first
        // registration attempt must still show the series users alert on.
        Self::set_state(&m.registration_state, &["unregistered"], "unregistered");
        Self { registry, ..m }
    }

    /// Sets a one-hot state family: `current` to 1, every other known state to 0.
    pub fn set_state(family: &Family<StateLabel, Gauge>, all: &[&str], current: &str) {
        for s in all {
            family
                .get_or_create(&StateLabel {
                    state: (*s).to_owned(),
                })
                .set(i64::from(*s == current));
        }
    }

    /// Adds to `counter` the growth of a total kept elsewhere, remembered under `key`.
    pub fn mirror_total(&self, key: &'static str, counter: &Counter, total: u64) {
        let mut seen = self
            .mirrored
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = seen.entry(key).or_insert(0);
        if total > *last {
            counter.inc_by(total - *last);
            *last = total;
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_users_alert_on_are_exported() {
        let m = Metrics::new();
        Metrics::set_state(&m.node_state, &["starting", "ready", "draining"], "ready");
        m.mirror_total("regrants", &m.lease_regrants, 2);
        m.mirror_total("regrants", &m.lease_regrants, 3);
        let text = m.encode().expect("encodes");
        for name in [
            "peerkeep_agent_registration_state",
            "peerkeep_agent_node_state{state=\"ready\"} 1",
            "peerkeep_agent_node_state{state=\"draining\"} 0",
            "peerkeep_agent_lease_regrants_total 3",
            "peerkeep_agent_etcd_errors_total 0",
            "peerkeep_agent_view_age_seconds",
            "peerkeep_agent_peers",
            "peerkeep_agent_peer_connects_total",
            "peerkeep_agent_peer_disconnects_total",
            "peerkeep_agent_daemon_exits_total",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
