//! Everything that talks to HAProxy or its files: the two CLI sockets, the configuration file,
//! the server-state file and the haproxy process itself.
//!
//! Decisions about *what* to send are made elsewhere (in [`crate::diff`]); this module only
//! carries them out and reports, with the socket or path concerned, what went wrong.

pub mod files;
pub mod master;
pub mod process;
pub mod runtime_api;
pub mod socket;
pub mod state_file;
