//! The template file: its TOML shape, and validation into a typed [`Template`] that reports
//! every problem at once with where it is (`connect.body: …`).
//!
//! Sections and keys (JSON pointers are RFC 6901, `""` is the whole answer):
//! - every section: `method` (GET/POST/PUT/DELETE), `path` (under `--node-api`, may carry a
//!   query), `body` (JSON with placeholders inside strings), `error` (pointer; a non-null value
//!   there means the call failed even with HTTP 2xx);
//! - `[peers]` (required): `list` (pointer to the array; missing or null = no peers), per entry
//!   `address` (`ip:port`, `scheme://ip:port`, or anything ending in `:port` with `host`),
//!   `host` (pointer to the IP), `identity`, `outbound` or `inbound` (booleans);
//! - `[connect]` (required) and `[disconnect]` (optional; absent = unsupported): `outcome`
//!   (`established` or `pending`: what a success means), `already` (a substring of the answer
//!   that means "already connected");
//! - `[sync]` (required): `height`, `time` with `time_format` (`rfc3339`, `unix_s`, `unix_ms`),
//!   `synced` or `catching_up` (booleans), `progress` (0–1);
//! - `[probe]` (optional): the request used to check the daemon answers (default: `[sync]`'s).

use std::net::SocketAddr;
use std::path::Path;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use super::render::{PLACEHOLDERS, Values, escape_json, render};
use crate::adapter::ConnectOutcome;
use crate::adapter::config::ConfigError;

/// One section of the template file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSection {
    method: Option<String>,
    path: Option<String>,
    body: Option<String>,
    error: Option<String>,
    // peers
    list: Option<String>,
    address: Option<String>,
    host: Option<String>,
    identity: Option<String>,
    outbound: Option<String>,
    inbound: Option<String>,
    // connect / disconnect
    outcome: Option<String>,
    already: Option<String>,
    // sync
    height: Option<String>,
    time: Option<String>,
    time_format: Option<String>,
    synced: Option<String>,
    catching_up: Option<String>,
    progress: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    #[serde(default)]
    description: Option<String>,
    peers: Option<RawSection>,
    connect: Option<RawSection>,
    disconnect: Option<RawSection>,
    sync: Option<RawSection>,
    probe: Option<RawSection>,
}

/// A request template.
#[derive(Debug, Clone)]
pub(super) struct Request {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) body: Option<String>,
    pub(super) error: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) struct PeersSpec {
    pub(super) req: Request,
    pub(super) list: String,
    pub(super) address: String,
    pub(super) host: Option<String>,
    pub(super) identity: Option<String>,
    pub(super) outbound: Option<String>,
    pub(super) inbound: Option<String>,
}

#[derive(Debug, Clone)]
pub(super) struct ActionSpec {
    pub(super) req: Request,
    pub(super) outcome: ConnectOutcome,
    pub(super) already: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimeFormat {
    Rfc3339,
    UnixS,
    UnixMs,
}

#[derive(Debug, Clone)]
pub(super) struct SyncSpec {
    pub(super) req: Request,
    pub(super) height: Option<String>,
    pub(super) time: Option<String>,
    pub(super) time_format: TimeFormat,
    pub(super) synced: Option<String>,
    pub(super) catching_up: Option<String>,
    pub(super) progress: Option<String>,
}

/// A validated template.
#[derive(Debug, Clone)]
pub struct Template {
    pub(super) peers: PeersSpec,
    pub(super) connect: ActionSpec,
    pub(super) disconnect: Option<ActionSpec>,
    pub(super) sync: SyncSpec,
    pub(super) probe: Option<Request>,
}

/// Collects problems while validating.
struct Checker {
    problems: Vec<String>,
}

impl Checker {
    fn placeholders(&mut self, at: &str, template: &str) {
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                self.problems.push(format!("{at}: unclosed {{{{"));
                return;
            };
            let name = after[..end].trim();
            if !PLACEHOLDERS.contains(&name) {
                self.problems.push(format!(
                    "{at}: unknown placeholder {{{{{name}}}}} (known: address, host, port, identity)"
                ));
            }
            rest = &after[end + 2..];
        }
    }

    fn pointer(&mut self, at: &str, p: &Option<String>) -> Option<String> {
        let p = p.clone()?;
        if !(p.is_empty() || p.starts_with('/')) {
            self.problems.push(format!(
                "{at}: {p:?} is not a JSON pointer (\"\" or starting with /)"
            ));
        }
        Some(p)
    }

    fn unused(&mut self, section: &str, fields: &[(&str, bool)]) {
        for (name, set) in fields {
            if *set {
                self.problems
                    .push(format!("{section}.{name}: not used in [{section}]"));
            }
        }
    }

    fn request(&mut self, section: &str, raw: &RawSection, default_method: &str) -> Request {
        let method_s = raw
            .method
            .as_deref()
            .unwrap_or(default_method)
            .to_ascii_uppercase();
        let method = match method_s.as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "DELETE" => Method::DELETE,
            other => {
                self.problems.push(format!(
                    "{section}.method: {other:?} is not GET, POST, PUT or DELETE"
                ));
                Method::GET
            }
        };
        let path = raw.path.clone().unwrap_or_else(|| {
            self.problems.push(format!("{section}.path: missing"));
            String::new()
        });
        self.placeholders(&format!("{section}.path"), &path);
        if let Some(body) = &raw.body {
            self.placeholders(&format!("{section}.body"), body);
            // Rendered with sample values, the body must be JSON.
            let sample = Values {
                address: Some(SocketAddr::from(([192, 0, 2, 1], 1))),
                identity: Some("x"),
            };
            if let Ok(b) = render(body, &sample, escape_json)
                && let Err(e) = serde_json::from_str::<Value>(&b)
            {
                self.problems.push(format!(
                    "{section}.body: not JSON once placeholders are filled in ({e}); placeholders belong inside JSON strings"
                ));
            }
        }
        let error = self.pointer(&format!("{section}.error"), &raw.error);
        Request {
            method,
            path,
            body: raw.body.clone(),
            error,
        }
    }
}

impl Template {
    /// Reads and validates a template file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Template {
            path: path.to_path_buf(),
            problems: format!("cannot read: {e}"),
        })?;
        Self::parse(&text).map_err(|problems| ConfigError::Template {
            path: path.to_path_buf(),
            problems: problems.join("; "),
        })
    }

    /// Parses and validates template text, returning every problem found.
    pub fn parse(text: &str) -> Result<Self, Vec<String>> {
        let raw: RawTemplate = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let _ = raw.description;
        let mut c = Checker {
            problems: Vec::new(),
        };
        let missing = |c: &mut Checker, s: &str| {
            c.problems.push(format!("[{s}]: missing section"));
            RawSection::default()
        };
        let peers_raw = raw.peers.unwrap_or_else(|| missing(&mut c, "peers"));
        let connect_raw = raw.connect.unwrap_or_else(|| missing(&mut c, "connect"));
        let sync_raw = raw.sync.unwrap_or_else(|| missing(&mut c, "sync"));

        let peers = PeersSpec {
            req: c.request("peers", &peers_raw, "GET"),
            list: c.pointer("peers.list", &peers_raw.list).unwrap_or_default(),
            address: c
                .pointer("peers.address", &peers_raw.address)
                .unwrap_or_else(|| {
                    c.problems.push("peers.address: missing".into());
                    String::new()
                }),
            host: c.pointer("peers.host", &peers_raw.host),
            identity: c.pointer("peers.identity", &peers_raw.identity),
            outbound: c.pointer("peers.outbound", &peers_raw.outbound),
            inbound: c.pointer("peers.inbound", &peers_raw.inbound),
        };
        c.unused("peers", &sync_and_action_fields(&peers_raw));

        let connect = c.action("connect", &connect_raw);
        let disconnect = raw.disconnect.map(|d| c.action("disconnect", &d));

        let time_format = match sync_raw.time_format.as_deref().unwrap_or("rfc3339") {
            "rfc3339" => TimeFormat::Rfc3339,
            "unix_s" => TimeFormat::UnixS,
            "unix_ms" => TimeFormat::UnixMs,
            other => {
                c.problems.push(format!(
                    "sync.time_format: {other:?} is not rfc3339, unix_s or unix_ms"
                ));
                TimeFormat::Rfc3339
            }
        };
        if sync_raw.synced.is_some() && sync_raw.catching_up.is_some() {
            c.problems
                .push("sync: give either synced or catching_up, not both".into());
        }
        let sync = SyncSpec {
            req: c.request("sync", &sync_raw, "GET"),
            height: c.pointer("sync.height", &sync_raw.height),
            time: c.pointer("sync.time", &sync_raw.time),
            time_format,
            synced: c.pointer("sync.synced", &sync_raw.synced),
            catching_up: c.pointer("sync.catching_up", &sync_raw.catching_up),
            progress: c.pointer("sync.progress", &sync_raw.progress),
        };
        c.unused("sync", &peer_and_action_fields(&sync_raw));

        let probe = raw.probe.map(|p| {
            let r = c.request("probe", &p, "GET");
            c.unused("probe", &peer_and_action_fields(&p));
            c.unused("probe", &sync_only_fields(&p));
            r
        });

        if c.problems.is_empty() {
            Ok(Template {
                peers,
                connect,
                disconnect,
                sync,
                probe,
            })
        } else {
            Err(c.problems)
        }
    }
}

impl Checker {
    fn action(&mut self, section: &str, raw: &RawSection) -> ActionSpec {
        let outcome = match raw.outcome.as_deref().unwrap_or("established") {
            "established" => ConnectOutcome::Established,
            "pending" => ConnectOutcome::Pending,
            other => {
                self.problems.push(format!(
                    "{section}.outcome: {other:?} is not established or pending"
                ));
                ConnectOutcome::Established
            }
        };
        let mut unused = peer_fields(raw).to_vec();
        unused.extend_from_slice(&sync_only_fields(raw));
        self.unused(section, &unused);
        ActionSpec {
            req: self.request(section, raw, "POST"),
            outcome,
            already: raw.already.clone(),
        }
    }
}

fn peer_fields(r: &RawSection) -> [(&'static str, bool); 6] {
    [
        ("list", r.list.is_some()),
        ("address", r.address.is_some()),
        ("host", r.host.is_some()),
        ("identity", r.identity.is_some()),
        ("outbound", r.outbound.is_some()),
        ("inbound", r.inbound.is_some()),
    ]
}

fn sync_only_fields(r: &RawSection) -> [(&'static str, bool); 6] {
    [
        ("height", r.height.is_some()),
        ("time", r.time.is_some()),
        ("time_format", r.time_format.is_some()),
        ("synced", r.synced.is_some()),
        ("catching_up", r.catching_up.is_some()),
        ("progress", r.progress.is_some()),
    ]
}

fn action_fields(r: &RawSection) -> [(&'static str, bool); 2] {
    [
        ("outcome", r.outcome.is_some()),
        ("already", r.already.is_some()),
    ]
}

fn sync_and_action_fields(r: &RawSection) -> Vec<(&'static str, bool)> {
    let mut v = sync_only_fields(r).to_vec();
    v.extend_from_slice(&action_fields(r));
    v
}

fn peer_and_action_fields(r: &RawSection) -> Vec<(&'static str, bool)> {
    let mut v = peer_fields(r).to_vec();
    v.extend_from_slice(&action_fields(r));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let bad = r#"
            [peers]
            path = "/p/{{nope}}"
            list = "peers"
            [connect]
            method = "FETCH"
            path = "/c"
            body = '{"a": {{address}}}'
            height = "/h"
            [sync]
            path = "/s"
            time_format = "julian"
        "#;
        let problems = Template::parse(bad).expect_err("invalid");
        let all = problems.join("\n");
        for want in [
            "peers.path: unknown placeholder {{nope}}",
            "peers.list: \"peers\" is not a JSON pointer",
            "peers.address: missing",
            "connect.method",
            "connect.body: not JSON",
            "connect.height: not used",
            "sync.time_format",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }

    #[test]
    fn shipped_templates_are_valid() {
        for name in ["cometbft.toml", "wavelet.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("templates")
                .join(name);
            if let Err(e) = Template::load(&path) {
                panic!("{name}: {e}");
            }
        }
    }
}
