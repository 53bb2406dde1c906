//! `lb-config-gen run`: start HAProxy from the first membership view, then follow the view.
//!
//! The loop waits on five things: a new membership snapshot (debounced), the debounce or
//! postponed-reload timer, SIGHUP (re-read the TOML; an invalid file is refused and the running
//! one kept), TERM/INT (stop HAProxy cleanly, exit 0), and HAProxy exiting (exit non-zero: the
//! container must restart rather than run without a load balancer).
//!
//! While etcd is unreachable the view keeps its last content and is marked stale: nothing is
//! removed from HAProxy, and `/readyz` says the view is stale.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use peerkeep_registry::{AddressPolicy, Etcd, Keyspace, Membership, MembershipSnapshot, read_once};
use peerkeep_supervise::{ChildHandle, ExitStatus, Signal, Supervisor};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};

use crate::apply::{Applier, Limits, ModelBuilder, Outcome};
use crate::config::Config;
use crate::debounce::Debounce;
use crate::diff::emptied_backends;
use crate::error::LbError;
use crate::haproxy::{files, process};
use crate::health::{self, Shared};
use crate::model::{Model, build};
use crate::render::render;

/// How long HAProxy may take to answer on its master socket after start.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Retry delay when the empty-set guard cannot confirm an emptied backend.
const GUARD_RETRY: Duration = Duration::from_secs(1);

/// Everything `run` needs, already resolved from flags, environment and file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The TOML file (re-read on SIGHUP).
    pub config_path: PathBuf,
    /// Its validated content at start.
    pub config: Config,
    /// `--haproxy-bin`, overriding the file's `haproxy.bin`.
    pub haproxy_bin: Option<PathBuf>,
    /// The registry's cluster keys.
    pub keyspace: Keyspace,
    /// Address policy for records.
    pub policy: AddressPolicy,
    /// Health/metrics listen address.
    pub health_listen: SocketAddr,
    /// Quiet period before applying.
    pub min_wait: Duration,
    /// Longest delay of a pending change.
    pub max_wait: Duration,
    /// Reload limits.
    pub limits: Limits,
    /// Grace period for HAProxy's soft stop on TERM.
    pub stop_timeout: Duration,
}

impl RunOptions {
    fn bin(&self, config: &Config) -> PathBuf {
        self.haproxy_bin
            .clone()
            .unwrap_or_else(|| config.haproxy.bin.clone())
    }
}

/// Runs until TERM/INT (exit 0) or HAProxy's death (its exit code, at least 1).
pub async fn run(opts: RunOptions, etcd: Etcd) -> Result<i32, LbError> {
    let sup = Supervisor::new().map_err(|e| LbError::Runtime(e.to_string()))?;
    let requests = sup.shutdown_requests();
    let mut hup = signal(SignalKind::hangup()).map_err(|e| LbError::Runtime(e.to_string()))?;
    files::refuse_single_file_mount(opts.config.haproxy.config.as_path())?;

    let shared = Arc::new(Shared::default());
    health::serve(opts.health_listen, Arc::clone(&shared))
        .await
        .map_err(|e| LbError::Runtime(format!("health listener {}: {e}", opts.health_listen)))?;
    let membership = Membership::start(etcd.clone(), opts.keyspace.clone(), opts.policy);
    let mut rx = membership.subscribe();

    info!("waiting for the first membership view from etcd");
    let first = tokio::select! {
        snap = first_view(&mut rx) => snap?,
        _ = requests.at_least(1) => return Ok(0),
    };
    let (haproxy, mut applier) = start(&sup, &opts, &first, Arc::clone(&shared)).await?;
    record_view(&shared, &first);

    let mut debounce = Debounce::new(opts.min_wait, opts.max_wait);
    let mut retry_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let due = [debounce.due(), retry_at].into_iter().flatten().min();
        tokio::select! {
            status = haproxy.wait() => return Ok(haproxy_died(status)),
            _ = requests.at_least(1) => {
                info!("stopping haproxy (soft stop)");
                let out = sup.stop(&haproxy, Signal::SIGUSR1, opts.stop_timeout, requests.at_least(2)).await;
                info!(status = ?out.status, killed = out.killed, "haproxy stopped");
                // As PID 1, nothing may outlive us (old workers past their soft stop).
                sup.sweep(Duration::from_secs(2)).await;
                return Ok(0);
            }
            _ = hup.recv() => {
                if reload_config_file(&opts, &mut applier, &shared) {
                    debounce.urgent(Instant::now());
                }
            }
            changed = rx.changed() => {
                if changed.is_err() {
                    return Err(LbError::Runtime("membership watch ended".into()));
                }
                debounce.changed(Instant::now());
            }
            () = sleep_until(due.unwrap_or_else(far_future)), if due.is_some() => {
                debounce.clear();
                retry_at = None;
                let snap = rx.borrow_and_update().clone();
                record_view(&shared, &snap);
                match apply_view(&mut applier, &snap, &etcd, &opts).await {
                    Outcome::Postponed(at) => retry_at = Some(at),
                    Outcome::Failed | Outcome::Unchanged | Outcome::Runtime | Outcome::Reloaded => {}
                }
            }
            _ = tick.tick() => record_view(&shared, &rx.borrow()),
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

async fn first_view(
    rx: &mut watch::Receiver<Arc<MembershipSnapshot>>,
) -> Result<Arc<MembershipSnapshot>, LbError> {
    loop {
        let snap = rx.borrow_and_update().clone();
        if snap.initialized {
            return Ok(snap);
        }
        rx.changed()
            .await
            .map_err(|_| LbError::Runtime("membership watch ended".into()))?;
    }
}

/// Renders and installs the first configuration and starts HAProxy on it.
async fn start(
    sup: &Supervisor,
    opts: &RunOptions,
    snap: &MembershipSnapshot,
    shared: Arc<Shared>,
) -> Result<(ChildHandle, Applier), LbError> {
    let config = opts.config.clone();
    let bin = opts.bin(&config);
    let mut builder = ModelBuilder::new(Arc::clone(&shared));
    let model = builder.build(&config, snap, &Default::default());
    let cfg = render(&model);
    let h = &config.haproxy;
    files::install_config(sup, &bin, h.config.as_path(), cfg.as_bytes()).await?;
    // A state file left by an earlier run describes servers that may since have changed (it
    // would restore a slot's old maintenance state onto a new node): start from the file alone.
    if let Err(e) = std::fs::remove_file(h.state_file.as_path())
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(error = %e, path = %h.state_file, "could not remove an old server-state file");
    }
    let child = process::spawn(sup, &bin, h.config.as_path(), h.master_socket.as_path())
        .map_err(|e| LbError::Runtime(e.to_string()))?;
    info!(
        pid = child.pid().as_raw(),
        revision = snap.revision,
        "haproxy started"
    );
    let applier = Applier::new(
        sup.clone(),
        bin,
        config,
        model,
        opts.limits,
        Arc::clone(&shared),
        builder,
    );
    tokio::select! {
        ready = applier.master().wait_ready(START_TIMEOUT) => {
            ready.map_err(|e| LbError::Runtime(format!("haproxy did not come up: {e}")))?;
            shared.update(|s| s.started = true);
        }
        status = child.wait() => {
            return Err(LbError::HaproxyExited(haproxy_died(status)));
        }
    }
    Ok((child, applier))
}

/// Builds the desired model for `snap` (with the empty-set guard) and applies it.
async fn apply_view(
    applier: &mut Applier,
    snap: &MembershipSnapshot,
    etcd: &Etcd,
    opts: &RunOptions,
) -> Outcome {
    let mut desired = applier.desired(snap);
    let emptied = emptied_backends(applier.running(), &desired);
    if !emptied.is_empty() {
        // One revision emptying a backend is confirmed by a second, independent full read.
        match read_once(etcd, &opts.keyspace, opts.policy).await {
            Ok(fresh) => {
                desired = applier.desired(&fresh);
                let still: Vec<String> = emptied_backends(applier.running(), &desired)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                if !still.is_empty() {
                    warn!(backends = ?still, revision = fresh.revision, "emptying backends, confirmed by a second read");
                }
            }
            Err(e) => {
                warn!(error = %e, "not emptying backends: a second read could not confirm it");
                return Outcome::Postponed(Instant::now() + GUARD_RETRY);
            }
        }
    }
    applier.apply(desired).await
}

/// SIGHUP: re-reads the file. Returns whether a new configuration was taken.
fn reload_config_file(opts: &RunOptions, applier: &mut Applier, shared: &Shared) -> bool {
    let new = match Config::load(&opts.config_path) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "SIGHUP: configuration file refused; keeping the running one");
            shared.metrics.config_rejected.inc();
            return false;
        }
    };
    let old = &applier.config().haproxy;
    let fixed = [
        ("haproxy.config", old.config != new.haproxy.config),
        (
            "haproxy.master_socket",
            old.master_socket != new.haproxy.master_socket,
        ),
        (
            "haproxy.stats_socket",
            old.stats_socket != new.haproxy.stats_socket,
        ),
    ];
    if let Some((field, _)) = fixed.iter().find(|(_, changed)| *changed) {
        error!(
            field,
            "SIGHUP: changing this needs a restart; keeping the running configuration"
        );
        shared.metrics.config_rejected.inc();
        return false;
    }
    if new.etcd != applier.config().etcd {
        warn!("SIGHUP: [etcd] changes take effect at the next restart");
    }
    if &new == applier.config() {
        info!("SIGHUP: configuration file unchanged");
        return false;
    }
    info!("SIGHUP: new configuration file accepted");
    applier.set_config(new);
    true
}

fn record_view(shared: &Shared, snap: &MembershipSnapshot) {
    let m = &shared.metrics;
    m.view_revision.set(snap.revision);
    m.invalid_records
        .set(i64::try_from(snap.skipped.len()).unwrap_or(i64::MAX));
    let stale = snap.stale_for();
    m.view_stale_seconds
        .set(stale.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
    shared.update(|s| s.view_stale = stale.is_some());
}

fn haproxy_died(status: ExitStatus) -> i32 {
    error!(?status, "haproxy exited; stopping");
    match status.to_exit_code() {
        0 => 1,
        code => code,
    }
}

/// `render`: the configuration for `snap`.
pub fn render_for(config: &Config, snap: &MembershipSnapshot) -> String {
    let (model, _): (Model, _) = build(config, snap, &Default::default());
    render(&model).as_str().to_owned()
}
