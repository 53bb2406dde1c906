//! Signal handling: handlers for everything PID 1 must catch, forwarding to the main child, and
//! TERM/INT turned into shutdown requests for the owner.
//!
//! Handlers are installed (with `sigaction`, through tokio) before anything is spawned, because
//! the kernel drops signals to PID 1 that have no handler. Children do not inherit them: `exec`
//! resets caught signals to their default (the spawner also clears the child's signal mask,
//! which std does not, and std restores SIGPIPE).
//! SIGCHLD is never ignored (`SIG_IGN` would make the kernel auto-reap and `waitpid` fail).
//!
//! tokio coalesces deliveries: two TERMs in quick succession may be seen as one request.

use std::sync::{Arc, Mutex, PoisonError};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::child::ChildHandle;
use crate::error::SuperviseError;

/// Signals passed on to the forwarding target as they arrive.
pub const FORWARDED: [Signal; 5] = [
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGQUIT,
    Signal::SIGWINCH,
];

/// Signals turned into [`ShutdownRequest`]s instead of being forwarded.
pub const SHUTDOWN: [Signal; 2] = [Signal::SIGTERM, Signal::SIGINT];

/// The signal streams, registered up front; the handlers stay installed for the process' life.
pub(crate) struct Streams {
    pub(crate) chld: tokio::signal::unix::Signal,
    pub(crate) shutdown: Vec<(Signal, tokio::signal::unix::Signal)>,
    pub(crate) forwarded: Vec<(Signal, tokio::signal::unix::Signal)>,
}

impl Streams {
    /// Installs handlers for SIGCHLD, [`SHUTDOWN`] and [`FORWARDED`]. Must run in a runtime.
    pub(crate) fn install() -> Result<Self, SuperviseError> {
        let register = |sig: Signal| {
            signal(SignalKind::from_raw(sig as i32))
                .map(|stream| (sig, stream))
                .map_err(|source| SuperviseError::Signal {
                    signal: sig.as_str(),
                    source,
                })
        };
        let (_, chld) = register(Signal::SIGCHLD)?;
        let shutdown = SHUTDOWN
            .into_iter()
            .map(register)
            .collect::<Result<_, _>>()?;
        let forwarded = FORWARDED
            .into_iter()
            .map(register)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            chld,
            shutdown,
            forwarded,
        })
    }
}

/// The child that receives forwarded signals, if any.
pub(crate) type ForwardTarget = Arc<Mutex<Option<ChildHandle>>>;

/// Shutdown requests seen so far.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ShutdownState {
    count: u32,
    last: Option<Signal>,
}

/// Delivers TERM/INT as shutdown requests and forwards the rest until the streams end.
pub(crate) async fn dispatch(
    shutdown: Vec<(Signal, tokio::signal::unix::Signal)>,
    forwarded: Vec<(Signal, tokio::signal::unix::Signal)>,
    requests: watch::Sender<ShutdownState>,
    target: ForwardTarget,
) {
    // One small task per stream funnels arrivals into one queue, so they are handled in order
    // by a single loop; the JoinSet aborts them if this task ends.
    let mut arrivals = tokio::task::JoinSet::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (sig, mut stream) in shutdown.into_iter().chain(forwarded) {
        let tx = tx.clone();
        arrivals.spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    while let Some(sig) = rx.recv().await {
        if SHUTDOWN.contains(&sig) {
            requests.send_modify(|state| {
                state.count += 1;
                state.last = Some(sig);
            });
            info!(signal = %sig, count = requests.borrow().count, "shutdown requested");
        } else {
            forward(&target, sig);
        }
    }
}

fn forward(target: &ForwardTarget, sig: Signal) {
    let child = target
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let Some(child) = child else {
        debug!(signal = %sig, "no forwarding target; signal dropped");
        return;
    };
    match child.signal(sig) {
        Ok(()) => debug!(signal = %sig, pid = child.pid().as_raw(), "signal forwarded"),
        Err(Errno::ESRCH) => debug!(signal = %sig, "forwarding target already exited"),
        Err(error) => warn!(signal = %sig, pid = child.pid().as_raw(), %error, "forwarding failed"),
    }
}

/// One shutdown request: the signal that made it and how many requests came so far (1 for the
/// first, 2 for the second...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownRequest {
    /// SIGTERM or SIGINT.
    pub signal: Signal,
    /// Requests received so far, this one included.
    pub count: u32,
}

/// TERM and INT received by the process, counted, for the owner to decide the shutdown
/// sequence. Cheap to clone; every clone sees every request.
///
/// The usual pattern: `requests.at_least(1)` starts the shutdown, `requests.at_least(2)` is the
/// `skip` future that cuts waits short.
#[derive(Clone, Debug)]
pub struct ShutdownRequests {
    rx: watch::Receiver<ShutdownState>,
}

impl ShutdownRequests {
    pub(crate) fn new(rx: watch::Receiver<ShutdownState>) -> Self {
        Self { rx }
    }

    /// Resolves once at least `n` requests have arrived since the supervisor was created, with
    /// the latest one (`n = 0` is taken as 1). Never resolves if the runtime shuts the signal
    /// task down first.
    pub async fn at_least(&self, n: u32) -> ShutdownRequest {
        let n = n.max(1);
        let mut rx = self.rx.clone();
        let latest = match rx.wait_for(|state| state.count >= n).await {
            Ok(state) => state.last.map(|signal| ShutdownRequest {
                signal,
                count: state.count,
            }),
            Err(_) => None,
        };
        match latest {
            Some(request) => request,
            // A count of at least 1 always comes with `last` set, so this is the closed
            // channel: the runtime is going away and no request will ever come.
            None => std::future::pending().await,
        }
    }

    /// How many requests have arrived so far.
    pub fn received(&self) -> u32 {
        self.rx.borrow().count
    }
}
