//! Ending children: [`Supervisor::stop`] for one child with a deadline — and whatever is left of
//! its process group once it has exited — and [`Supervisor::sweep`] for everything left when
//! PID 1 exits.

use std::future::Future;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use crate::child::ChildHandle;
use crate::status::ExitStatus;
use crate::supervisor::Supervisor;

/// How long to wait for processes to disappear after SIGKILL. Only a process stuck in
/// uninterruptible sleep outlives SIGKILL; the container runtime's own kill is the backstop.
const AFTER_KILL: Duration = Duration::from_secs(5);
/// How long members of the child's process group may outlive the child before SIGKILL. They
/// got the stop signal together with the child, so this is only a short courtesy.
const GROUP_GRACE: Duration = Duration::from_secs(2);
/// How often to look whether the child's process group is empty.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// How [`Supervisor::stop`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopOutcome {
    /// How the child ended.
    pub status: ExitStatus,
    /// True when the deadline passed (or was skipped) and SIGKILL was sent to the group.
    pub killed: bool,
}

/// How [`Supervisor::sweep`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepOutcome {
    /// Not PID 1: signalling every process would reach far beyond our own, so nothing was done.
    Skipped,
    /// Every remaining process exited after SIGTERM within the grace period.
    Exited,
    /// SIGKILL was needed; `remaining` is true if children were still left after it.
    Killed {
        /// Children were still present 5 s after SIGKILL (stuck in uninterruptible sleep).
        remaining: bool,
    },
}

impl Supervisor {
    /// Stops `child`: sends `signal` and SIGCONT (so a stopped process can act on it) to its
    /// process group, waits up to `timeout` for it to exit, and then sends SIGKILL to the group
    /// and waits for the reaper to collect it. `skip` (typically a second shutdown request)
    /// cuts the wait short. A child that has already exited is returned as is.
    ///
    /// Either way, stop returns only once the child's process group is empty: members that
    /// outlive the child (helpers it forked, background jobs) get SIGTERM and SIGCONT, and
    /// SIGKILL after a short grace (2 s). Outside PID 1 there is no sweep, so they would
    /// otherwise outlive their supervisor, orphaned. The outcome describes the child only.
    ///
    /// The wait after SIGKILL is unbounded: only the kernel can keep a process alive past it.
    pub async fn stop<F: Future>(
        &self,
        child: &ChildHandle,
        signal: Signal,
        timeout: Duration,
        skip: F,
    ) -> StopOutcome {
        let pid = child.pid().as_raw();
        if let Some(status) = child.try_status() {
            end_group(child).await;
            return StopOutcome {
                status,
                killed: false,
            };
        }
        info!(pid, %signal, ?timeout, "stopping child");
        for sig in [signal, Signal::SIGCONT] {
            send_to_group(child, sig);
        }
        let ended = tokio::select! {
            biased;
            status = child.wait() => Some(status),
            () = tokio::time::sleep(timeout) => {
                warn!(pid, ?timeout, "child did not stop in time; killing its process group");
                None
            }
            _ = skip => {
                warn!(pid, "stop wait skipped; killing its process group");
                None
            }
        };
        if let Some(status) = ended {
            info!(pid, %status, "child stopped");
            end_group(child).await;
            return StopOutcome {
                status,
                killed: false,
            };
        }
        send_to_group(child, Signal::SIGKILL);
        let status = child.wait().await;
        warn!(pid, %status, "child killed (unclean stop)");
        end_group(child).await;
        StopOutcome {
            status,
            killed: true,
        }
    }

    /// Ends every other process in the container, for PID 1 on its way out: SIGTERM and SIGCONT
    /// to all (`kill(-1)`), up to `grace` for them to exit, then SIGKILL, reaping all of them.
    ///
    /// Does nothing unless this process is PID 1: elsewhere `kill(-1)` would reach every process
    /// the user may signal.
    pub async fn sweep(&self, grace: Duration) -> SweepOutcome {
        if !crate::is_pid1() {
            debug!("not PID 1; sweep skipped");
            return SweepOutcome::Skipped;
        }
        for sig in [Signal::SIGTERM, Signal::SIGCONT] {
            send_to_all(sig);
        }
        if self.reaper().wait_no_children(grace).await {
            debug!("all processes exited after SIGTERM");
            return SweepOutcome::Exited;
        }
        warn!(
            ?grace,
            "processes left after the grace period; sending SIGKILL to all"
        );
        send_to_all(Signal::SIGKILL);
        let remaining = !self.reaper().wait_no_children(AFTER_KILL).await;
        if remaining {
            warn!("children still present after SIGKILL");
        }
        SweepOutcome::Killed { remaining }
    }
}

/// Ends what is left of `child`'s process group after the child itself has been reaped:
/// SIGTERM and SIGCONT, up to [`GROUP_GRACE`] to exit, then SIGKILL and up to [`AFTER_KILL`].
///
/// Only the child's own group is signalled, never anything else, so this is safe outside PID 1.
/// The group keeps its id for as long as it has a member (zombies included, and orphaned members
/// come to our reaper as subreaper or PID 1), and the signals stop once it is empty, so they
/// cannot reach a process that merely reused the number.
async fn end_group(child: &ChildHandle) {
    if !child.group_alive() {
        return;
    }
    let pid = child.pid().as_raw();
    info!(
        pid,
        grace = ?GROUP_GRACE,
        "the child has exited but members of its process group remain; stopping them"
    );
    for sig in [Signal::SIGTERM, Signal::SIGCONT] {
        send_to_group(child, sig);
    }
    if group_gone(child, GROUP_GRACE).await {
        return;
    }
    warn!(pid, grace = ?GROUP_GRACE, "members of the child's process group outlived it; killing them");
    send_to_group(child, Signal::SIGKILL);
    if !group_gone(child, AFTER_KILL).await {
        warn!(
            pid,
            "members of the child's process group still present after SIGKILL"
        );
    }
}

/// Waits up to `limit` for `child`'s process group to be empty; true when it is.
async fn group_gone(child: &ChildHandle, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    loop {
        if !child.group_alive() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}

fn send_to_group(child: &ChildHandle, sig: Signal) {
    match child.signal_group(sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => warn!(pid = child.pid().as_raw(), %sig, %error, "signalling group failed"),
    }
}

fn send_to_all(sig: Signal) {
    match kill(Pid::from_raw(-1), sig) {
        // ESRCH: there is no other process.
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => warn!(%sig, %error, "signalling all processes failed"),
    }
}
