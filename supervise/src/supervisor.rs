//! [`Supervisor`]: installs signal handling and the reaper, spawns children, and routes signals.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};

use nix::unistd::Pid;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::child::ChildHandle;
use crate::error::{SpawnError, SuperviseError};
use crate::reaper::{Reaper, Table};
use crate::signals::{self, ForwardTarget, ShutdownRequests, ShutdownState, Streams};

/// Set while a reaper runs in this process; a second one would steal exit statuses.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Clears [`RUNNING`] when the reaper task is dropped (runtime shutdown).
struct RunningGuard;

impl Drop for RunningGuard {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::SeqCst);
    }
}

/// Process supervision for PID 1 or a subreaper: the one owner of `waitpid`, signal forwarding,
/// shutdown requests and stopping with a deadline.
///
/// Create it first thing inside the runtime, before spawning anything. Clones share one
/// supervisor. Its reaper and signal tasks live as long as the runtime, not as long as the
/// handle: children must be reaped whoever still holds one.
///
/// ```no_run
/// use std::process::Command;
/// use std::time::Duration;
///
/// use nix::sys::signal::Signal;
/// use peerkeep_supervise::Supervisor;
///
/// # async fn run() -> Result<i32, Box<dyn std::error::Error>> {
/// let sup = Supervisor::new()?;
/// let requests = sup.shutdown_requests();
/// let daemon = sup.spawn(Command::new("litecoind").arg("-regtest"))?;
/// sup.forward_to(&daemon); // HUP, USR1, USR2, QUIT, WINCH go to the daemon
///
/// let status = tokio::select! {
///     status = daemon.wait() => status,
///     _ = requests.at_least(1) => {
///         // A second TERM/INT skips the rest of the grace period.
///         let skip = requests.at_least(2);
///         let outcome = sup.stop(&daemon, Signal::SIGTERM, Duration::from_secs(10), skip).await;
///         sup.sweep(Duration::from_secs(2)).await;
///         outcome.status
///     }
/// };
/// Ok(status.to_exit_code())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    reaper: Arc<Reaper>,
    forward: ForwardTarget,
    requests: watch::Receiver<ShutdownState>,
}

impl Supervisor {
    /// Installs handlers for SIGCHLD, TERM, INT and the forwarded signals, becomes a child
    /// subreaper unless this is PID 1, and starts the reaper. Must be called inside a tokio
    /// runtime, before any child is spawned.
    ///
    /// Only one supervisor may run per process at a time ([`SuperviseError::AlreadyRunning`]);
    /// share it by cloning.
    ///
    /// # Panics
    ///
    /// If the runtime was built without its IO or time driver (use `enable_all`), as tokio's
    /// signal and timer constructors do; here rather than later in a background task.
    pub fn new() -> Result<Self, SuperviseError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SuperviseError::NoRuntime)?;
        if RUNNING.swap(true, Ordering::SeqCst) {
            return Err(SuperviseError::AlreadyRunning);
        }
        let guard = RunningGuard;
        let streams = Streams::install()?;
        let safety_tick = crate::reaper::safety_tick();
        if !crate::is_pid1() {
            nix::sys::prctl::set_child_subreaper(true).map_err(SuperviseError::Subreaper)?;
        }

        let reaper = Arc::new(Reaper::new(Arc::new(Table::default())));
        let forward = ForwardTarget::default();
        let (requests_tx, requests) = watch::channel(ShutdownState::default());
        let Streams {
            chld,
            shutdown,
            forwarded,
        } = streams;
        runtime.spawn({
            let reaper = Arc::clone(&reaper);
            async move {
                let _guard = guard;
                reaper.run(chld, safety_tick).await;
            }
        });
        runtime.spawn(signals::dispatch(
            shutdown,
            forwarded,
            requests_tx,
            Arc::clone(&forward),
        ));
        info!(pid1 = crate::is_pid1(), "supervisor started");
        Ok(Self {
            inner: Arc::new(Inner {
                reaper,
                forward,
                requests,
            }),
        })
    }

    /// Starts `cmd` as a supervised child in a new process group of its own (any
    /// `process_group` set on `cmd` is replaced), so a terminal's Ctrl-C reaches only this
    /// process, which decides what the child gets. The terminal is deliberately not handed to
    /// the child (unlike tini): a daemon does not read it, and the owner must see the Ctrl-C to
    /// drain first. A child that does read a terminal would be stopped by SIGTTIN. The child starts with an empty signal mask,
    /// and every signal this process handles (the supervisor's included) at its default
    /// disposition; signals ignored by whoever started this process stay ignored, as `nohup`
    /// expects, except SIGPIPE, which Rust ignores and std restores.
    ///
    /// Its stdio is whatever `cmd` says, but piped ends are closed here: use
    /// [`Supervisor::run_output`] to capture output.
    pub fn spawn(&self, cmd: &mut Command) -> Result<ChildHandle, SpawnError> {
        self.spawn_std(cmd).map(|(handle, _child)| handle)
    }

    /// Spawns and registers under the table lock, so the reaper cannot collect the child (or
    /// race std's own wait on an exec failure) before it is registered. Returns the std
    /// `Child` for its pipes only; it must never be waited on.
    pub(crate) fn spawn_std(
        &self,
        cmd: &mut Command,
    ) -> Result<(ChildHandle, std::process::Child), SpawnError> {
        cmd.process_group(0);
        crate::sys::clear_signal_mask_in_child(cmd);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let table = &self.inner.reaper.table;
        let mut waiters = table.lock();
        let child = cmd
            .spawn()
            .map_err(|source| SpawnError::from_spawn(program.clone(), source))?;
        // A pid always fits pid_t: the kernel caps pid_max at 2^22.
        let pid = Pid::from_raw(child.id() as i32);
        let (status_tx, status_rx) = watch::channel(None);
        waiters.insert(pid, status_tx);
        drop(waiters);
        debug!(pid = pid.as_raw(), program, "spawned child");
        Ok((ChildHandle::new(pid, status_rx, Arc::clone(table)), child))
    }

    /// Makes `child` the target of forwarded HUP, USR1, USR2, QUIT and WINCH, replacing any
    /// previous target.
    ///
    /// Forwarded signals go to the child's pid, not its process group: the main child owns the
    /// meaning of those signals and relays them itself where that is right (HAProxy's master
    /// reloads on USR2, while USR1 to its workers would soft-stop them). Stopping, by contrast,
    /// signals the whole group ([`Supervisor::stop`]).
    pub fn forward_to(&self, child: &ChildHandle) {
        let mut target = self
            .inner
            .forward
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *target = Some(child.clone());
    }

    /// The TERM/INT requests this process receives. They are never forwarded: the owner
    /// decides the shutdown sequence. Requests are counted from [`Supervisor::new`], so one that
    /// arrives before this call is not lost.
    pub fn shutdown_requests(&self) -> ShutdownRequests {
        ShutdownRequests::new(self.inner.requests.clone())
    }

    pub(crate) fn reaper(&self) -> &Reaper {
        &self.inner.reaper
    }
}
