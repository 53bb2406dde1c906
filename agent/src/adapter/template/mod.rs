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
//!
//! - `spec`: the file format and its validation.
//! - `render`: filling placeholders with escaped values.

mod render;
mod spec;

use std::net::SocketAddr;

use serde_json::Value;

use super::http::{Body, HttpApi};
use super::{
    AdapterError, AdapterKind, ConnectOutcome, Direction, NodeAdapter, Peer, SyncStatus, excerpt,
    lag_since_ms, parse_time_ms,
};
use render::{Values, escape_json, escape_path, render};
pub use spec::Template;
use spec::{ActionSpec, PeersSpec, Request, TimeFormat};

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
