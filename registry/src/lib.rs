//! peerkeep-registry: the etcd schema of peerkeep and everything that reads or writes it.
//!
//! This crate is the only place that knows etcd keys and the record encoding. Agents and the load
//! balancer see typed values — [`NodeId`], [`Endpoint`], [`NodeRecord`], [`MembershipSnapshot`] —
//! never raw keys or JSON, so that nothing read from etcd reaches a config file or a command line
//! without having passed [`NodeRecord::parse`] and the [`AddressPolicy`].
//!
//! - [`names`], [`endpoint`], [`record`]: typed values whose constructors enforce the schema.
//! - [`keys`]: the key layout.
//! - [`view`]: a validated snapshot of one cluster, plain data.
//! - [`membership`]: the watched view ([`Membership`]) and one-shot reads ([`read_once`]).
//! - [`control`]: operator control keys (drain) and node removal.
//! - [`discovery`]: the read-only HTTP discovery API served from a watched view.
//! - [`connect`]: the etcd connection ([`Etcd`]) with bounded retries and deferred auth;
//!   [`error`]: [`RegistryError`] and the exit codes it maps to.
//! - [`registration`]: a node's lease-owned record and slot, kept alive in the background.
//! - [`cli_args`], [`logging`]: the etcd flags and log set-up shared by all binaries.
//! - [`cli`]: the `peerkeep` command line (the binary is a thin shell over it).

#![forbid(unsafe_code)]

pub mod cli;
pub mod cli_args;
pub mod connect;
pub mod control;
pub mod discovery;
pub mod endpoint;
pub mod error;
pub mod keys;
pub mod logging;
pub mod membership;
pub mod names;
pub mod record;
pub mod registration;
pub mod view;

pub use cli_args::EtcdArgs;
pub use connect::{Credentials, Etcd, EtcdOptions, TlsFiles, connect};
pub use endpoint::{AddressPolicy, AddressRejected, Endpoint, EndpointError};
pub use error::RegistryError;
pub use keys::{DEFAULT_PREFIX, Keyspace};
pub use membership::{Membership, list_clusters, read_once};
pub use names::{ClusterName, EndpointName, NameError, NodeId, Slot};
pub use record::{MAX_RECORD_BYTES, NodeRecord, NodeState, RecordError};
pub use registration::{
    NodeInfo, Registration, RegistrationConfig, RegistrationEvent, RegistrationState,
    RegistrationStatus,
};
pub use view::{MembershipSnapshot, SkippedRecord};
