//! peerkeep-supervise: running child processes correctly as PID 1 or as a subreaper.
//!
//! This crate owns everything about the lifecycle of child processes for `peerkeep-agent` (the
//! node daemon) and `lb-config-gen` (HAProxy and `haproxy -c`):
//!
//! - **Signals first.** [`Supervisor::new`] installs handlers for SIGCHLD, TERM, INT, HUP,
//!   USR1, USR2, QUIT and WINCH before anything is spawned: as PID 1, the kernel drops signals
//!   that have no handler. HUP/USR1/USR2/QUIT/WINCH are forwarded to the main child
//!   ([`Supervisor::forward_to`]); TERM/INT are never forwarded but delivered to the owner as
//!   [`ShutdownRequests`], because the agent decides the shutdown sequence.
//! - **One `waitpid` owner.** A reaper task, woken by SIGCHLD and a safety tick, reaps every
//!   child, orphans included, and hands each status to the [`ChildHandle`]s of that pid. Unless
//!   it is PID 1, the process becomes a child subreaper so orphans come to it.
//! - **Clean children.** [`Supervisor::spawn`] uses `std::process::Command` in a new process
//!   group; the child starts with an empty signal mask and default dispositions. Exec failures
//!   map to 127 (not found) and 126 (not executable) via [`SpawnError::exit_code`].
//! - **Stopping with a deadline.** [`Supervisor::stop`] sends a signal and SIGCONT to the
//!   child's group, waits up to a timeout (cut short by a `skip` future, e.g. a second TERM),
//!   then SIGKILLs the group. [`Supervisor::sweep`] terminates everything left, only as PID 1.
//! - **Exit codes.** [`ExitStatus::to_exit_code`] gives the code or 128 + signal.
//!
//! It must not share the process with anything else that waits for children: no
//! `tokio::process`, no `std::process::Child::wait`. Those would steal exit statuses from the
//! reaper (and see `ECHILD`). Run helper commands through [`Supervisor::run_output`] instead.
//!
//! `unsafe` is confined to one small private module (`sys`): a raw `waitpid` that keeps the pid
//! of a child killed by any signal, and a `pre_exec` hook that clears the child's signal mask
//! (std does not). The reasons are documented there.

mod child;
mod error;
mod reaper;
mod run;
mod signals;
mod status;
mod stop;
mod supervisor;
mod sys;

pub use child::ChildHandle;
pub use error::{RunError, SpawnError, SuperviseError};
pub use run::Output;
pub use signals::{FORWARDED, SHUTDOWN, ShutdownRequest, ShutdownRequests};
pub use status::ExitStatus;
pub use stop::{StopOutcome, SweepOutcome};
pub use supervisor::Supervisor;

/// Re-exported so callers name signals with the same type this crate uses.
pub use nix::sys::signal::Signal;

/// True when this process is PID 1 of its pid namespace (a container's entrypoint).
pub fn is_pid1() -> bool {
    nix::unistd::getpid().as_raw() == 1
}
