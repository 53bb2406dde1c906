//! A minimal EC2 instance metadata (IMDS) client: just enough to read an address.
//!
//! IMDSv2 first (`PUT /latest/api/token`, then `GET` with the token), IMDSv1 when the token call
//! is refused or times out: from a bridged container the token answer is dropped when the
//! instance's hop limit is 1, and v1 still works there. Every request has a 1 s timeout and
//! ignores `HTTP_PROXY`, because the metadata service is link-local and a proxy would either
//! hang or answer for the wrong machine. A connection that cannot even be opened ends the source
//! at once: v1 would fail the same way.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::sync::OnceCell;

use super::source::Ec2Field;

/// The metadata service's default address.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

/// Per-request timeout (connect and whole response).
const TIMEOUT: Duration = Duration::from_secs(1);

/// How long the session token asked for stays valid, in seconds.
const TOKEN_TTL_SECS: &str = "21600";

/// Why the metadata service gave no address.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// The HTTP client could not be built (TLS backend initialisation).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// Nothing answered at the endpoint.
    #[error("metadata service at {endpoint} unreachable: {source}")]
    Unreachable {
        /// The endpoint dialed.
        endpoint: String,
        /// The connect error.
        #[source]
        source: reqwest::Error,
    },
    /// The field does not exist on this instance (for `public-ipv4`: no public address).
    #[error("{path} not present (404): this instance has no such address")]
    NotFound {
        /// The metadata path.
        path: &'static str,
    },
    /// Any other HTTP status.
    #[error("{path}: metadata service answered {status}")]
    Status {
        /// The metadata path.
        path: &'static str,
        /// The status received.
        status: StatusCode,
    },
    /// A timeout or broken response.
    #[error("{path}: request failed: {source}")]
    Request {
        /// The metadata path.
        path: &'static str,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The body is not an IP address.
    #[error("{path}: answer {shown:?} is not an IP address")]
    NotAnAddress {
        /// The metadata path.
        path: &'static str,
        /// The body, truncated.
        shown: String,
    },
}

/// A metadata client bound to one endpoint. The IMDSv2 token is fetched once and shared by
/// every lookup made through the same client.
#[derive(Debug)]
pub struct ImdsClient {
    endpoint: String,
    http: OnceCell<reqwest::Client>,
    token: OnceCell<Option<String>>,
}

impl ImdsClient {
    /// A client for `endpoint` (e.g. `http://169.254.169.254`; a trailing `/` is ignored).
    /// Nothing is sent until the first lookup.
    pub fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            http: OnceCell::new(),
            token: OnceCell::new(),
        }
    }

    /// The endpoint this client dials.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn http(&self) -> Result<&reqwest::Client, ImdsError> {
        self.http
            .get_or_try_init(|| async {
                reqwest::Client::builder()
                    .no_proxy()
                    .connect_timeout(TIMEOUT)
                    .timeout(TIMEOUT)
                    .build()
                    .map_err(ImdsError::Client)
            })
            .await
    }

    /// Reads one address field.
    pub async fn address(&self, field: Ec2Field) -> Result<std::net::IpAddr, ImdsError> {
        let path = field.path();
        let token = self.token().await?;
        let url = format!("{}/latest/meta-data/{path}", self.endpoint);
        let mut resp = self.get(&url, path, token.as_deref()).await?;
        if resp.status() == StatusCode::UNAUTHORIZED && token.is_some() {
            // A token that the service no longer accepts (expired, or a restarted service):
            // IMDSv1 may still answer.
            resp = self.get(&url, path, None).await?;
        }
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(ImdsError::NotFound { path }),
            status => return Err(ImdsError::Status { path, status }),
        }
        let body = resp
            .text()
            .await
            .map_err(|source| ImdsError::Request { path, source })?;
        body.trim().parse().map_err(|_| ImdsError::NotAnAddress {
            path,
            shown: body.chars().take(60).collect(),
        })
    }

    async fn get(
        &self,
        url: &str,
        path: &'static str,
        token: Option<&str>,
    ) -> Result<reqwest::Response, ImdsError> {
        let mut req = self.http().await?.get(url);
        if let Some(t) = token {
            req = req.header("X-aws-ec2-metadata-token", t);
        }
        req.send()
            .await
            .map_err(|source| self.classify(path, source))
    }

    /// The IMDSv2 token, or `None` to use IMDSv1. Only an unreachable endpoint is an error.
    async fn token(&self) -> Result<Option<String>, ImdsError> {
        self.token
            .get_or_try_init(|| self.fetch_token())
            .await
            .cloned()
    }

    async fn fetch_token(&self) -> Result<Option<String>, ImdsError> {
        let url = format!("{}/latest/api/token", self.endpoint);
        let sent = self
            .http()
            .await?
            .put(&url)
            .header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECS)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Err(self.classify("api/token", e)),
            Err(e) => {
                tracing::info!(error = %e, "IMDSv2 token request failed (hop limit 1 from a container?); using IMDSv1");
                return Ok(None);
            }
        };
        if !resp.status().is_success() {
            tracing::info!(status = %resp.status(), "IMDSv2 token refused; using IMDSv1");
            return Ok(None);
        }
        match resp.text().await {
            Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_owned())),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::info!(error = %e, "IMDSv2 token unreadable; using IMDSv1");
                Ok(None)
            }
        }
    }

    fn classify(&self, path: &'static str, source: reqwest::Error) -> ImdsError {
        if source.is_connect() {
            ImdsError::Unreachable {
                endpoint: self.endpoint.clone(),
                source,
            }
        } else {
            ImdsError::Request { path, source }
        }
    }
}
