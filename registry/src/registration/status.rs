//! What a registration reports: its state machine, a status snapshot and transition events.
//!
//! The state is an explicit enum so that every transition can be logged with its reason and
//! consumers (the agent's `/status`, metrics, tests) read one value instead of inferring it.

use std::fmt;
use std::time::SystemTime;

use crate::names::Slot;

/// Where a registration is in its life.
///
/// ```text
/// Unregistered ──▶ Registered ◀──▶ Unconfirmed
///       │              │  ▲            │
///       │              ▼  │            ▼
///       │             Lost ◀───────────┘
///       ▼
///   IdTaken (fatal)            Revoked (after revoke())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistrationState {
    /// Not registered yet: claiming, or etcd has not answered since start.
    Unregistered,
    /// The record and slot are in etcd under a live lease.
    Registered,
    /// The keepalive stream is down (etcd unreachable); the lease may still be alive. The
    /// registration re-opens keepalive on the same lease.
    Unconfirmed,
    /// The lease is gone (expired or revoked); a new one is being granted and the keys put again.
    Lost,
    /// Another live instance holds the node id beyond the claim timeout. Terminal.
    IdTaken,
    /// `revoke()` ran. Terminal.
    Revoked,
}

impl RegistrationState {
    /// The lower-case name used in logs, `/status` and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unregistered => "unregistered",
            Self::Registered => "registered",
            Self::Unconfirmed => "unconfirmed",
            Self::Lost => "lost",
            Self::IdTaken => "id_taken",
            Self::Revoked => "revoked",
        }
    }

    /// Whether the registration task has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::IdTaken | Self::Revoked)
    }
}

impl fmt::Display for RegistrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The holder of a contested node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdHolder {
    /// Its instance token.
    pub instance: String,
    /// Its `started_at`.
    pub started_at: String,
}

/// A snapshot of a registration, for `/status`, metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationStatus {
    /// The current state.
    pub state: RegistrationState,
    /// The lease the keys are bound to (etcd lease id), when one is held.
    pub lease: Option<i64>,
    /// The claimed slot, once claimed. Kept while `Unconfirmed`/`Lost` as the preferred slot.
    pub slot: Option<Slot>,
    /// Leases granted so far; more than one means the lease was lost and re-granted.
    pub lease_grants: u64,
    /// The last error seen talking to etcd, cleared on the next success.
    pub last_error: Option<String>,
    /// Who holds the id, when the state is `IdTaken` (or while waiting for it to be released).
    pub id_holder: Option<IdHolder>,
    /// Generation of the record last written to etcd (see [`super::Registration::update`]).
    pub written_generation: u64,
    /// When the state last changed.
    pub since: SystemTime,
}

impl RegistrationStatus {
    pub(crate) fn new() -> Self {
        Self {
            state: RegistrationState::Unregistered,
            lease: None,
            slot: None,
            lease_grants: 0,
            last_error: None,
            id_holder: None,
            written_generation: 0,
            since: SystemTime::now(),
        }
    }
}

/// A transition worth telling subscribers about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationEvent {
    /// First registration after start.
    Registered {
        /// The lease.
        lease: i64,
        /// The claimed slot.
        slot: Slot,
    },
    /// The lease was found expired or revoked.
    LeaseLost {
        /// The lost lease.
        lease: i64,
    },
    /// Registered again under a new lease after a loss.
    ReRegistered {
        /// The new lease.
        lease: i64,
        /// The slot (the old one when it was still free).
        slot: Slot,
    },
    /// The keepalive stream broke or a request failed because etcd did not answer.
    EtcdUnreachable {
        /// What failed.
        error: String,
    },
    /// The keepalive stream was re-opened on the same lease after an outage.
    Reconnected {
        /// The lease, unchanged.
        lease: i64,
    },
    /// Our record was missing or altered in etcd and has been put back.
    RecordRestored,
    /// Another live instance holds the id; the registration has stopped.
    IdTaken {
        /// The holder.
        holder: IdHolder,
    },
    /// The lease was revoked on request; the registration has stopped.
    Revoked,
}
