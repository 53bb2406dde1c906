//! `RunError`: why `peerkeep-agent run` ended without a daemon status to pass on, and the
//! exit code each cause maps to (DESIGN.md's table).

use peerkeep_registry::RegistryError;
use peerkeep_supervise::{SpawnError, SuperviseError};

use crate::adapter::ConfigError;
use crate::addresses::AddressError;
use crate::endpoints::EndpointSpecError;
use crate::health::server::BindError;

/// Why `run` ended without a daemon status to pass on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Signal handling or the reaper could not be set up.
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    /// No usable node id.
    #[error("node id: {0} (pass --node-id / PEERKEEP_NODE_ID; the default is the host name)")]
    NodeId(String),
    /// An address could not be resolved.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// An `--endpoint` is unusable.
    #[error("--endpoint: {0}")]
    Endpoint(String),
    /// A flag value that parses but cannot work (exit 2).
    #[error("{flag}: {reason}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// What is wrong and what would work.
        reason: String,
    },
    /// Nothing to run after `--` (clap requires it; only a caller bug gets here).
    #[error("no daemon given after --")]
    NoDaemon,
    /// The health listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The daemon could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The node adapter's configuration is unusable (exit 3).
    #[error(transparent)]
    Adapter(#[from] ConfigError),
    /// etcd options are unusable, or the registration ended (id taken: exit 4).
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl RunError {
    /// The exit code of DESIGN.md's table.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Spawn(e) => e.exit_code(),
            Self::Registry(e) => i32::from(e.exit_code()),
            Self::Endpoint(_) | Self::NoDaemon | Self::Flag { .. } => 2,
            Self::Adapter(_) => 3,
            _ => 1,
        }
    }
}

impl From<EndpointSpecError> for RunError {
    fn from(e: EndpointSpecError) -> Self {
        Self::Endpoint(e.to_string())
    }
}
