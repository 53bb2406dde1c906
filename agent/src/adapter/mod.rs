//! Node adapters: the only way the agent talks to the node daemon it supervises.
//!
//! Every daemon has its own API for "who are my peers", "dial this address", "drop that peer"
//! and "am I synced". [`NodeAdapter`] is the common shape; one implementation per API family:
//! [`wavelet`], [`bitcoind`] (Bitcoin Core JSON-RPC, litecoind and other forks), [`nodeos`]
//! (EOSIO), [`geth`], [`template`] (an HTTP API described in a TOML file) and [`none`]
//! (registration and health only). [`build`] picks one from an [`AdapterConfig`], which the
//! agent gets from the [`AdapterArgs`] flags.
//!
//! Guarantees, for every adapter: every call is bounded by the configured timeout; nothing is
//! fetched through an environment proxy; credentials come from files or the environment, never
//! from the command line, and never appear in `Debug` output or errors; failures are typed
//! ([`AdapterError`]) so the peer keeper can tell "daemon down" from "bad credentials" from
//! "the daemon said no". Adapters hold no peer-keeping policy: they report and execute.

pub mod bitcoind;
pub mod config;
pub mod geth;
pub mod http;
pub mod nodeos;
pub mod none;
pub mod template;
pub mod wavelet;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

pub use config::{AdapterArgs, AdapterConfig, AdapterKind, ConfigError, build};

/// Which side opened a peer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The peer dialed this node.
    Inbound,
    /// This node dialed the peer.
    Outbound,
}

/// One peer as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// The peer's address as the daemon lists it. For outbound peers this is the address that
    /// was dialed; for inbound peers of some daemons (bitcoind, geth) it is the remote end of
    /// the connection, with an ephemeral port, so [`Peer::identity`] is the better key.
    pub addr: SocketAddr,
    /// Connection direction, when the daemon says.
    pub direction: Option<Direction>,
    /// Daemon-level identity when the daemon reports one: the node id carried in a user agent
    /// comment (bitcoind `-uacomment`), an enode id (geth), a node id (Wavelet, devnode).
    pub identity: Option<String>,
}

/// What a connect call achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectOutcome {
    /// The daemon reports the peer connected.
    Established,
    /// The daemon accepted the request and dials in the background; only a later
    /// [`NodeAdapter::peers`] tells whether it worked.
    Pending,
    /// The daemon was already connected to that address.
    AlreadyConnected,
}

/// The daemon's view of its own sync state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SyncStatus {
    /// Height of the daemon's best block, when reported.
    pub height: Option<u64>,
    /// Sync progress in 0.0–1.0, when reported.
    pub progress: Option<f64>,
    /// Age of the best block (now − block time), when the block time is reported.
    pub lag: Option<Duration>,
    /// What the daemon itself claims. Daemons that make no claim report `true`; a stalled
    /// daemon may claim it too, which is why the agent also compares [`SyncStatus::lag`]
    /// against its `--max-lag`.
    pub synced: bool,
}

/// A failed adapter call. Every variant names the call and the endpoint it went to.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// Nothing answered: connection refused, DNS, reset.
    #[error("{call}: node API at {endpoint} is unreachable: {detail}")]
    Unreachable {
        /// The adapter call (`peers`, `connect`, ...).
        call: &'static str,
        /// The URL or address tried.
        endpoint: String,
        /// The transport error.
        detail: String,
    },
    /// The daemon refused the credentials (HTTP 401/403).
    #[error("{call}: node API at {endpoint} refused the credentials (HTTP {status}); {hint}")]
    Unauthorized {
        /// The adapter call.
        call: &'static str,
        /// The URL.
        endpoint: String,
        /// 401 or 403.
        status: u16,
        /// What to check.
        hint: &'static str,
    },
    /// The daemon understood the request and said no (an RPC error, a 4xx/5xx with a message,
    /// 429 rate limiting).
    #[error("{call}: node API at {endpoint} rejected the request{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Rejected {
        /// The adapter call.
        call: &'static str,
        /// The URL.
        endpoint: String,
        /// HTTP status, when the rejection came as one.
        status: Option<u16>,
        /// The daemon's message, truncated.
        message: String,
    },
    /// This adapter cannot do that call for this daemon.
    #[error("{call}: not supported by the {adapter} adapter: {why}")]
    Unsupported {
        /// The adapter kind.
        adapter: &'static str,
        /// The adapter call.
        call: &'static str,
        /// Why.
        why: &'static str,
    },
    /// The daemon answered something this adapter cannot read.
    #[error("{call}: unexpected answer from node API at {endpoint}: {detail}")]
    BadResponse {
        /// The adapter call.
        call: &'static str,
        /// The URL.
        endpoint: String,
        /// What was wrong, with a truncated excerpt.
        detail: String,
    },
    /// No answer within the timeout.
    #[error("{call}: node API at {endpoint} did not answer within {after:?}")]
    Timeout {
        /// The adapter call.
        call: &'static str,
        /// The URL.
        endpoint: String,
        /// The timeout.
        after: Duration,
    },
}

impl AdapterError {
    /// Whether retrying later may help (the daemon is down, slow or rate limiting), as opposed
    /// to a configuration problem or a definite "no".
    pub fn is_transient(&self) -> bool {
        match self {
            AdapterError::Unreachable { .. } | AdapterError::Timeout { .. } => true,
            AdapterError::Rejected { status, .. } => matches!(status, Some(429 | 502..=504)),
            _ => false,
        }
    }
}

/// The operations the agent needs from a node daemon.
///
/// Implementations are cheap to share (`Arc<dyn NodeAdapter>`) and safe to call concurrently.
#[async_trait::async_trait]
pub trait NodeAdapter: Send + Sync + fmt::Debug {
    /// The adapter kind, for logs and `/status`.
    fn kind(&self) -> AdapterKind;

    /// Succeeds when the daemon's API answers. Where the probed call needs credentials
    /// (bitcoind, geth, most templates) a wrong one shows here as
    /// [`AdapterError::Unauthorized`]; Wavelet's `/ledger` needs none, so a wrong token shows
    /// at the first connect.
    async fn probe(&self) -> Result<(), AdapterError>;

    /// The daemon's current peers, inbound included.
    async fn peers(&self) -> Result<Vec<Peer>, AdapterError>;

    /// Asks the daemon to dial `addr`. `identity` is the target's daemon-level identity from its
    /// record (geth needs the enode id to dial); adapters that do not need it ignore it.
    async fn connect(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
    ) -> Result<ConnectOutcome, AdapterError>;

    /// Asks the daemon to drop the peer it lists at `addr`.
    async fn disconnect(&self, addr: SocketAddr) -> Result<(), AdapterError>;

    /// The daemon's sync state.
    async fn sync_status(&self) -> Result<SyncStatus, AdapterError>;

    /// The daemon's own identity as its peers would report it (geth's enode id), to publish
    /// in the node's record; `None` for daemons without one.
    async fn own_identity(&self) -> Result<Option<String>, AdapterError> {
        Ok(None)
    }
}

/// Truncates a daemon-provided string for an error message.
pub(crate) fn excerpt(s: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = s.chars().take(MAX).collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    out
}

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub(crate) fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The age of a block made at `block_ms` (0 for a block from the future).
pub(crate) fn lag_since_ms(block_ms: u64) -> Duration {
    Duration::from_millis(unix_ms_now().saturating_sub(block_ms))
}

/// Parses a block time: RFC 3339 (`2024-05-01T12:00:00.5Z`), or ISO 8601 without an offset,
/// taken as UTC (nodeos' `head_block_time`). Milliseconds since the Unix epoch.
pub(crate) fn parse_time_ms(s: &str) -> Option<u64> {
    use time::format_description::well_known::{Iso8601, Rfc3339};
    let t = time::OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| time::PrimitiveDateTime::parse(s, &Iso8601::DEFAULT).map(|p| p.assume_utc()))
        .ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_times_with_and_without_offset() {
        assert_eq!(parse_time_ms("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(parse_time_ms("1970-01-01T00:00:02.000"), Some(2000));
        assert_eq!(parse_time_ms("1970-01-01T00:00:03"), Some(3000));
        assert_eq!(parse_time_ms("yesterday"), None);
    }
}
