//! `--adapter http-template`: a daemon's HTTP API described in a TOML file instead of code.
//!
//! A template names, for each operation, a request (method, path with query, optional JSON
//! body) and JSON pointers into the answer. Requests are templates with placeholders
//! `{{address}}` (`ip:port`), `{{host}}`, `{{port}}` and `{{identity}}`. Values are inserted
//! escaped for where they land — percent-encoded in the path and query, JSON-string-escaped in
//! the body — and never re-scanned, so a value containing quotes, newlines or `{{` cannot change
//! the request's structure. A rendered body must still parse as JSON or the call is refused.
//! The file is checked completely at load (every problem reported at once, with where it is);
//! `agent/templates/` has examples (CometBFT, Wavelet).

use std::net::SocketAddr;
use std::path::Path;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use super::config::ConfigError;
use super::http::{Body, HttpApi};
use super::{
    AdapterError, AdapterKind, ConnectOutcome, Direction, NodeAdapter, Peer, SyncStatus, excerpt,
    lag_since_ms, parse_time_ms,
};

/// Characters left as they are in path and query values: RFC 3986 "unreserved".
const PATH_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const PLACEHOLDERS: [&str; 4] = ["address", "host", "port", "identity"];

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
struct Request {
    method: Method,
    path: String,
    body: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Clone)]
struct PeersSpec {
    req: Request,
    list: String,
    address: String,
    host: Option<String>,
    identity: Option<String>,
    outbound: Option<String>,
    inbound: Option<String>,
}

#[derive(Debug, Clone)]
struct ActionSpec {
    req: Request,
    outcome: ConnectOutcome,
    already: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeFormat {
    Rfc3339,
    UnixS,
    UnixMs,
}

#[derive(Debug, Clone)]
struct SyncSpec {
    req: Request,
    height: Option<String>,
    time: Option<String>,
    time_format: TimeFormat,
    synced: Option<String>,
    catching_up: Option<String>,
    progress: Option<String>,
}

/// A validated template.
#[derive(Debug, Clone)]
pub struct Template {
    peers: PeersSpec,
    connect: ActionSpec,
    disconnect: Option<ActionSpec>,
    sync: SyncSpec,
    probe: Option<Request>,
}

/// Values for the placeholders of one call.
#[derive(Debug, Clone, Copy, Default)]
struct Values<'a> {
    address: Option<SocketAddr>,
    identity: Option<&'a str>,
}

impl Values<'_> {
    fn get(&self, name: &str) -> Option<String> {
        match name {
            "address" => self.address.map(|a| a.to_string()),
            "host" => self.address.map(|a| a.ip().to_string()),
            "port" => self.address.map(|a| a.port().to_string()),
            "identity" => self.identity.map(str::to_owned),
            _ => None,
        }
    }
}

/// Replaces each `{{name}}` in `template` with `escape(value)`, in one pass. Returns the name
/// of the first placeholder without a value.
fn render(
    template: &str,
    values: &Values<'_>,
    escape: impl Fn(&str) -> String,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| "unclosed {{".to_string())?;
        let name = after[..end].trim();
        let value = values.get(name).ok_or_else(|| name.to_string())?;
        out.push_str(&escape(&value));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn escape_path(v: &str) -> String {
    utf8_percent_encode(v, PATH_VALUE).to_string()
}

fn escape_json(v: &str) -> String {
    let quoted = Value::String(v.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
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

/// The http-template adapter.
#[derive(Debug)]
pub struct TemplateAdapter {
    api: HttpApi,
    template: Template,
}

/// A response body and the text it carried (for `already` matching and errors).
struct Answer {
    json: Option<Value>,
    text: String,
}

impl TemplateAdapter {
    /// An adapter over `api` following `template`.
    pub fn new(api: HttpApi, template: Template) -> Self {
        Self { api, template }
    }

    async fn call(
        &self,
        call: &'static str,
        req: &Request,
        values: Values<'_>,
    ) -> Result<Answer, AdapterError> {
        let missing = |name: String| AdapterError::Unsupported {
            adapter: "http-template",
            call,
            why: if name == "identity" {
                "the template needs {{identity}} and the target has none (set it in the record's labels)"
            } else {
                "the template uses a placeholder this call has no value for"
            },
        };
        let path = render(&req.path, &values, escape_path).map_err(missing)?;
        let url = self.api.url(&path)?;
        let body = match &req.body {
            None => None,
            Some(b) => {
                let rendered = render(b, &values, escape_json).map_err(missing)?;
                // Escaping makes this unreachable for valid templates; refuse rather than send
                // a body whose structure a value changed.
                if serde_json::from_str::<Value>(&rendered).is_err() {
                    return Err(AdapterError::Rejected {
                        call,
                        endpoint: url.to_string(),
                        status: None,
                        message: "refusing to send: the rendered body is not JSON".into(),
                    });
                }
                Some(Body::Json(rendered.into_bytes()))
            }
        };
        let reply = self
            .api
            .send(call, req.method.clone(), url.clone(), body)
            .await?;
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        let json: Option<Value> = serde_json::from_slice(&reply.body).ok();
        let error = req
            .error
            .as_deref()
            .and_then(|p| json.as_ref()?.pointer(p))
            .filter(|e| !e.is_null());
        if !reply.status.is_success() || error.is_some() {
            let message = match error {
                Some(Value::String(s)) => excerpt(s),
                Some(other) => excerpt(&other.to_string()),
                None => excerpt(&text),
            };
            return Err(AdapterError::Rejected {
                call,
                endpoint: url.to_string(),
                status: Some(reply.status.as_u16()),
                message,
            });
        }
        Ok(Answer { json, text })
    }

    async fn call_json(
        &self,
        call: &'static str,
        req: &Request,
        values: Values<'_>,
    ) -> Result<Value, AdapterError> {
        let a = self.call(call, req, values).await?;
        a.json.ok_or_else(|| AdapterError::BadResponse {
            call,
            endpoint: self.api.base().to_string(),
            detail: format!("not JSON: {:?}", excerpt(&a.text)),
        })
    }

    async fn action(
        &self,
        call: &'static str,
        spec: &ActionSpec,
        addr: SocketAddr,
        identity: Option<&str>,
    ) -> Result<ConnectOutcome, AdapterError> {
        let values = Values {
            address: Some(addr),
            identity,
        };
        let a = self.call(call, &spec.req, values).await?;
        if spec.already.as_deref().is_some_and(|s| a.text.contains(s)) {
            return Ok(ConnectOutcome::AlreadyConnected);
        }
        Ok(spec.outcome)
    }
}

/// A socket address from a peer entry: `address` may be `ip:port`, `scheme://ip:port`, or
/// anything ending in `:port` when `host` supplies the IP.
fn peer_addr(entry: &Value, spec: &PeersSpec) -> Option<SocketAddr> {
    let raw = entry.pointer(&spec.address)?.as_str()?;
    let raw = raw.split_once("://").map_or(raw, |(_, rest)| rest);
    if let Some(host) = &spec.host {
        let ip = entry.pointer(host)?.as_str()?.parse().ok()?;
        let port = raw.rsplit_once(':')?.1.parse().ok()?;
        return Some(SocketAddr::new(ip, port));
    }
    raw.parse().ok()
}

fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.trim().parse().ok())
}

fn as_bool(v: &Value) -> Option<bool> {
    v.as_bool().or_else(|| match v.as_str()? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    })
}

#[async_trait::async_trait]
impl NodeAdapter for TemplateAdapter {
    fn kind(&self) -> AdapterKind {
        AdapterKind::HttpTemplate
    }

    async fn probe(&self) -> Result<(), AdapterError> {
        let req = self
            .template
            .probe
            .as_ref()
            .unwrap_or(&self.template.sync.req);
        self.call("probe", req, Values::default()).await.map(|_| ())
    }

    async fn peers(&self) -> Result<Vec<Peer>, AdapterError> {
        let spec = &self.template.peers;
        let doc = self
            .call_json("peers", &spec.req, Values::default())
            .await?;
        let list = match doc.pointer(&spec.list) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(AdapterError::BadResponse {
                    call: "peers",
                    endpoint: self.api.base().to_string(),
                    detail: format!(
                        "{:?} is not a list: {}",
                        spec.list,
                        excerpt(&other.to_string())
                    ),
                });
            }
        };
        let mut out = Vec::new();
        for entry in list {
            let Some(addr) = peer_addr(entry, spec) else {
                tracing::debug!(entry = %excerpt(&entry.to_string()), "skipping peer without a usable address");
                continue;
            };
            let flag = |p: &Option<String>| p.as_deref().and_then(|p| as_bool(entry.pointer(p)?));
            let direction = match (flag(&spec.outbound), flag(&spec.inbound)) {
                (Some(true), _) | (_, Some(false)) => Some(Direction::Outbound),
                (Some(false), _) | (_, Some(true)) => Some(Direction::Inbound),
                _ => None,
            };
            let identity = spec
                .identity
                .as_deref()
                .and_then(|p| match entry.pointer(p)? {
                    Value::String(s) if !s.is_empty() => Some(s.clone()),
                    _ => None,
                });
            out.push(Peer {
                addr,
                direction,
                identity,
            });
        }
        Ok(out)
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
    ) -> Result<ConnectOutcome, AdapterError> {
        self.action("connect", &self.template.connect, addr, identity)
            .await
    }

    async fn disconnect(&self, addr: SocketAddr) -> Result<(), AdapterError> {
        let Some(spec) = &self.template.disconnect else {
            return Err(AdapterError::Unsupported {
                adapter: "http-template",
                call: "disconnect",
                why: "the template has no [disconnect] section (the daemon has no disconnect call)",
            });
        };
        self.action("disconnect", spec, addr, None)
            .await
            .map(|_| ())
    }

    async fn sync_status(&self) -> Result<SyncStatus, AdapterError> {
        let spec = &self.template.sync;
        let doc = self
            .call_json("sync_status", &spec.req, Values::default())
            .await?;
        let at = |p: &Option<String>| p.as_deref().and_then(|p| doc.pointer(p));
        let time_ms = at(&spec.time).and_then(|v| match spec.time_format {
            TimeFormat::Rfc3339 => parse_time_ms(v.as_str()?),
            TimeFormat::UnixS => as_u64(v).map(|s| s.saturating_mul(1000)),
            TimeFormat::UnixMs => as_u64(v),
        });
        let synced = match (at(&spec.synced), at(&spec.catching_up)) {
            (Some(v), _) => as_bool(v).unwrap_or(false),
            (None, Some(v)) => !as_bool(v).unwrap_or(true),
            (None, None) => true,
        };
        Ok(SyncStatus {
            height: at(&spec.height).and_then(as_u64),
            progress: at(&spec.progress).and_then(Value::as_f64),
            lag: time_ms.map(lag_since_ms),
            synced,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_escaped_and_never_rescanned() {
        let v = Values {
            address: Some("10.0.0.1:26656".parse().expect("addr")),
            identity: Some("a\"b\nc{{address}}"),
        };
        let body = render(
            r#"{"id":"{{identity}}","at":"{{address}}"}"#,
            &v,
            escape_json,
        )
        .expect("renders");
        let parsed: Value = serde_json::from_str(&body).expect("still JSON");
        assert_eq!(parsed["id"], "a\"b\nc{{address}}");
        assert_eq!(parsed["at"], "10.0.0.1:26656");
        let path = render("/dial?p={{identity}}@{{address}}", &v, escape_path).expect("renders");
        assert_eq!(
            path,
            "/dial?p=a%22b%0Ac%7B%7Baddress%7D%7D@10.0.0.1%3A26656"
        );
        assert_eq!(
            render("/x/{{identity}}", &Values::default(), escape_path),
            Err("identity".into())
        );
    }

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
