//! The TOML configuration file: a raw serde shape, its validation, and the typed result.
//!
//! Parsing happens in two steps so that an operator sees every mistake at once: the raw structs
//! (`deny_unknown_fields`, so a misspelt key is an error rather than silently ignored) accept
//! any strings and numbers, then [`RawConfig::validate`] checks every field and reports each
//! problem with its path (`services[1].bind: ...`). Only a [`Config`] that passed reaches the
//! model and the renderer, which is why they can format its values without quoting: every name
//! and path in it is restricted to characters HAProxy reads literally.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use peerkeep_registry::names::validate_name;
use peerkeep_registry::{ClusterName, EndpointName, Keyspace};
use serde::Deserialize;

/// Largest accepted `capacity`; the registry's slots stop at 65,535 too.
pub const MAX_CAPACITY: u32 = 65_535;

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape (unknown key, wrong type).
    #[error("config file {path} is not valid: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parsed but some values are unusable; every problem is listed.
    #[error("config file {path} has {} error(s):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// One `field.path: what is wrong` line per problem.
        problems: Vec<String>,
    },
}

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

/// Collects problems with their field paths.
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, field: &str, msg: impl fmt::Display) {
        self.0.push(format!("{field}: {msg}"));
    }
    fn check<T>(&mut self, field: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.push(field, e)).ok()
    }
    fn duration(&mut self, field: &str, v: Option<&str>, default: Duration) -> Duration {
        let Some(s) = v else { return default };
        match humantime::parse_duration(s) {
            Ok(d) if d >= Duration::from_millis(1) && d <= Duration::from_secs(86_400) => d,
            Ok(_) => {
                self.push(field, format!("{s:?} must be between 1ms and 24h"));
                default
            }
            Err(e) => {
                self.push(
                    field,
                    format!("{s:?} is not a duration like 2s or 500ms ({e})"),
                );
                default
            }
        }
    }
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates TOML text (`path` is for messages only).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        raw.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// The service named `name`.
    pub fn service(&self, name: &ServiceName) -> Option<&Service> {
        self.services.iter().find(|s| &s.name == name)
    }
}

impl RawConfig {
    /// Checks every field; returns the typed config or every problem found.
    pub fn validate(self) -> Result<Config, Vec<String>> {
        let mut p = Problems(Vec::new());
        let haproxy = validate_haproxy(&mut p, &self.haproxy);
        if self.services.is_empty() {
            p.push("services", "at least one [[services]] entry is required");
        }
        let mut services = Vec::new();
        for (i, raw) in self.services.iter().enumerate() {
            if let Some(s) = validate_service(&mut p, &format!("services[{i}]"), raw) {
                services.push((i, s));
            }
        }
        check_unique(&mut p, &services);
        let etcd = validate_etcd(&mut p, self.etcd);
        if p.0.is_empty()
            && let Some(haproxy) = haproxy
        {
            return Ok(Config {
                etcd,
                haproxy,
                services: services.into_iter().map(|(_, s)| s).collect(),
            });
        }
        Err(p.0)
    }
}

fn validate_etcd(p: &mut Problems, raw: RawEtcd) -> EtcdDefaults {
    if let Some(ep) = &raw.endpoints
        && ep.is_empty()
    {
        p.push("etcd.endpoints", "must name at least one URL when given");
    }
    let cluster = raw.cluster.as_deref().and_then(|c| {
        p.check(
            "etcd.cluster",
            c.parse::<ClusterName>().map_err(|e| e.to_string()),
        )
    });
    if let Some(prefix) = &raw.prefix {
        let _ = p.check(
            "etcd.prefix",
            Keyspace::new(prefix, ClusterName::default()).map_err(|e| e.to_string()),
        );
    }
    EtcdDefaults {
        endpoints: raw.endpoints,
        cluster,
        prefix: raw.prefix,
        allow_loopback: raw.allow_loopback,
    }
}

fn validate_haproxy(p: &mut Problems, raw: &RawHaproxy) -> Option<HaproxySettings> {
    let path = |p: &mut Problems, field: &str, v: &Option<String>, default: &str| {
        p.check(field, SafePath::new(v.as_deref().unwrap_or(default)))
    };
    let config = path(
        p,
        "haproxy.config",
        &raw.config,
        "/etc/haproxy/generated/haproxy.cfg",
    );
    let master = path(
        p,
        "haproxy.master_socket",
        &raw.master_socket,
        "/run/haproxy/master.sock",
    );
    let stats = path(
        p,
        "haproxy.stats_socket",
        &raw.stats_socket,
        "/run/haproxy/admin.sock",
    );
    let state = path(
        p,
        "haproxy.state_file",
        &raw.state_file,
        "/run/haproxy/server-state",
    );
    let hard_stop_after = p.duration(
        "haproxy.hard_stop_after",
        raw.hard_stop_after.as_deref(),
        Duration::from_secs(30),
    );
    let maxconn = raw.maxconn.unwrap_or(4096);
    if maxconn == 0 {
        p.push("haproxy.maxconn", "must be at least 1");
    }
    let bin = raw.bin.as_deref().unwrap_or("haproxy");
    if bin.is_empty() || bin.contains('\0') {
        p.push("haproxy.bin", "must be a program name or path");
    }
    Some(HaproxySettings {
        bin: PathBuf::from(bin),
        config: config?,
        master_socket: master?,
        stats_socket: stats?,
        state_file: state?,
        hard_stop_after,
        maxconn,
    })
}

fn validate_service(p: &mut Problems, at: &str, raw: &RawService) -> Option<Service> {
    let f = |name: &str| format!("{at}.{name}");
    let name = match &raw.name {
        Some(n) => p.check(&f("name"), ServiceName::new(n)),
        None => {
            p.push(&f("name"), "is required");
            None
        }
    };
    let bind = match &raw.bind {
        Some(b) => p.check(
            &f("bind"),
            b.parse::<SocketAddr>()
                .map_err(|_| format!("{b:?} is not ip:port"))
                .and_then(|a| {
                    if a.port() == 0 {
                        Err(format!("{b:?}: port 0 is not usable"))
                    } else {
                        Ok(a)
                    }
                }),
        ),
        None => {
            p.push(&f("bind"), "is required");
            None
        }
    };
    let mode = match raw.mode.as_deref().unwrap_or("http") {
        "http" => Some(Mode::Http),
        "tcp" => Some(Mode::Tcp),
        other => {
            p.push(&f("mode"), format!("{other:?} is not http or tcp"));
            None
        }
    };
    let balance_s = raw.balance.as_deref().unwrap_or("roundrobin");
    let balance = Balance::ALL
        .iter()
        .find(|(s, _)| *s == balance_s)
        .map(|(_, b)| *b);
    if balance.is_none() {
        p.push(
            &f("balance"),
            format!("{balance_s:?} is not one of roundrobin, leastconn, first, source, random"),
        );
    }
    let endpoint = match &raw.endpoint {
        Some(e) => p.check(
            &f("endpoint"),
            e.parse::<EndpointName>().map_err(|e| e.to_string()),
        ),
        None => {
            p.push(
                &f("endpoint"),
                "is required (the record endpoint to send traffic to)",
            );
            None
        }
    };
    let capacity = raw.capacity.unwrap_or(16);
    if !(1..=MAX_CAPACITY).contains(&capacity) {
        p.push(
            &f("capacity"),
            format!("{capacity} is outside 1..={MAX_CAPACITY}"),
        );
    }
    let check = validate_check(p, &f("check"), &raw.check);
    let timeouts = Timeouts {
        connect: p.duration(
            &f("timeouts.connect"),
            raw.timeouts.connect.as_deref(),
            Duration::from_secs(2),
        ),
        client: p.duration(
            &f("timeouts.client"),
            raw.timeouts.client.as_deref(),
            Duration::from_secs(30),
        ),
        server: p.duration(
            &f("timeouts.server"),
            raw.timeouts.server.as_deref(),
            Duration::from_secs(10),
        ),
        check: p.duration(
            &f("timeouts.check"),
            raw.timeouts.check.as_deref(),
            Duration::from_secs(2),
        ),
    };
    let per_node = raw
        .per_node
        .as_ref()
        .and_then(|pn| validate_per_node(p, &f("per_node"), pn, capacity));
    Some(Service {
        name: name?,
        bind: bind?,
        mode: mode?,
        balance: balance?,
        endpoint: endpoint?,
        capacity,
        check: check?,
        timeouts,
        per_node: match raw.per_node {
            Some(_) => Some(per_node?),
            None => None,
        },
    })
}

fn validate_check(p: &mut Problems, at: &str, raw: &RawCheck) -> Option<Check> {
    let path = |p: &mut Problems| {
        p.check(
            &format!("{at}.path"),
            CheckPath::new(raw.path.as_deref().unwrap_or("/readyz")),
        )
    };
    let kind = match raw.kind.as_deref().unwrap_or("health") {
        "health" => path(p).map(CheckKind::HealthEndpoint),
        "http" => path(p).map(CheckKind::Http),
        "tcp" => {
            if raw.path.is_some() {
                p.push(
                    &format!("{at}.path"),
                    "is not used by a tcp check; remove it",
                );
            }
            Some(CheckKind::Tcp)
        }
        other => {
            p.push(
                &format!("{at}.type"),
                format!("{other:?} is not health, http or tcp"),
            );
            None
        }
    };
    let interval = p.duration(
        &format!("{at}.interval"),
        raw.interval.as_deref(),
        Duration::from_secs(1),
    );
    let mut count = |name: &str, v: Option<u32>| {
        let v = v.unwrap_or(2);
        if !(1..=100).contains(&v) {
            p.push(&format!("{at}.{name}"), format!("{v} is outside 1..=100"));
        }
        v
    };
    let fall = count("fall", raw.fall);
    let rise = count("rise", raw.rise);
    Some(Check {
        kind: kind?,
        interval,
        fall,
        rise,
    })
}

fn validate_per_node(
    p: &mut Problems,
    at: &str,
    raw: &RawPerNode,
    capacity: u32,
) -> Option<PerNode> {
    let ip_s = raw.bind_ip.as_deref().unwrap_or("0.0.0.0");
    let bind_ip = p.check(
        &format!("{at}.bind_ip"),
        ip_s.parse::<IpAddr>()
            .map_err(|_| format!("{ip_s:?} is not an IP address")),
    );
    let Some(port_base) = raw.port_base else {
        p.push(&format!("{at}.port_base"), "is required");
        return None;
    };
    if u32::from(port_base) + capacity > 65_535 {
        p.push(
            &format!("{at}.port_base"),
            format!("{port_base} + capacity {capacity} exceeds port 65535"),
        );
    }
    Some(PerNode {
        bind_ip: bind_ip?,
        port_base,
    })
}

/// Names must be unique, and no two listeners may share an address.
fn check_unique(p: &mut Problems, services: &[(usize, Service)]) {
    let mut names = BTreeSet::new();
    let mut ports: Vec<(String, IpAddr, u16, u16)> = Vec::new();
    for (i, s) in services {
        if !names.insert(s.name.clone()) {
            p.push(
                &format!("services[{i}].name"),
                format!("{:?} is used by an earlier service", s.name.as_str()),
            );
        }
        ports.push((
            format!("services[{i}].bind"),
            s.bind.ip(),
            s.bind.port(),
            s.bind.port(),
        ));
        if let Some(pn) = s.per_node {
            let last = pn.port(s.capacity).unwrap_or(u16::MAX);
            ports.push((
                format!("services[{i}].per_node"),
                pn.bind_ip,
                pn.port_base.saturating_add(1),
                last,
            ));
        }
    }
    for (a, (fa, ipa, lo_a, hi_a)) in ports.iter().enumerate() {
        for (fb, ipb, lo_b, hi_b) in &ports[..a] {
            let same_ip = ipa == ipb || ipa.is_unspecified() || ipb.is_unspecified();
            if same_ip && lo_a <= hi_b && lo_b <= hi_a {
                p.push(
                    fa,
                    format!("ports {lo_a}-{hi_a} overlap {fb} ({lo_b}-{hi_b})"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(
            r#"
[[services]]
name = "rpc"
bind = "0.0.0.0:8080"
endpoint = "api"
"#,
        )
        .expect("valid");
        let s = &c.services[0];
        assert_eq!(s.mode, Mode::Http);
        assert_eq!(s.balance, Balance::RoundRobin);
        assert_eq!(s.capacity, 16);
        assert_eq!(
            s.check.kind,
            CheckKind::HealthEndpoint(CheckPath::new("/readyz").expect("valid"))
        );
        assert_eq!(c.haproxy.hard_stop_after, Duration::from_secs(30));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = parse("[haproxy]\nconfg = \"/x\"\n").expect_err("typo must fail");
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let e = parse(
            r#"
[haproxy]
config = "/etc/hap proxy.cfg"
hard_stop_after = "soon"

[[services]]
name = "bad name"
bind = "0.0.0.0:70000"
mode = "udp"
balance = "fastest"
endpoint = "a\nb"
capacity = 0
check = { type = "http", path = "/x\nstats enable" }
timeouts = { server = "1 fortnight" }
per_node = { bind_ip = "localhost", port_base = 65530 }

[[services]]
name = "b"
bind = "127.0.0.1:80"
endpoint = "api"

[[services]]
name = "b"
bind = "127.0.0.1:80"
endpoint = "api"
"#,
        )
        .expect_err("invalid");
        let ConfigError::Invalid { problems, .. } = e else {
            panic!("expected Invalid, got {e}");
        };
        let fields: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap_or(""))
            .collect();
        for want in [
            "haproxy.config",
            "haproxy.hard_stop_after",
            "services[0].name",
            "services[0].bind",
            "services[0].mode",
            "services[0].balance",
            "services[0].endpoint",
            "services[0].capacity",
            "services[0].check.path",
            "services[0].timeouts.server",
            "services[0].per_node.bind_ip",
            "services[2].name",
            "services[2].bind",
        ] {
            assert!(fields.contains(&want), "missing {want} in {problems:#?}");
        }
    }

    #[test]
    fn per_node_range_must_not_overlap_another_bind() {
        let e = parse(
            r#"
[[services]]
name = "a"
bind = "0.0.0.0:9005"
endpoint = "api"
capacity = 4

[[services]]
name = "b"
bind = "0.0.0.0:8000"
endpoint = "api"
capacity = 8
per_node = { port_base = 9000 }
"#,
        )
        .expect_err("overlap");
        assert!(e.to_string().contains("services[1].per_node"), "{e}");
    }
}
