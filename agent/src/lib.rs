//! peerkeep-agent: the entrypoint of a node container.
//!
//! It starts the node daemon under a PID 1-grade supervisor, finds the addresses the node must
//! advertise, registers the node in etcd under a lease, serves health checks, and on SIGTERM
//! drains and stops the daemon cleanly. The binary (`src/main.rs`) only parses flags and maps
//! errors to exit codes; everything else lives here so tests can reach it.
//!
//! - [`resolve`]: address sources (`ip:`, `env:`, `iface:`, `cidr:`, `ec2:`, `route`, `hostname`).

pub mod resolve;
