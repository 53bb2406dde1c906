//! The validated configuration: types whose constructors enforce what the renderer relies on
//! (names and paths HAProxy reads literally, parsed addresses, bounded numbers).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use peerkeep_registry::names::validate_name;
use peerkeep_registry::{ClusterName, EndpointName};

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Defaults for the etcd flags (flags and environment win).
    pub etcd: EtcdDefaults,
    /// HAProxy paths and global settings.
    pub haproxy: HaproxySettings,
    /// Services, in file order (names are unique).
    pub services: Vec<Service>,
}

/// `[etcd]`, validated: values used where the corresponding flag was not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdDefaults {
    /// etcd client URLs.
    pub endpoints: Option<Vec<String>>,
    /// The cluster.
    pub cluster: Option<ClusterName>,
    /// The key prefix (checked with [`Keyspace::new`]).
    pub prefix: Option<String>,
    /// Admit loopback addresses.
    pub allow_loopback: Option<bool>,
}

/// A filesystem path made only of `[A-Za-z0-9/._-]`, absolute, so that it can be written into
/// the HAProxy configuration without quoting.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SafePath(PathBuf);

impl SafePath {
    /// Checks `s`.
    pub fn new(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("{s:?} must be an absolute path"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-')))
        {
            return Err(format!(
                "{s:?} contains {c:?}; paths may use only A-Z a-z 0-9 / . _ -"
            ));
        }
        if s.split('/').any(|seg| seg == "..") {
            return Err(format!("{s:?} must not contain '..'"));
        }
        Ok(Self(PathBuf::from(s)))
    }
    /// The path.
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl fmt::Display for SafePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Constructed only from checked ASCII, so this is lossless.
        fmt::Display::fmt(&self.0.display(), f)
    }
}

/// `[haproxy]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxySettings {
    /// The haproxy executable (only ever exec'd, never rendered).
    pub bin: PathBuf,
    /// The generated configuration file.
    pub config: SafePath,
    /// The master CLI socket.
    pub master_socket: SafePath,
    /// The runtime API socket.
    pub stats_socket: SafePath,
    /// The server-state file.
    pub state_file: SafePath,
    /// `hard-stop-after`.
    pub hard_stop_after: Duration,
    /// `maxconn` in the global section.
    pub maxconn: u32,
}

/// A service name: the registry's name syntax, which is a subset of what HAProxy accepts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    /// Checks `s`.
    pub fn new(s: &str) -> Result<Self, String> {
        validate_name("service name", s)
            .map(|()| Self(s.to_owned()))
            .map_err(|e| e.to_string())
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Proxy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// HTTP: layer-7 retries and idle-close apply.
    Http,
    /// Plain TCP.
    Tcp,
}

impl Mode {
    /// The HAProxy keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
        }
    }
}

/// Balance algorithm (the subset that needs no further arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Balance {
    /// `roundrobin`
    RoundRobin,
    /// `leastconn`
    LeastConn,
    /// `first`
    First,
    /// `source`
    Source,
    /// `random`
    Random,
}

impl Balance {
    const ALL: [(&'static str, Self); 5] = [
        ("roundrobin", Self::RoundRobin),
        ("leastconn", Self::LeastConn),
        ("first", Self::First),
        ("source", Self::Source),
        ("random", Self::Random),
    ];
    /// The algorithm named by its HAProxy keyword.
    pub fn from_keyword(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(k, _)| *k == s).map(|(_, b)| *b)
    }
    /// The HAProxy keyword.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, b)| *b == self)
            .map_or("roundrobin", |(s, _)| s)
    }
}

/// An HTTP path for checks: `/` followed by unreserved URL characters only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckPath(String);

impl CheckPath {
    /// Checks `s`.
    pub fn new(s: &str) -> Result<Self, String> {
        let ok = s.starts_with('/')
            && s.len() <= 200
            && s.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, '/' | '.' | '_' | '-' | '~' | '?' | '=' | '&')
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} must start with '/' and use only A-Z a-z 0-9 / . _ - ~ ? = & (at most 200)"
            ))
        }
    }
    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How servers are checked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckKind {
    /// HTTP GET `path` on the record's `health` endpoint; records without one are skipped.
    HealthEndpoint(CheckPath),
    /// HTTP GET `path` on the traffic endpoint.
    Http(CheckPath),
    /// A TCP connect to the traffic endpoint.
    Tcp,
}

/// Check kind and timing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Check {
    /// What is checked.
    pub kind: CheckKind,
    /// `inter`.
    pub interval: Duration,
    /// `fall`.
    pub fall: u32,
    /// `rise`.
    pub rise: u32,
}

/// Service timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timeouts {
    /// `timeout connect`.
    pub connect: Duration,
    /// `timeout client`.
    pub client: Duration,
    /// `timeout server`.
    pub server: Duration,
    /// `timeout check`.
    pub check: Duration,
}

/// Per-node frontends: slot n on `bind_ip:(port_base + n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PerNode {
    /// Bind address.
    pub bind_ip: IpAddr,
    /// Port of slot 0 (never used itself; slots start at 1).
    pub port_base: u16,
}

impl PerNode {
    /// The port of `slot`, if it fits in 1–65535.
    pub fn port(&self, slot: u32) -> Option<u16> {
        u16::try_from(u32::from(self.port_base) + slot).ok()
    }
}

/// One validated service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Service {
    /// Name (frontend and backend).
    pub name: ServiceName,
    /// Frontend bind address.
    pub bind: SocketAddr,
    /// Proxy mode.
    pub mode: Mode,
    /// Balance algorithm.
    pub balance: Balance,
    /// Record endpoint that receives traffic.
    pub endpoint: EndpointName,
    /// Pre-allocated servers at start.
    pub capacity: u32,
    /// Health check.
    pub check: Check,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Per-node frontends, if any.
    pub per_node: Option<PerNode>,
}
