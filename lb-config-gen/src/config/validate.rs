//! Validation: raw values → typed config, collecting every problem with its field path.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use peerkeep_registry::{ClusterName, EndpointName, Keyspace};

use super::MAX_CAPACITY;
use super::raw::{RawCheck, RawConfig, RawEtcd, RawHaproxy, RawPerNode, RawService};
use super::types::{
    Balance, Check, CheckKind, CheckPath, Config, EtcdDefaults, HaproxySettings, Mode, PerNode,
    SafePath, Service, ServiceName, Timeouts,
};

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
    let balance = Balance::from_keyword(balance_s);
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
