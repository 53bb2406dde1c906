//! The file as written: serde structs that accept any strings and numbers, and reject
//! unknown keys (`deny_unknown_fields`), so that a misspelt key is an error.

use serde::Deserialize;

/// The file as written, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// etcd connection; flags and `PEERKEEP_*` variables override it.
    #[serde(default)]
    pub etcd: RawEtcd,
    /// HAProxy paths and global settings.
    #[serde(default)]
    pub haproxy: RawHaproxy,
    /// The services to expose.
    #[serde(default)]
    pub services: Vec<RawService>,
}

/// `[etcd]`: defaults for the shared etcd flags.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    /// etcd client URLs.
    pub endpoints: Option<Vec<String>>,
    /// The cluster whose nodes are balanced.
    pub cluster: Option<String>,
    /// The key prefix.
    pub prefix: Option<String>,
    /// Admit loopback addresses in records.
    pub allow_loopback: Option<bool>,
}

/// `[haproxy]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHaproxy {
    /// The haproxy executable.
    pub bin: Option<String>,
    /// Where the generated configuration is written.
    pub config: Option<String>,
    /// The master CLI socket (`-S`).
    pub master_socket: Option<String>,
    /// The runtime API (stats) socket.
    pub stats_socket: Option<String>,
    /// Where server states are saved across reloads.
    pub state_file: Option<String>,
    /// How long an old worker may keep serving after a reload.
    pub hard_stop_after: Option<String>,
    /// Global connection limit.
    pub maxconn: Option<u32>,
}

/// One `[[services]]` entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// Service name (frontend and backend name).
    pub name: Option<String>,
    /// Frontend bind address, `ip:port`.
    pub bind: Option<String>,
    /// `http` or `tcp`.
    pub mode: Option<String>,
    /// Balance algorithm.
    pub balance: Option<String>,
    /// The record endpoint traffic is sent to.
    pub endpoint: Option<String>,
    /// Pre-allocated servers.
    pub capacity: Option<u32>,
    /// Health check.
    #[serde(default)]
    pub check: RawCheck,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Per-node frontends.
    pub per_node: Option<RawPerNode>,
}

/// `services[].check` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    /// `health` (default), `http` or `tcp`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// HTTP path for `health` and `http`.
    pub path: Option<String>,
    /// Interval between checks.
    pub interval: Option<String>,
    /// Consecutive failures that mark a server down.
    pub fall: Option<u32>,
    /// Consecutive successes that mark a server up.
    pub rise: Option<u32>,
}

/// `services[].timeouts` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Connecting to a server.
    pub connect: Option<String>,
    /// Client inactivity.
    pub client: Option<String>,
    /// Server inactivity.
    pub server: Option<String>,
    /// A health check's answer.
    pub check: Option<String>,
}

/// `services[].per_node` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPerNode {
    /// Address the per-node frontends bind.
    pub bind_ip: Option<String>,
    /// Slot n is served on `port_base + n`.
    pub port_base: Option<u16>,
}
