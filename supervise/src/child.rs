//! A handle on one supervised child: its pid, its exit status once the reaper has it, and
//! signals that cannot hit a recycled pid.

use std::fmt;
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::reaper::Table;
use crate::status::ExitStatus;

/// A supervised child, made by [`Supervisor::spawn`](crate::Supervisor::spawn).
///
/// Cheap to clone; every clone sees the same exit status, and any number of tasks may
/// [`wait`](ChildHandle::wait) at once. Dropping handles neither kills nor detaches the child:
/// the reaper collects it regardless. The child leads its own process group (pgid = pid).
#[derive(Clone)]
pub struct ChildHandle {
    pid: Pid,
    status: watch::Receiver<Option<ExitStatus>>,
    table: Arc<Table>,
}

impl fmt::Debug for ChildHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildHandle")
            .field("pid", &self.pid.as_raw())
            .field("status", &self.try_status())
            .finish()
    }
}

impl ChildHandle {
    pub(crate) fn new(
        pid: Pid,
        status: watch::Receiver<Option<ExitStatus>>,
        table: Arc<Table>,
    ) -> Self {
        Self { pid, status, table }
    }

    /// The child's pid, which is also its process group id.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits until the reaper has collected the child and returns how it ended. Cancel-safe:
    /// dropping the future loses nothing, the status stays with the handle.
    pub async fn wait(&self) -> ExitStatus {
        let mut status = self.status.clone();
        loop {
            if let Some(ended) = *status.borrow_and_update() {
                return ended;
            }
            if status.changed().await.is_err() {
                // The sender is dropped only after storing a status (seen above) or together
                // with the table, which this handle keeps alive: this is reached only while the
                // runtime tears the reaper down, when there is nothing left to report.
                return std::future::pending().await;
            }
        }
    }

    /// The exit status if the child has already been reaped.
    pub fn try_status(&self) -> Option<ExitStatus> {
        *self.status.borrow()
    }

    /// Sends `signal` to the child process only. Fails with `ESRCH` once it has been reaped:
    /// the check and the `kill` happen under the reaper's lock, so the pid cannot have been
    /// recycled for another process in between.
    pub fn signal(&self, signal: Signal) -> Result<(), Errno> {
        let waiters = self.table.lock();
        if !waiters.contains_key(&self.pid) {
            return Err(Errno::ESRCH);
        }
        kill(self.pid, signal)
    }

    /// Sends `signal` to the child's whole process group, which outlives the child while any of
    /// its members live. Fails with `ESRCH` when the group is empty.
    pub fn signal_group(&self, signal: Signal) -> Result<(), Errno> {
        killpg(self.pid, signal)
    }

    /// Whether any process is left in the child's process group, zombies not yet reaped
    /// included (the kernel keeps a group's id out of reuse for as long as that is true).
    pub(crate) fn group_alive(&self) -> bool {
        killpg(self.pid, None).is_ok()
    }
}
