//! lb-config-gen: turns the etcd registry's ready nodes into HAProxy configuration and keeps a
//! master-worker HAProxy in step with it.
//!
//! Decisions are pure and effects are thin loops around them:
//!
//! - [`config`]: the TOML file, validated into typed settings (every error with its field).
//! - [`model`]: config + membership snapshot → the typed desired state (slots, capacities).
//! - [`render`]: model → configuration text; no I/O, same model gives the same bytes.
//! - [`diff`]: running vs desired → runtime API commands, a reload, or nothing.
//! - [`runtime_cmd`]: runtime API commands as typed values, rendered to text in one place.
//! - [`haproxy`]: the master and runtime sockets, validated atomic file installs, the process.
//! - [`apply`]: owns the running model and carries out the diff ([`probe`] pre-checks joiners); [`run`]: the event loop
//!   (debounce, SIGHUP, TERM, empty-set guard); [`health`], [`metrics`]: `/readyz`, `/metrics`.
//! - [`cli`], [`error`]: commands, flag/file precedence, exit codes.
//!
//! Nothing read from etcd reaches the configuration or the runtime API as a raw string: only
//! the registry's validated names, slots and endpoints do.
#![forbid(unsafe_code)]

pub mod apply;
pub mod cli;
pub mod config;
pub mod debounce;
pub mod diff;
pub mod error;
pub mod haproxy;
pub mod health;
pub mod metrics;
pub mod model;
pub mod probe;
pub mod render;
pub mod run;
pub mod runtime_cmd;

pub use config::{Config, ConfigError};
pub use diff::{Apply, diff};
pub use model::{Model, build};
pub use render::{RenderedConfig, render};
pub use runtime_cmd::RuntimeCommand;
