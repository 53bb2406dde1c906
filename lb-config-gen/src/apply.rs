//! The applier: owns the running model and carries out [`diff`]'s verdicts against HAProxy.
//!
//! It is the only writer of the configuration file and the only sender of reloads and runtime
//! commands. Every failure leaves HAProxy and the file on disk as they were (the last good
//! state; after a reload HAProxy could not load, the running configuration is written back),
//! is logged with its reason, counted, and shown on `/readyz` until a later apply succeeds.
//! A runtime batch that HAProxy refuses falls back to a reload.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use peerkeep_registry::{MembershipSnapshot, NodeId};
use peerkeep_supervise::Supervisor;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{Config, ServiceName};
use crate::diff::{Apply, diff};
use crate::haproxy::files::{self, FileError};
use crate::haproxy::master::MasterCli;
use crate::haproxy::runtime_api::RuntimeApi;
use crate::haproxy::state_file;
use crate::health::Shared;
use crate::metrics::{BackendLabel, PathLabel, RELOAD, RUNTIME};
use crate::model::{Model, SkipReason, build};
use crate::probe;
use crate::render::{RenderedConfig, render};
use crate::runtime_cmd::RuntimeCommand;

/// What one apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// HAProxy already serves the desired state.
    Unchanged,
    /// Applied through the runtime API.
    Runtime,
    /// Applied by a confirmed reload.
    Reloaded,
    /// A reload is needed but the minimum interval has not passed: try again at this time.
    Postponed(Instant),
    /// Failed; HAProxy keeps the last good state.
    Failed,
}

/// Timing limits for applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// At most one reload per this interval.
    pub min_reload_interval: Duration,
    /// How long to wait for a reload to show a new worker.
    pub reload_timeout: Duration,
}

/// Owns the running state and applies changes.
pub struct Applier {
    sup: Supervisor,
    bin: PathBuf,
    config: Config,
    master: MasterCli,
    runtime: RuntimeApi,
    running: Model,
    last_reload: Instant,
    limits: Limits,
    shared: Arc<Shared>,
    builder: ModelBuilder,
}

impl Applier {
    /// Wraps a HAProxy that was started with `running`'s configuration.
    pub fn new(
        sup: Supervisor,
        bin: PathBuf,
        config: Config,
        running: Model,
        limits: Limits,
        shared: Arc<Shared>,
        builder: ModelBuilder,
    ) -> Self {
        let master = MasterCli::new(config.haproxy.master_socket.as_path().to_owned());
        let runtime = RuntimeApi::new(config.haproxy.stats_socket.as_path().to_owned());
        let me = Self {
            sup,
            bin,
            config,
            master,
            runtime,
            running,
            last_reload: Instant::now(),
            limits,
            shared,
            builder,
        };
        me.record_servers(&me.running);
        me
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the configuration (already validated); the next apply reloads if it changed.
    pub fn set_config(&mut self, config: Config) {
        self.config = config;
    }

    /// The model HAProxy is running.
    pub fn running(&self) -> &Model {
        &self.running
    }

    /// The master CLI client.
    pub fn master(&self) -> &MasterCli {
        &self.master
    }

    /// Builds the desired model for `snap`, logging and counting skipped nodes.
    pub fn desired(&mut self, snap: &MembershipSnapshot) -> Model {
        let capacities = self.running.capacities();
        self.builder.build(&self.config, snap, &capacities)
    }

    /// Brings HAProxy to `desired`.
    pub async fn apply(&mut self, desired: Model) -> Outcome {
        match diff(Some(&self.running), &desired) {
            Apply::Nothing => {
                self.succeeded(None);
                Outcome::Unchanged
            }
            Apply::Runtime(cmds) => self.apply_runtime(desired, cmds).await,
            Apply::Reload(cfg) => self.apply_reload(desired, cfg).await,
        }
    }

    async fn apply_runtime(&mut self, desired: Model, cmds: Vec<RuntimeCommand>) -> Outcome {
        let started = Instant::now();
        let cmds = probe::enable_healthy_joiners(&desired, cmds).await;
        let cmds = cmds.as_slice();
        if let Err(e) = self.runtime.apply(cmds).await {
            warn!(error = %e, commands = cmds.len(), "runtime API change refused; falling back to a reload");
            self.shared
                .metrics
                .apply_failures
                .get_or_create(&RUNTIME)
                .inc();
            let cfg = render(&desired);
            return self.apply_reload(desired, cfg).await;
        }
        // The file follows, so a later reload or restart comes up with the same servers.
        let cfg = render(&desired);
        if let Err(e) = files::install_config(
            &self.sup,
            &self.bin,
            self.config.haproxy.config.as_path(),
            cfg.as_bytes(),
        )
        .await
        {
            error!(error = %e, "runtime change applied but the file on disk could not be updated");
        }
        info!(
            commands = cmds.len(),
            "membership change applied through the runtime API"
        );
        self.running = desired;
        self.succeeded(Some((RUNTIME, started)));
        Outcome::Runtime
    }

    async fn apply_reload(&mut self, desired: Model, cfg: RenderedConfig) -> Outcome {
        let now = Instant::now();
        let allowed_at = self.last_reload + self.limits.min_reload_interval;
        if now < allowed_at {
            return Outcome::Postponed(allowed_at);
        }
        let started = now;
        self.save_server_state(&desired).await;
        let target = self.config.haproxy.config.as_path().to_owned();
        if let Err(e) = files::install_config(&self.sup, &self.bin, &target, cfg.as_bytes()).await {
            let rejected = matches!(e, FileError::Rejected { .. });
            error!(error = %e, rejected, "new configuration not installed; HAProxy keeps the running one");
            return self.failed(RELOAD, e.to_string());
        }
        self.last_reload = Instant::now();
        match self.master.reload(self.limits.reload_timeout).await {
            Ok(procs) => {
                info!(
                    reloads = procs.reloads,
                    worker = procs.current_worker().map(|w| w.pid),
                    "configuration reloaded"
                );
                self.running = desired;
                self.succeeded(Some((RELOAD, started)));
                Outcome::Reloaded
            }
            Err(e) => {
                error!(error = %e, "reload failed; HAProxy keeps the previous configuration");
                self.restore_running_file(&target).await;
                self.failed(RELOAD, e.to_string())
            }
        }
    }

    /// Puts the running configuration back on disk after a failed reload, so that a restart
    /// comes up with what is serving now rather than with the file HAProxy could not load.
    async fn restore_running_file(&self, target: &std::path::Path) {
        let running = render(&self.running);
        match files::install_config(&self.sup, &self.bin, target, running.as_bytes()).await {
            Ok(()) => info!("restored the running configuration on disk"),
            Err(e) => error!(error = %e, "could not restore the running configuration on disk"),
        }
    }

    /// Saves health state for the next worker; a failure only costs re-running checks.
    async fn save_server_state(&self, desired: &Model) {
        let path = self.config.haproxy.state_file.as_path();
        match self.runtime.servers_state().await {
            Ok(dump) => {
                let kept = state_file::filter(&dump, &self.running, desired);
                if let Err(e) = files::install_plain(path, kept.as_bytes()) {
                    warn!(error = %e, "could not write the server-state file");
                }
            }
            Err(e) => warn!(error = %e, "could not dump server state before the reload"),
        }
    }

    fn succeeded(&self, path: Option<(PathLabel, Instant)>) {
        if let Some((label, started)) = path {
            let m = &self.shared.metrics;
            m.applies.get_or_create(&label).inc();
            m.apply_seconds
                .get_or_create(&label)
                .observe(started.elapsed().as_secs_f64());
        }
        self.record_servers(&self.running);
        self.shared.update(|s| s.apply_error = None);
    }

    fn failed(&self, label: PathLabel, reason: String) -> Outcome {
        self.shared
            .metrics
            .apply_failures
            .get_or_create(&label)
            .inc();
        self.shared.update(|s| s.apply_error = Some(reason));
        Outcome::Failed
    }

    fn record_servers(&self, model: &Model) {
        for (name, n) in model.server_counts() {
            self.shared
                .metrics
                .servers
                .get_or_create(&BackendLabel {
                    backend: name.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Builds models, timing each build and reporting skipped nodes: counted per backend on every
/// build, logged once when a node starts being skipped (not on every revision).
pub struct ModelBuilder {
    shared: Arc<Shared>,
    reported: BTreeSet<(ServiceName, NodeId, SkipReason)>,
}

impl ModelBuilder {
    /// A builder that records into `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            reported: BTreeSet::new(),
        }
    }

    /// Builds the model for `snap` with `capacities` in use.
    pub fn build(
        &mut self,
        config: &Config,
        snap: &MembershipSnapshot,
        capacities: &BTreeMap<ServiceName, u32>,
    ) -> Model {
        let started = std::time::Instant::now();
        let (model, skipped) = build(config, snap, capacities);
        let metrics = &self.shared.metrics;
        metrics
            .render_seconds
            .observe(started.elapsed().as_secs_f64());
        let now: BTreeSet<_> = skipped.entries.into_iter().collect();
        for (service, node, reason) in now.difference(&self.reported) {
            let reason = match reason {
                SkipReason::NoEndpoint => "it has no endpoint of the service's name",
                SkipReason::NoHealthEndpoint => "it has no health endpoint for the check",
                SkipReason::SlotTaken => "its slot is held by a lower node id",
            };
            warn!(service = %service, node_id = %node, reason, "ready node not served");
        }
        for b in &model.backends {
            let n = now.iter().filter(|(s, _, _)| s == &b.service.name).count();
            metrics
                .skipped_nodes
                .get_or_create(&BackendLabel {
                    backend: b.service.name.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.reported = now;
        model
    }
}
