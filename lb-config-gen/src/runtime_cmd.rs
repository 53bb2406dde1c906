//! Runtime API commands as typed values.
//!
//! The runtime API splits commands on `;` and newlines and silently wraps ports above 65535, so
//! a command built from a string could carry a second command. [`RuntimeCommand`] holds only
//! typed values — a [`BackendName`] built from validated names, a [`Slot`], a parsed
//! [`Endpoint`] — and is turned into text in one place, [`fmt::Display`].

use std::fmt;

use peerkeep_registry::{Endpoint, Slot};

use crate::render::BackendName;

/// A server's administrative state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// Takes traffic (subject to its checks).
    Ready,
    /// Maintenance: no traffic, no checks.
    Maint,
}

/// One `set server` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeCommand {
    /// `set server B/sN addr IP port P`
    SetAddr {
        /// Backend.
        backend: BackendName,
        /// Server slot.
        slot: Slot,
        /// New traffic address.
        addr: Endpoint,
    },
    /// `set server B/sN check-addr IP port P`
    SetCheckAddr {
        /// Backend.
        backend: BackendName,
        /// Server slot.
        slot: Slot,
        /// New check address.
        addr: Endpoint,
    },
    /// `set server B/sN state ready|maint`
    SetState {
        /// Backend.
        backend: BackendName,
        /// Server slot.
        slot: Slot,
        /// New state.
        state: AdminState,
    },
    /// `set server B/sN health down`: a joiner waits for its first passing checks.
    MarkDown {
        /// Backend.
        backend: BackendName,
        /// Server slot.
        slot: Slot,
    },
}

impl fmt::Display for RuntimeCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SetAddr {
                backend,
                slot,
                addr,
            } => write!(
                f,
                "set server {backend}/s{slot} addr {} port {}",
                addr.ip(),
                addr.port()
            ),
            Self::SetCheckAddr {
                backend,
                slot,
                addr,
            } => write!(
                f,
                "set server {backend}/s{slot} check-addr {} port {}",
                addr.ip(),
                addr.port()
            ),
            Self::SetState {
                backend,
                slot,
                state,
            } => {
                let s = match state {
                    AdminState::Ready => "ready",
                    AdminState::Maint => "maint",
                };
                write!(f, "set server {backend}/s{slot} state {s}")
            }
            Self::MarkDown { backend, slot } => {
                write!(f, "set server {backend}/s{slot} health down")
            }
        }
    }
}
