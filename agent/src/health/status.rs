//! The agent's status: what `/status` shows and what `/livez` and `/readyz` decide from.
//!
//! The lifecycle writes it (through a `watch` channel, so readers never block the writer); the
//! health server only reads. Nothing secret goes in: etcd credentials are reduced to the user
//! name, so `/status` can be exposed to the load balancer's network.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A resolved address and how it was found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AddressStatus {
    /// The address.
    pub addr: String,
    /// The source that gave it.
    pub source: String,
    /// Earlier sources and why they gave nothing usable.
    pub skipped: Vec<String>,
}

/// Everything `/status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    /// The node id.
    pub node_id: String,
    /// This agent start's random instance token.
    pub instance: String,
    /// `peerkeep-agent <version>`.
    pub version: String,
    /// Lifecycle phase: running, draining, stopping, exited.
    pub lifecycle: &'static str,
    /// Node state last asked of the registration (starting, ready, draining), if any yet.
    pub state: Option<&'static str>,
    /// Whether the readiness rule holds (before draining is applied).
    pub ready: bool,
    /// The operator's drain key is set.
    pub drain_requested: bool,
    /// The daemon process.
    pub daemon: DaemonStatus,
    /// The registration (lease and record), as the registry reports it.
    pub registration: String,
    /// The current lease id, if one is held.
    pub lease_id: Option<i64>,
    /// The membership view.
    pub view: ViewStatus,
    /// Peers the daemon reports, if the adapter can tell.
    pub peers: Option<usize>,
    /// The node adapter in use.
    pub adapter: String,
    /// The peer keeper's inputs and backoffs (absent with `--adapter none`).
    pub keeper: Option<crate::keeper::KeeperStatus>,
    /// The daemon's synced claim, if the adapter can tell.
    pub synced: Option<bool>,
    /// Age of the daemon's best block in seconds, if the adapter can tell.
    pub lag_secs: Option<f64>,
    /// The advertised address.
    pub advertise: Option<AddressStatus>,
    /// The private address.
    pub private: Option<AddressStatus>,
    /// Published endpoints.
    pub endpoints: BTreeMap<String, String>,
    /// etcd endpoints in use.
    pub etcd_endpoints: Vec<String>,
    /// etcd user, if any (the password is never shown).
    pub etcd_user: Option<String>,
    /// When the lifecycle loop last ran; a stuck loop fails liveness.
    #[serde(skip)]
    pub heartbeat: Instant,
}

/// The daemon process, as far as the agent knows.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DaemonStatus {
    /// Its pid.
    pub pid: Option<i32>,
    /// Whether the process runs.
    pub running: bool,
    /// Whether its last probe succeeded.
    pub reachable: bool,
    /// Whether it ever answered.
    pub answered: bool,
    /// Seconds since it last answered, if it ever did.
    pub last_answer_secs: Option<f64>,
    /// How it exited, once it has.
    pub exit: Option<String>,
    /// The last probe error.
    pub probe_error: Option<String>,
}

/// The membership view.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ViewStatus {
    /// Revision of the view (0 before the first read).
    pub revision: i64,
    /// Live records other than this node.
    pub other_live: usize,
    /// Seconds the view has been stale, if it is.
    pub stale_secs: Option<f64>,
}

impl AgentStatus {
    /// A fresh status before anything has happened.
    pub fn new(node_id: String, instance: String) -> Self {
        Self {
            node_id,
            instance,
            version: format!("peerkeep-agent {}", env!("CARGO_PKG_VERSION")),
            lifecycle: "running",
            state: None,
            ready: false,
            drain_requested: false,
            daemon: DaemonStatus::default(),
            registration: "unregistered".to_owned(),
            lease_id: None,
            view: ViewStatus::default(),
            peers: None,
            adapter: "none".to_owned(),
            keeper: None,
            synced: None,
            lag_secs: None,
            advertise: None,
            private: None,
            endpoints: BTreeMap::new(),
            etcd_endpoints: Vec::new(),
            etcd_user: None,
            heartbeat: Instant::now(),
        }
    }
}

/// Limits for the liveness decision.
#[derive(Debug, Clone, Copy)]
pub struct LivenessParams {
    /// A lifecycle loop silent longer than this is stuck.
    pub heartbeat_limit: Duration,
    /// A daemon that answered once and then not for this long is hung.
    pub unanswered_limit: Duration,
}

/// `/livez`: `Ok` or the reason. Never depends on peers, sync or etcd: Swarm kills unhealthy
/// tasks, and a lone bootstrap node or an etcd outage must not get every node killed.
pub fn liveness(s: &AgentStatus, p: &LivenessParams, now: Instant) -> Result<(), String> {
    if !s.daemon.running {
        return Err("daemon not running".to_owned());
    }
    let silent = now.saturating_duration_since(s.heartbeat);
    if silent > p.heartbeat_limit {
        return Err(format!("agent loop silent for {silent:?}"));
    }
    if s.daemon.answered
        && let Some(secs) = s.daemon.last_answer_secs
        && secs > p.unanswered_limit.as_secs_f64()
    {
        return Err(format!("daemon has not answered for {secs:.0}s"));
    }
    Ok(())
}

/// `/readyz`: `Ok` or the reason.
pub fn readiness(s: &AgentStatus) -> Result<(), String> {
    if s.lifecycle != "running" {
        return Err(s.lifecycle.to_owned());
    }
    if s.drain_requested {
        return Err("draining (operator request)".to_owned());
    }
    if !s.daemon.running {
        return Err("daemon not running".to_owned());
    }
    if !s.ready {
        return Err(match (&s.daemon.answered, &s.daemon.probe_error) {
            (false, Some(e)) => format!("starting: daemon not answering yet ({e})"),
            (false, None) => "starting: daemon not answering yet".to_owned(),
            _ => "starting: not synced or short of peers".to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> AgentStatus {
        let mut s = AgentStatus::new("n1".into(), "i".into());
        s.daemon.running = true;
        s
    }

    const P: LivenessParams = LivenessParams {
        heartbeat_limit: Duration::from_secs(10),
        unanswered_limit: Duration::from_secs(30),
    };

    #[test]
    fn liveness_ignores_peers_and_etcd_but_not_a_hung_daemon() {
        let now = Instant::now();
        let mut s = running();
        s.registration = "lost".into();
        s.view.stale_secs = Some(600.0);
        assert!(liveness(&s, &P, now).is_ok(), "etcd down is not death");
        s.lifecycle = "draining";
        assert!(liveness(&s, &P, now).is_ok(), "draining stays live");
        s.daemon.answered = true;
        s.daemon.last_answer_secs = Some(31.0);
        assert!(liveness(&s, &P, now).is_err());
        s.daemon.last_answer_secs = Some(1.0);
        s.heartbeat = now - Duration::from_secs(11);
        assert!(liveness(&s, &P, now).is_err());
        s.heartbeat = now;
        s.daemon.running = false;
        assert!(liveness(&s, &P, now).is_err());
    }

    #[test]
    fn readiness_needs_the_rule_and_no_drain() {
        let mut s = running();
        assert!(readiness(&s).is_err());
        s.ready = true;
        assert!(readiness(&s).is_ok());
        s.drain_requested = true;
        assert!(readiness(&s).is_err());
        s.drain_requested = false;
        s.lifecycle = "draining";
        assert!(readiness(&s).is_err());
    }
}
