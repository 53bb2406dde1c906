//! peerkeep-agent: the entrypoint of a node container.
//!
//! It starts the node daemon under a PID 1-grade supervisor, finds the addresses the node must
//! advertise, registers the node in etcd under a lease, serves health checks, and on SIGTERM
//! drains and stops the daemon cleanly. The binary (`src/main.rs`) only parses flags and maps
//! errors to exit codes; everything else lives here so tests can reach it.
//!
//! - [`app`]: subcommand dispatch and exit codes.
//! - [`cli`]: flags and subcommands.
//! - [`endpoints`], [`daemon_env`]: what is published and what the daemon is told.
//! - [`health`]: health server, status, metrics, and the `health` probe.
//! - [`keeper`]: the peer keeper's plan (degree between K and the maximum).
//! - [`lifecycle`]: `run`: spawn, register, probe, drain and stop.
//! - [`readiness`]: the `ready` rule as a pure function.
//! - [`resolve`]: address sources (`ip:`, `env:`, `iface:`, `cidr:`, `ec2:`, `route`, `hostname`).

#![forbid(unsafe_code)]

pub mod adapter;
pub mod addresses;
pub mod app;
pub mod cli;
pub mod daemon_env;
pub mod endpoints;
pub mod health;
pub mod keeper;
pub mod lifecycle;
pub mod readiness;
pub mod resolve;
