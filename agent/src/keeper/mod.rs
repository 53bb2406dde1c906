//! The peer keeper: holds the node's degree between K and the maximum through the daemon's own
//! connect/disconnect API.
//!
//! The decision is [`plan::plan`], a pure function of what the daemon reports, what the registry
//! says and what the keeper remembers ([`state::KeeperState`]: pending connects and per-candidate
//! backoff). The loop around it, [`run::PeerKeeper`], only gathers those inputs and applies the
//! actions. Two rules shape everything here, both learned from the shell scripts this replaces:
//!
//! - *Disconnect only what asked to go*: a peer is disconnected only when its record says
//!   `draining`, or to trim above the maximum degree. A record that vanished (its node died, or
//!   was merely cut off from etcd) just stops being a candidate.
//! - *etcd trouble is not "no peers"*: a stale view changes which candidates are chosen, nothing
//!   else.

pub mod plan;
pub mod rank;
pub mod run;
pub mod state;

pub use plan::{Action, DisconnectReason, Plan, PlanParams, plan};
pub use run::{
    KeeperConfig, KeeperCounters, KeeperStatus, Observations, PeerKeeper, PeerObservation,
};
pub use state::{BackoffPolicy, KeeperState};
