//! `RegistryError`, the one error type of everything in this crate that talks to etcd.
//!
//! etcd-client reports failures as gRPC statuses whose meaning hides in a code and a free-form
//! message. This module turns them into variants a caller can act on — unreachable (retry later,
//! or exit 5 in a CLI), bad credentials, missing permission, lease gone, id taken (exit 4) — each
//! naming the endpoints, the operation and the key involved, so that a log line or an exit
//! message says what to fix without a debugger.

use std::path::PathBuf;

use crate::keys::PrefixError;
use crate::names::{NameError, NodeId};
use crate::record::RecordError;

/// Exit code for "node id taken by another live instance" (DESIGN.md, shared by all binaries).
pub const EXIT_ID_TAKEN: u8 = 4;
/// Exit code for "etcd unreachable where it is required".
pub const EXIT_ETCD_UNREACHABLE: u8 = 5;
/// Exit code for a generic runtime error.
pub const EXIT_RUNTIME: u8 = 1;
/// Exit code for a usage error (bad flag values, as clap uses).
pub const EXIT_USAGE: u8 = 2;

/// Everything that can go wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No etcd endpoint was given.
    #[error("no etcd endpoint given (set --etcd-endpoints or PEERKEEP_ETCD_ENDPOINTS)")]
    NoEndpoints,
    /// An endpoint URL is not usable with the given options.
    #[error("etcd endpoint {endpoint:?} is not usable: {reason}")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it and what to do.
        reason: String,
    },
    /// A file named by a flag (CA, certificate, key, password) could not be read.
    #[error("cannot read the {what} file {path}: {source}")]
    ReadFile {
        /// Which file it is, e.g. "etcd CA".
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A flag value is invalid (for example a timeout of zero).
    #[error("invalid {flag}: {reason}")]
    BadOption {
        /// The flag, e.g. `--etcd-request-timeout`.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The key prefix is unusable.
    #[error(transparent)]
    Prefix(#[from] PrefixError),
    /// A cluster name or node id is unusable.
    #[error(transparent)]
    Name(#[from] NameError),
    /// No etcd endpoint answered (connection refused, timeout, TLS handshake failure, no leader).
    #[error("etcd at {endpoints} is unreachable during {op}: {detail}")]
    Unreachable {
        /// The configured endpoints, comma-separated.
        endpoints: String,
        /// The operation that failed, e.g. "txn" or "lease grant".
        op: &'static str,
        /// The underlying transport or server message.
        detail: String,
    },
    /// etcd refused the user name or password, or demands credentials that were not given.
    #[error(
        "etcd at {endpoints} refused authentication{}: {detail} \
         (check --etcd-user and the file given to --etcd-password-file)",
        user.as_deref().map(|u| format!(" of user {u:?}")).unwrap_or_default()
    )]
    AuthFailed {
        /// The configured endpoints, comma-separated.
        endpoints: String,
        /// The user, if one was configured.
        user: Option<String>,
        /// etcd's message.
        detail: String,
    },
    /// The user lacks permission for a key.
    #[error(
        "etcd at {endpoints} denied {op} on {key:?}: {detail} \
         (grant the user's role readwrite on the prefix)"
    )]
    PermissionDenied {
        /// The configured endpoints, comma-separated.
        endpoints: String,
        /// The operation.
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// etcd's message.
        detail: String,
    },
    /// The lease does not exist any more (expired or revoked).
    #[error("etcd lease {lease:x} not found (expired or revoked)")]
    LeaseNotFound {
        /// The lease id.
        lease: i64,
    },
    /// Any other failed request.
    #[error("etcd {op} on {key:?} failed at {endpoints}: {detail}")]
    Request {
        /// The configured endpoints, comma-separated.
        endpoints: String,
        /// The operation.
        op: &'static str,
        /// The key or prefix ("" when not keyed).
        key: String,
        /// The underlying message.
        detail: String,
    },
    /// A record we were about to write is invalid (too large, ...).
    #[error("cannot write the node record: {0}")]
    Record(#[from] RecordError),
    /// Another live agent instance holds our node id.
    #[error(
        "node id {id} is held by another live instance {holder_instance} (started {holder_started_at}); \
         stop it, wait for its lease to expire, or choose another --node-id"
    )]
    IdTaken {
        /// The contested id.
        id: NodeId,
        /// The `instance` token in the current record.
        holder_instance: String,
        /// The holder's `started_at`.
        holder_started_at: String,
    },
    /// Every slot up to the maximum is taken.
    #[error("no free slot: all slots up to {max} are claimed in cluster {cluster}")]
    NoFreeSlot {
        /// The cluster.
        cluster: String,
        /// The highest slot number.
        max: u32,
    },
    /// The registration task has ended (revoked, or it stopped on a fatal error).
    #[error("the registration has stopped")]
    Stopped,
}

impl RegistryError {
    /// Whether the error means "etcd could not be reached" (worth retrying, exit 5 in a CLI).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    /// Whether etcd's reply was larger than one gRPC message may be (4 MiB in the client):
    /// the read must be split into smaller pages.
    pub fn is_reply_too_large(&self) -> bool {
        matches!(self, Self::Request { detail, .. } | Self::Unreachable { detail, .. }
            if detail.contains("message length too large"))
    }

    /// The exit code a binary should use when it stops because of this error (DESIGN.md table).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::IdTaken { .. } => EXIT_ID_TAKEN,
            Self::Unreachable { .. } => EXIT_ETCD_UNREACHABLE,
            Self::NoEndpoints
            | Self::BadEndpoint { .. }
            | Self::ReadFile { .. }
            | Self::BadOption { .. }
            | Self::Prefix(_)
            | Self::Name(_) => EXIT_USAGE,
            _ => EXIT_RUNTIME,
        }
    }

    /// Whether retrying the same operation later can succeed without an operator's help.
    ///
    /// Credentials, permissions and configuration do not fix themselves; a dead endpoint, a lost
    /// lease or a failed request may.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::LeaseNotFound { .. } | Self::Request { .. }
        )
    }
}
