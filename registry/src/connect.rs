//! The etcd connection: options, [`connect`], and the [`Etcd`] handle the rest of the crate uses.
//!
//! [`Etcd`] wraps `etcd_client::Client` so that the crate's callers get, on every request:
//!
//! - **a bounded retry of `Unavailable`**: with several endpoints and one dead, the client's
//!   balancer still sends some calls to the dead one; a quick fresh attempt reaches a live one;
//! - **deferred authentication**: etcd-client authenticates inside `connect`, which would make a
//!   client with credentials fail to start while etcd is down. Here `connect` never talks to etcd;
//!   the first request authenticates, and later requests re-authenticate on an expired token;
//! - **errors that name the endpoints**, turned into [`RegistryError`] variants.
//!
//! `connect` is lazy: it checks the options and builds the client, nothing more. Callers that
//! must know whether etcd answers (CLI commands, exit code 5) call [`Etcd::probe`].
//!
//! Streams (watch, lease keepalive) are never resumed by etcd-client; their owners re-create them.
//! etcd-client types appear only in crate-visible methods, never in the public API.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, DeleteOptions, DeleteResponse, GetOptions, GetResponse,
    Identity, LeaseKeepAliveStream, LeaseKeeper, PutOptions, PutResponse, TlsOptions, Txn,
    TxnResponse, WatchOptions, WatchStream,
};
use tonic::Code;

use crate::error::RegistryError;

/// Default time allowed to open a TCP (and TLS) connection to one endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time allowed for a unary request to get its response.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default HTTP/2 ping interval. etcd refuses pings more often than its
/// `--grpc-keepalive-min-time` (5 s); 10 s leaves margin.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Default time to wait for a ping answer before the connection counts as dead.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest accepted ping interval (see [`DEFAULT_KEEPALIVE_INTERVAL`]).
pub const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Attempts per request when etcd answers `Unavailable`. The client's balancer usually skips a
/// dead endpoint, but under load it can pick it several times in a row (1 of 200 requests failed
/// with 4 attempts on a loaded machine); 6 attempts take at most 375 ms of pauses.
const UNAVAILABLE_ATTEMPTS: u32 = 6;
/// Pause before the second attempt; two, three... times as long before the next ones.
const UNAVAILABLE_PAUSE: Duration = Duration::from_millis(25);

/// Files for TLS to etcd (`https://` endpoints).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CA bundle that signed the etcd server certificates.
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for etcd's `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key: Option<PathBuf>,
}

/// etcd user credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The etcd user name.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Client URLs (`http://host:port` or `https://host:port`).
    pub endpoints: Vec<String>,
    /// Time allowed to open a connection to one endpoint.
    pub connect_timeout: Duration,
    /// Time allowed for a unary request (bounds response headers, not stream bodies).
    pub request_timeout: Duration,
    /// HTTP/2 ping interval; detects a silently hung etcd under open streams.
    pub keepalive_interval: Duration,
    /// Time to wait for a ping answer.
    pub keepalive_timeout: Duration,
    /// TLS files; required for `https://` endpoints.
    pub tls: Option<TlsFiles>,
    /// User and password, when etcd has auth enabled.
    pub auth: Option<Credentials>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            tls: None,
            auth: None,
        }
    }
}

impl EtcdOptions {
    /// Default options for the given endpoints.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
}

/// A connection to etcd, cheap to clone; clones share the underlying HTTP/2 channels.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    endpoints: Vec<String>,
    /// The endpoints joined by commas, for error messages.
    shown: String,
    auth: Option<Credentials>,
    /// TLS is on but no client certificate is configured (for error hints).
    tls_without_identity: bool,
    authenticated: AtomicBool,
    auth_lock: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Etcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.inner.endpoints)
            .field("user", &self.inner.auth.as_ref().map(|c| &c.user))
            .finish()
    }
}

/// Checks the options and builds a client. Does not talk to etcd (see [`Etcd::probe`]).
pub async fn connect(opts: &EtcdOptions) -> Result<Etcd, RegistryError> {
    let endpoints = normalize_endpoints(&opts.endpoints, opts.tls.is_some())?;
    check_durations(opts)?;
    let mut copts = ConnectOptions::new()
        .with_keep_alive(opts.keepalive_interval, opts.keepalive_timeout)
        .with_timeout(opts.request_timeout)
        .with_connect_timeout(opts.connect_timeout)
        // A member cut off from its cluster's leader otherwise keeps streams open and silent;
        // with this it fails them ("no leader"), so callers re-create them on a healthy member.
        .with_require_leader(true)
        .with_auto_token_refresh(true);
    if let Some(tls) = &opts.tls {
        copts = copts.with_tls(tls_options(tls)?);
    }
    let client = Client::connect(&endpoints, Some(copts))
        .await
        .map_err(|e| RegistryError::BadEndpoint {
            endpoint: endpoints.join(","),
            reason: e.to_string(),
        })?;
    Ok(Etcd {
        inner: Arc::new(Inner {
            client,
            shown: endpoints.join(","),
            endpoints,
            auth: opts.auth.clone(),
            tls_without_identity: opts.tls.as_ref().is_some_and(|t| t.cert.is_none()),
            authenticated: AtomicBool::new(false),
            auth_lock: tokio::sync::Mutex::new(()),
        }),
    })
}

/// Adds a scheme to bare `host:port` endpoints and refuses schemes that contradict the TLS
/// options, which etcd-client would otherwise report obscurely or only on the first request.
fn normalize_endpoints(endpoints: &[String], tls: bool) -> Result<Vec<String>, RegistryError> {
    let list: Vec<&str> = endpoints
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .collect();
    if list.is_empty() {
        return Err(RegistryError::NoEndpoints);
    }
    list.into_iter()
        .map(|e| {
            let bad = |reason: &str| RegistryError::BadEndpoint {
                endpoint: e.to_owned(),
                reason: reason.to_owned(),
            };
            if e.starts_with("http://") {
                if tls {
                    return Err(bad(
                        "TLS files are set (--etcd-ca/--etcd-cert/--etcd-key): use https:// endpoints",
                    ));
                }
                Ok(e.to_owned())
            } else if e.starts_with("https://") {
                if !tls {
                    return Err(bad(
                        "https:// needs the CA that signed etcd's certificate: set --etcd-ca",
                    ));
                }
                Ok(e.to_owned())
            } else if e.contains("://") {
                Err(bad("the scheme must be http:// or https://"))
            } else if tls {
                Ok(format!("https://{e}"))
            } else {
                Ok(format!("http://{e}"))
            }
        })
        .collect()
}

fn check_durations(opts: &EtcdOptions) -> Result<(), RegistryError> {
    let checks: [(&'static str, Duration, Duration); 4] = [
        (
            "--etcd-connect-timeout",
            opts.connect_timeout,
            Duration::from_millis(1),
        ),
        (
            "--etcd-request-timeout",
            opts.request_timeout,
            Duration::from_millis(1),
        ),
        (
            "etcd keepalive interval",
            opts.keepalive_interval,
            MIN_KEEPALIVE_INTERVAL,
        ),
        (
            "etcd keepalive timeout",
            opts.keepalive_timeout,
            Duration::from_millis(1),
        ),
    ];
    for (flag, value, min) in checks {
        if value < min {
            return Err(RegistryError::BadOption {
                flag,
                reason: format!("{value:?} is below the minimum of {min:?}"),
            });
        }
    }
    Ok(())
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|source| RegistryError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn tls_options(files: &TlsFiles) -> Result<TlsOptions, RegistryError> {
    let mut tls = TlsOptions::new();
    match &files.ca {
        Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read_file("etcd CA", ca)?)),
        None => {
            return Err(RegistryError::BadOption {
                flag: "--etcd-ca",
                reason: "TLS to etcd needs the CA that signed its certificate".to_owned(),
            });
        }
    }
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let cert = read_file("etcd client certificate", cert)?;
            let key = read_file("etcd client key", key)?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            return Err(RegistryError::BadOption {
                flag: "--etcd-cert/--etcd-key",
                reason: "give both the client certificate and its key, or neither".to_owned(),
            });
        }
    }
    Ok(tls)
}

/// A status made on the client from a connection failure, rather than one etcd sent: tonic
/// attaches the transport error as its source (and often reports it as `Unknown`).
fn is_transport_status(s: &tonic::Status) -> bool {
    std::error::Error::source(s).is_some()
}

fn is_unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == Code::Unavailable || (s.code() == Code::Unknown && is_transport_status(s))
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

impl Etcd {
    /// The endpoints in use (with schemes).
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// Checks that etcd answers (and accepts our credentials, if any).
    pub async fn probe(&self) -> Result<(), RegistryError> {
        self.call("status", "", |mut c| async move { c.status().await })
            .await
            .map(drop)
    }

    /// Turns an etcd-client error into a [`RegistryError`] naming the endpoints, operation and key.
    pub(crate) fn classify(
        &self,
        op: &'static str,
        key: &str,
        e: etcd_client::Error,
    ) -> RegistryError {
        let endpoints = self.inner.shown.clone();
        let detail = e.to_string();
        let status = match &e {
            etcd_client::Error::GRpcStatus(s)
                if s.code() == Code::Unknown && is_transport_status(s) =>
            {
                Some((Code::Unavailable, s.message().to_owned()))
            }
            etcd_client::Error::GRpcStatus(s) => Some((s.code(), s.message().to_owned())),
            _ => None,
        };
        let Some((code, message)) = status else {
            return match e {
                etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                    RegistryError::Unreachable {
                        endpoints,
                        op,
                        detail: self.transport_detail(&e, detail),
                    }
                }
                _ => RegistryError::Request {
                    endpoints,
                    op,
                    key: key.to_owned(),
                    detail,
                },
            };
        };
        let auth_message = message.contains("authentication failed")
            || message.contains("user name is empty")
            || message.contains("invalid auth token")
            || message.contains("user name not found");
        match code {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                RegistryError::Unreachable {
                    endpoints,
                    op,
                    detail: self.transport_detail(&e, message),
                }
            }
            Code::Unauthenticated => RegistryError::AuthFailed {
                endpoints,
                user: self.inner.auth.as_ref().map(|c| c.user.clone()),
                detail: message,
            },
            _ if auth_message => RegistryError::AuthFailed {
                endpoints,
                user: self.inner.auth.as_ref().map(|c| c.user.clone()),
                detail: message,
            },
            Code::PermissionDenied => RegistryError::PermissionDenied {
                endpoints,
                op,
                key: key.to_owned(),
                detail: message,
            },
            _ => RegistryError::Request {
                endpoints,
                op,
                key: key.to_owned(),
                detail: message,
            },
        }
    }

    /// The message of a transport failure with its causes, which carry the useful part ("tcp
    /// connect error: Connection refused", a TLS alert) under a generic top line. When TLS is on
    /// without a client certificate, a hint: etcd with `--client-cert-auth` closes such
    /// connections with nothing more specific than "operation was canceled".
    fn transport_detail(&self, e: &etcd_client::Error, top: String) -> String {
        use std::error::Error as _;
        let mut detail = top;
        // etcd-client's error does not expose its cause; the wrapped tonic values do.
        let mut source = match e {
            etcd_client::Error::GRpcStatus(s) => s.source(),
            etcd_client::Error::TransportError(t) => t.source(),
            etcd_client::Error::IoError(io) => io.source(),
            other => other.source(),
        };
        while let Some(cause) = source {
            let text = cause.to_string();
            if !detail.contains(&text) {
                detail = format!("{detail}: {text}");
            }
            source = cause.source();
        }
        if self.inner.tls_without_identity {
            detail.push_str(
                " (no client certificate was presented: if etcd runs with --client-cert-auth, \
                 set --etcd-cert and --etcd-key)",
            );
        }
        detail
    }

    /// Authenticates once, before the first request that needs it. Done here rather than in
    /// `connect` so that an agent can start (and keep retrying) while etcd is down.
    async fn ensure_auth(&self) -> Result<(), RegistryError> {
        let Some(creds) = &self.inner.auth else {
            return Ok(());
        };
        if self.inner.authenticated.load(Ordering::Acquire) {
            return Ok(());
        }
        let _guard = self.inner.auth_lock.lock().await;
        if self.inner.authenticated.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut client = self.inner.client.clone();
        let mut attempt = 1;
        loop {
            let pair = Some((creds.user.clone(), creds.password.clone()));
            match client.update_user(pair).await {
                Ok(()) => break,
                Err(e) if attempt < UNAVAILABLE_ATTEMPTS && is_unavailable(&e) => {
                    tokio::time::sleep(UNAVAILABLE_PAUSE * attempt).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(match self.classify("authenticate", "", e) {
                        RegistryError::Request {
                            endpoints, detail, ..
                        } => RegistryError::AuthFailed {
                            endpoints,
                            user: Some(creds.user.clone()),
                            detail,
                        },
                        other => other,
                    });
                }
            }
        }
        self.inner.authenticated.store(true, Ordering::Release);
        tracing::debug!(user = %creds.user, "authenticated to etcd");
        Ok(())
    }

    /// Runs one request with authentication and the bounded `Unavailable` retry.
    async fn call<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Result<T, RegistryError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.ensure_auth().await?;
        let mut attempt = 1;
        loop {
            match f(self.inner.client.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < UNAVAILABLE_ATTEMPTS && is_unavailable(&e) => {
                    tokio::time::sleep(UNAVAILABLE_PAUSE * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(self.classify(op, key, e)),
            }
        }
    }

    /// Reads one key, or a range when `opts` says so.
    pub(crate) async fn get(
        &self,
        key: &str,
        opts: Option<GetOptions>,
    ) -> Result<GetResponse, RegistryError> {
        self.call("get", key, |mut c| {
            let opts = opts.clone();
            async move { c.get(key, opts).await }
        })
        .await
    }

    /// Reads from a raw byte key (page starts need not be valid UTF-8); `shown` names it in
    /// errors.
    pub(crate) async fn get_bytes(
        &self,
        key: Vec<u8>,
        opts: Option<GetOptions>,
        shown: &str,
    ) -> Result<GetResponse, RegistryError> {
        self.call("get", shown, |mut c| {
            let (key, opts) = (key.clone(), opts.clone());
            async move { c.get(key, opts).await }
        })
        .await
    }

    /// Reads every key under `prefix`.
    pub(crate) async fn get_prefix(&self, prefix: &str) -> Result<GetResponse, RegistryError> {
        self.get(prefix, Some(GetOptions::new().with_prefix()))
            .await
    }

    /// Writes one key.
    pub(crate) async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        opts: Option<PutOptions>,
    ) -> Result<PutResponse, RegistryError> {
        self.call("put", key, |mut c| {
            let (value, opts) = (value.clone(), opts.clone());
            async move { c.put(key, value, opts).await }
        })
        .await
    }

    /// Deletes one key, or a range when `opts` says so.
    pub(crate) async fn delete(
        &self,
        key: &str,
        opts: Option<DeleteOptions>,
    ) -> Result<DeleteResponse, RegistryError> {
        self.call("delete", key, |mut c| {
            let opts = opts.clone();
            async move { c.delete(key, opts).await }
        })
        .await
    }

    /// Runs a transaction; `key` names it in errors.
    ///
    /// A retried `Unavailable` may follow an attempt that was applied; callers' transactions are
    /// written so that a second application is harmless (compare-guarded).
    pub(crate) async fn txn(&self, key: &str, txn: Txn) -> Result<TxnResponse, RegistryError> {
        self.call("txn", key, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Grants a lease of `ttl`, returning its id.
    pub(crate) async fn lease_grant(&self, ttl: Duration) -> Result<i64, RegistryError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        self.call("lease grant", "", |mut c| async move {
            c.lease_grant(secs, None).await
        })
        .await
        .map(|r| r.id())
    }

    /// Revokes a lease, deleting every key bound to it.
    pub(crate) async fn lease_revoke(&self, lease: i64) -> Result<(), RegistryError> {
        self.call("lease revoke", "", |mut c| async move {
            c.lease_revoke(lease).await
        })
        .await
        .map(drop)
        .map_err(|e| lease_error(e, lease))
    }

    /// Opens a keepalive stream on an existing lease.
    pub(crate) async fn lease_keep_alive(
        &self,
        lease: i64,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream), RegistryError> {
        self.call("lease keepalive", "", |mut c| async move {
            c.lease_keep_alive(lease).await
        })
        .await
        .map_err(|e| lease_error(e, lease))
    }

    /// Remaining time to live of a lease in seconds, or `None` when it no longer exists.
    pub(crate) async fn lease_ttl(&self, lease: i64) -> Result<Option<i64>, RegistryError> {
        let resp = self
            .call("lease time-to-live", "", |mut c| async move {
                c.lease_time_to_live(lease, None).await
            })
            .await
            .map_err(|e| lease_error(e, lease));
        match resp {
            Ok(r) => Ok((r.ttl() > 0).then_some(r.ttl())),
            Err(RegistryError::LeaseNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens a watch.
    pub(crate) async fn watch(
        &self,
        key: &str,
        opts: Option<WatchOptions>,
    ) -> Result<WatchStream, RegistryError> {
        self.call("watch", key, |mut c| {
            let opts = opts.clone();
            async move { c.watch(key, opts).await }
        })
        .await
    }
}

/// Recognises etcd's "lease not found" however it arrives (a status on revoke, a keepalive
/// error on a stream re-opened on a dead lease).
pub(crate) fn lease_error(e: RegistryError, lease: i64) -> RegistryError {
    match &e {
        RegistryError::Request { detail, .. } if detail.contains("lease not found") => {
            RegistryError::LeaseNotFound { lease }
        }
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_schemes_and_contradictions_are_refused() {
        let eps = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            normalize_endpoints(&eps(&["127.0.0.1:2379", " http://a:1 "]), false).ok(),
            Some(eps(&["http://127.0.0.1:2379", "http://a:1"]))
        );
        assert_eq!(
            normalize_endpoints(&eps(&["10.0.0.1:2379"]), true).ok(),
            Some(eps(&["https://10.0.0.1:2379"]))
        );
        assert!(matches!(
            normalize_endpoints(&eps(&["", " "]), false),
            Err(RegistryError::NoEndpoints)
        ));
        assert!(normalize_endpoints(&eps(&["https://a:1"]), false).is_err());
        assert!(normalize_endpoints(&eps(&["http://a:1"]), true).is_err());
        assert!(normalize_endpoints(&eps(&["unix://a"]), false).is_err());
    }

    #[tokio::test]
    async fn connect_is_lazy_and_probe_names_the_endpoint() {
        // Port 1 on loopback: nothing listens there, the connection is refused at once.
        let opts = EtcdOptions {
            connect_timeout: Duration::from_millis(500),
            ..EtcdOptions::new(["http://127.0.0.1:1"])
        };
        let etcd = connect(&opts).await.expect("connect is lazy");
        let err = etcd.probe().await.expect_err("nothing listens on port 1");
        assert!(err.is_unreachable(), "{err:?}");
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
        assert!(err.to_string().contains("refused"), "says why: {err}");
    }

    #[tokio::test]
    async fn tls_options_are_checked_before_connecting() {
        let opts = EtcdOptions {
            tls: Some(TlsFiles {
                ca: Some("/nonexistent/ca.pem".into()),
                ..TlsFiles::default()
            }),
            ..EtcdOptions::new(["https://127.0.0.1:1"])
        };
        let err = connect(&opts).await.expect_err("missing CA file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let short = EtcdOptions {
            keepalive_interval: Duration::from_secs(1),
            ..EtcdOptions::default()
        };
        assert!(matches!(
            connect(&short).await,
            Err(RegistryError::BadOption { .. })
        ));
    }
}
