//! Errors, each carrying what a person needs to act on it (which program, which timeout).

use std::io;
use std::time::Duration;

use nix::errno::Errno;

/// Setting up the supervisor failed.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// [`Supervisor::new`](crate::Supervisor::new) was called outside a tokio runtime.
    #[error("the supervisor must be created inside a tokio runtime")]
    NoRuntime,
    /// Another supervisor already owns `waitpid` in this process.
    #[error(
        "a supervisor is already running in this process; only one may own waitpid(-1), \
         share it by cloning instead"
    )]
    AlreadyRunning,
    /// Installing a signal handler failed.
    #[error("cannot install a handler for {signal}: {source}")]
    Signal {
        /// The signal's name.
        signal: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// `prctl(PR_SET_CHILD_SUBREAPER)` failed, so orphans would escape the supervisor.
    #[error("cannot become a child subreaper (prctl PR_SET_CHILD_SUBREAPER): {0}")]
    Subreaper(#[source] Errno),
}

/// Starting a child failed. [`SpawnError::exit_code`] gives the code to exit with, by the
/// shell's convention (127 not found, 126 not executable).
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program (or the interpreter named on its `#!` line) does not exist.
    #[error("cannot run {program}: not found (or its #! interpreter is missing): {source}")]
    NotFound {
        /// The program as given to the command.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The program exists but cannot be executed (permissions, not an executable format, a
    /// directory).
    #[error("cannot run {program}: not executable: {source}")]
    NotExecutable {
        /// The program as given to the command.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Anything else: no process could be made (resource limits, memory) or setup failed.
    #[error("cannot start {program}: {source}")]
    Other {
        /// The program as given to the command.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl SpawnError {
    /// Classifies the error `Command::spawn` returned for `program`.
    pub(crate) fn from_spawn(program: String, source: io::Error) -> Self {
        match source.raw_os_error().map(Errno::from_raw) {
            Some(Errno::ENOENT) => Self::NotFound { program, source },
            Some(
                Errno::EACCES | Errno::EPERM | Errno::ENOEXEC | Errno::EISDIR | Errno::ETXTBSY,
            ) => Self::NotExecutable { program, source },
            _ => Self::Other { program, source },
        }
    }

    /// 127 when not found, 126 when not executable, 1 for other failures (a runtime error, by
    /// the project's exit-code table, since the program itself was never at fault).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotFound { .. } => 127,
            Self::NotExecutable { .. } => 126,
            Self::Other { .. } => 1,
        }
    }

    /// The program that could not be started.
    pub fn program(&self) -> &str {
        match self {
            Self::NotFound { program, .. }
            | Self::NotExecutable { program, .. }
            | Self::Other { program, .. } => program,
        }
    }
}

/// [`Supervisor::run_output`](crate::Supervisor::run_output) failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The command could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The command did not finish in time; its process group was killed.
    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The program that was run.
        program: String,
        /// The limit it exceeded.
        timeout: Duration,
    },
    /// Reading the command's output failed; its process group was killed.
    #[error("reading the output of {program}: {source}")]
    Io {
        /// The program that was run.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
}
