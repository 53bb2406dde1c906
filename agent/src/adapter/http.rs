//! The HTTP client side shared by all adapters: one `reqwest` client per adapter with the
//! call timeout, no environment proxy, credentials applied per request, and responses read
//! into memory with a size cap.
//!
//! Credentials: a bearer token or a basic password is read once at start (from a file or the
//! environment); a Bitcoin Core cookie file is read lazily and re-read after a 401, because the
//! daemon rewrites it with a new password on every restart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use url::Url;

use super::config::ConfigError;
use super::{AdapterError, excerpt};

/// Largest response body read; a bigger one is a [`AdapterError::BadResponse`].
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// A secret string that never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: String) -> Self {
        Self(s)
    }
    /// The secret itself, to put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads a one-line secret from a file, trimming the trailing newline; refuses an empty one.
pub fn read_secret_file(path: &Path) -> Result<Secret, ConfigError> {
    let raw = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadSecret {
        path: path.to_path_buf(),
        source,
    })?;
    let s = raw.trim_end_matches(['\r', '\n']).to_string();
    if s.trim().is_empty() {
        return Err(ConfigError::EmptySecret {
            path: path.to_path_buf(),
        });
    }
    Ok(Secret(s))
}

/// How requests authenticate.
#[derive(Debug)]
pub enum Auth {
    /// No credentials.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// HTTP basic.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: Secret,
    },
    /// HTTP basic from a Bitcoin Core cookie file (`user:password`), re-read after a 401.
    Cookie(CookieAuth),
}

/// A cookie file and the credentials last read from it.
#[derive(Debug)]
pub struct CookieAuth {
    path: PathBuf,
    cached: Mutex<Option<(String, Secret)>>,
}

impl CookieAuth {
    /// A cookie file, read on first use.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cached: Mutex::new(None),
        }
    }

    fn credentials(&self, reread: bool) -> Result<(String, Secret), String> {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if !reread && let Some(c) = cached.as_ref() {
            return Ok(c.clone());
        }
        let raw = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read cookie file {}: {e}", self.path.display()))?;
        let (user, password) = raw
            .trim_end_matches(['\r', '\n'])
            .split_once(':')
            .ok_or_else(|| format!("cookie file {} is not user:password", self.path.display()))?;
        let c = (user.to_string(), Secret(password.to_string()));
        *cached = Some(c.clone());
        Ok(c)
    }
}

/// A daemon's answer: status and body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// The body, at most [`MAX_BODY_BYTES`].
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as (lossy) text, truncated, for error messages.
    pub fn text_excerpt(&self) -> String {
        excerpt(&String::from_utf8_lossy(&self.body))
    }
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    /// `application/json`.
    Json(Vec<u8>),
}

/// An HTTP API endpoint with credentials and a timeout.
#[derive(Debug)]
pub struct HttpApi {
    client: reqwest::Client,
    base: Url,
    auth: Auth,
    timeout: Duration,
}

impl HttpApi {
    /// A client for `base` (the daemon's API root URL).
    pub fn new(base: Url, auth: Auth, timeout: Duration) -> Result<Self, ConfigError> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            // No idle keep-alive connections: bitcoind's RPC server waits for open client
            // connections before it exits, so a pooled connection would stall the daemon's
            // shutdown by up to its timeout. One connection per call to a local API is cheap.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| ConfigError::Client(e.to_string()))?;
        Ok(Self {
            client,
            base,
            auth,
            timeout,
        })
    }

    /// The API root.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `path` (with an optional query) under the API root, keeping any path prefix the root
    /// has (`http://h/api` + `ledger` = `http://h/api/ledger`).
    pub fn url(&self, path: &str) -> Result<Url, AdapterError> {
        let mut base = self.base.clone();
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        base.join(path.trim_start_matches('/'))
            .map_err(|e| AdapterError::BadResponse {
                call: "url",
                endpoint: self.base.to_string(),
                detail: format!("cannot form a URL from {path:?}: {e}"),
            })
    }

    /// Sends one request. 401/403 become [`AdapterError::Unauthorized`] (after one retry with a
    /// re-read cookie file); every other status is returned for the adapter to interpret.
    pub async fn send(
        &self,
        call: &'static str,
        method: Method,
        url: Url,
        body: Option<Body>,
    ) -> Result<Reply, AdapterError> {
        let reply = self
            .attempt(call, &method, &url, body.clone(), false)
            .await?;
        let reply =
            if reply.status == StatusCode::UNAUTHORIZED && matches!(self.auth, Auth::Cookie(_)) {
                tracing::info!(call, "node API answered 401; re-reading the cookie file");
                self.attempt(call, &method, &url, body, true).await?
            } else {
                reply
            };
        if matches!(
            reply.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            // geth answers 403 "invalid host specified" to a Host header outside --http.vhosts:
            // not a credentials problem, and the fix is on the daemon's side.
            let hint = if reply.status == StatusCode::FORBIDDEN
                && String::from_utf8_lossy(&reply.body).contains("invalid host")
            {
                "the daemon refused the Host header: add the --node-api host name to its allowed virtual hosts (geth --http.vhosts)"
            } else {
                self.auth_hint()
            };
            return Err(AdapterError::Unauthorized {
                call,
                endpoint: url.to_string(),
                status: reply.status.as_u16(),
                hint,
            });
        }
        Ok(reply)
    }

    fn auth_hint(&self) -> &'static str {
        match self.auth {
            Auth::None => {
                "the API needs credentials: set --node-api-token-file, --node-api-user/--node-api-password-file or --node-api-cookie-file"
            }
            Auth::Bearer(_) => "check --node-api-token-file against the daemon's API secret",
            Auth::Basic { .. } => "check --node-api-user and --node-api-password-file",
            Auth::Cookie(_) => {
                "the cookie file was re-read and still refused; check --node-api-cookie-file points at this daemon's cookie"
            }
        }
    }

    async fn attempt(
        &self,
        call: &'static str,
        method: &Method,
        url: &Url,
        body: Option<Body>,
        reread_cookie: bool,
    ) -> Result<Reply, AdapterError> {
        let mut req = self.client.request(method.clone(), url.clone());
        req = match &self.auth {
            Auth::None => req,
            Auth::Bearer(t) => req.bearer_auth(t.expose()),
            Auth::Basic { user, password } => req.basic_auth(user, Some(password.expose())),
            Auth::Cookie(c) => {
                // bitcoind writes the cookie when its RPC server starts, so a missing file
                // usually means "not up yet": report it like an unreachable daemon.
                let (user, password) =
                    c.credentials(reread_cookie)
                        .map_err(|detail| AdapterError::Unreachable {
                            call,
                            endpoint: url.to_string(),
                            detail,
                        })?;
                req.basic_auth(user, Some(password.expose()))
            }
        };
        if let Some(Body::Json(b)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| self.transport(call, url, &e))?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.transport(call, url, &e))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(AdapterError::BadResponse {
                    call,
                    endpoint: url.to_string(),
                    detail: format!("response larger than {MAX_BODY_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Reply { status, body })
    }

    fn transport(&self, call: &'static str, url: &Url, e: &reqwest::Error) -> AdapterError {
        let endpoint = url.to_string();
        if e.is_timeout() {
            return AdapterError::Timeout {
                call,
                endpoint,
                after: self.timeout,
            };
        }
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        AdapterError::Unreachable {
            call,
            endpoint,
            detail,
        }
    }
}

/// Parses a JSON body, or explains what was wrong with it.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    call: &'static str,
    url: &Url,
    reply: &Reply,
) -> Result<T, AdapterError> {
    serde_json::from_slice(&reply.body).map_err(|e| AdapterError::BadResponse {
        call,
        endpoint: url.to_string(),
        detail: format!(
            "HTTP {}: {e}; body starts with {:?}",
            reply.status.as_u16(),
            reply.text_excerpt()
        ),
    })
}
