//! Health: the HTTP server orchestrators and load balancers probe, its status and metrics, and
//! the `health` subcommand that probes it from inside the container.
//!
//! - [`status`]: what the agent knows, and the pure liveness/readiness decisions over it.
//! - [`metrics`]: the `peerkeep_agent_*` Prometheus metrics.
//! - [`server`]: `/livez`, `/readyz`, `/status`, `/metrics` (axum).
//! - [`probe`]: the synchronous one-request client behind `peerkeep-agent health`.

pub mod metrics;
pub mod probe;
pub mod server;
pub mod status;

pub use metrics::Metrics;
pub use status::{AgentStatus, LivenessParams};
