//! The binary's errors and their exit codes (DESIGN.md: 1 runtime, 3 config file invalid,
//! 5 etcd unreachable where required).

use crate::config::ConfigError;
use crate::haproxy::files::FileError;

/// Why a command stopped.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The TOML file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The registry failed (unreachable, bad options).
    #[error(transparent)]
    Registry(#[from] peerkeep_registry::RegistryError),
    /// Installing the configuration failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// HAProxy exited; the code is what this process exits with.
    #[error("haproxy exited (exit code {0})")]
    HaproxyExited(i32),
    /// Anything else at run time.
    #[error("{0}")]
    Runtime(String),
}

impl LbError {
    /// The exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => 3,
            Self::File(FileError::Rejected { .. } | FileError::SingleFileMount { .. }) => 3,
            Self::Registry(e) => i32::from(e.exit_code()),
            Self::HaproxyExited(code) => *code,
            Self::File(_) | Self::Runtime(_) => 1,
        }
    }
}
