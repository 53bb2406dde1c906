//! The single owner of `waitpid`: reaps every child of the process, orphans included, and hands
//! each exit status to whoever waits for that pid.
//!
//! Guarantees:
//! - Nothing else in the crate waits for children, and nothing else in the process may (no
//!   `tokio::process`, no `std::process::Child::wait`): a second waiter would steal statuses.
//! - A child registered here always gets its status, even when it exits before the spawner has
//!   returned: spawning and reaping take the same lock, so the reaper cannot collect a pid that
//!   is still being registered. Holding the lock across the spawn also keeps std's own
//!   `waitpid` on an exec failure from racing with us.
//! - A registered pid is not reused while its entry exists: the entry is removed only when the
//!   zombie is collected, and signals to a registered pid are sent under the lock.
//!
//! Statuses of pids nobody registered (orphans adopted by PID 1 or a subreaper) are logged at
//! debug level and dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::unistd::Pid;
use tokio::sync::{Notify, watch};
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{debug, warn};

use crate::status::ExitStatus;
use crate::sys;

/// How often the reaper looks for zombies even without a SIGCHLD, as a guard against a lost
/// wake-up; SIGCHLD is the normal trigger.
const SAFETY_TICK: Duration = Duration::from_secs(1);

/// Exit-status senders of the children that are registered and not yet reaped.
pub(crate) type Waiters = HashMap<Pid, watch::Sender<Option<ExitStatus>>>;

/// The pid table shared by spawners, child handles and the reaper.
#[derive(Debug, Default)]
pub(crate) struct Table {
    waiters: Mutex<Waiters>,
}

impl Table {
    /// Locks the table. A panic while it was held cannot leave the map half-updated (every
    /// operation is a single insert or remove), so a poisoned lock is still usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What one pass over `waitpid` found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReapState {
    /// Number of passes so far, so a caller can wait for a pass newer than the one it saw.
    pub(crate) passes: u64,
    /// False once `waitpid` said there are no children left at all (ECHILD).
    pub(crate) children_left: bool,
}

/// The reaper's periodic wake-up. Made by the caller inside the runtime, so a runtime without a
/// time driver fails there and not in the background task.
pub(crate) fn safety_tick() -> Interval {
    let mut tick = tokio::time::interval(SAFETY_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// The reaper's side: the table it serves, the state it publishes and its wake-up.
#[derive(Debug)]
pub(crate) struct Reaper {
    pub(crate) table: Arc<Table>,
    pub(crate) state: watch::Sender<ReapState>,
    pub(crate) kick: Notify,
}

impl Reaper {
    pub(crate) fn new(table: Arc<Table>) -> Self {
        let (state, _) = watch::channel(ReapState {
            passes: 0,
            children_left: true,
        });
        Self {
            table,
            state,
            kick: Notify::new(),
        }
    }

    /// Runs until SIGCHLD delivery stops (runtime shutdown): a pass on every SIGCHLD, every
    /// [`safety_tick`] and every [`Reaper::kick`].
    pub(crate) async fn run(
        self: Arc<Self>,
        mut sigchld: tokio::signal::unix::Signal,
        mut tick: Interval,
    ) {
        loop {
            self.pass();
            tokio::select! {
                delivered = sigchld.recv() => if delivered.is_none() { break },
                _ = tick.tick() => {}
                () = self.kick.notified() => {}
            }
        }
        debug!("SIGCHLD stream ended; reaper stopped");
    }

    /// Reaps every child that has ended, then publishes whether any are left.
    pub(crate) fn pass(&self) {
        let children_left = reap_all(&mut self.table.lock());
        self.state.send_modify(|state| {
            state.passes += 1;
            state.children_left = children_left;
        });
    }

    /// Waits, up to `limit`, until a pass started after this call finds no children at all.
    /// Returns false on timeout.
    pub(crate) async fn wait_no_children(&self, limit: Duration) -> bool {
        let mut state = self.state.subscribe();
        let seen = state.borrow_and_update().passes;
        self.kick.notify_one();
        let none_left = state.wait_for(|s| s.passes > seen && !s.children_left);
        matches!(tokio::time::timeout(limit, none_left).await, Ok(Ok(_)))
    }
}

/// Collects every zombie and dispatches its status. Returns whether children remain.
fn reap_all(waiters: &mut Waiters) -> bool {
    loop {
        match sys::reap_one_nohang() {
            Ok(Some((pid, raw))) => dispatch(waiters, pid, raw),
            Ok(None) => return true,
            Err(Errno::ECHILD) => return false,
            Err(Errno::EINTR) => {}
            Err(error) => {
                // Only EINVAL is documented besides the two above, and our arguments are fixed.
                warn!(%error, "waitpid failed; will retry on the next SIGCHLD or tick");
                return true;
            }
        }
    }
}

fn dispatch(waiters: &mut Waiters, pid: Pid, raw: i32) {
    let Some(status) = ExitStatus::from_raw(raw) else {
        debug!(pid = pid.as_raw(), raw, "ignoring non-terminal wait status");
        return;
    };
    match waiters.remove(&pid) {
        Some(sender) => {
            debug!(pid = pid.as_raw(), %status, "child exited");
            // send_replace: the value must stick even when no receiver is alive right now.
            sender.send_replace(Some(status));
        }
        None => debug!(pid = pid.as_raw(), %status, "reaped orphan"),
    }
}
