//! `Registration`: a node's lease-owned record and slot in etcd, kept alive in the background.
//!
//! [`Registration::spawn`] returns at once and never blocks on etcd: a background task claims the
//! node id and a slot, keeps the lease alive, and repairs what goes wrong — a broken keepalive
//! stream is re-opened on the **same** lease (etcd keeps leases across restarts); only a lease
//! that etcd reports gone (`ttl <= 0`, "lease not found") is replaced by a new one, with the
//! record put again and the old slot kept when still free; a record deleted or altered from
//! outside is put back. Progress is published as a [`RegistrationStatus`] (a `watch` value) and
//! as [`RegistrationEvent`]s (a `broadcast`), and every state transition is logged.
//!
//! The only fatal outcome is [`RegistrationState::IdTaken`]: another live instance held the node
//! id for longer than the claim timeout. Everything else — etcd down, credentials refused, a
//! permission missing — is retried with jittered backoff and reported, because an agent must keep
//! its daemon serving through a registry outage.
//!
//! Dropping the handle stops the task without revoking: the keys disappear when the lease expires,
//! exactly as when the process crashes. [`Registration::revoke`] removes them at once.

mod claim;
mod status;
mod worker;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::connect::Etcd;
use crate::endpoint::Endpoint;
use crate::error::RegistryError;
use crate::keys::Keyspace;
use crate::names::{EndpointName, MAX_SLOT, NodeId, Slot};
use crate::record::{NodeRecord, NodeState};

pub use status::{IdHolder, RegistrationEvent, RegistrationState, RegistrationStatus};

/// Default lease TTL (`--lease-ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Shortest accepted TTL; etcd itself raises shorter ones to its minimum.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// What a registration is and how it behaves; fixed for its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationConfig {
    /// Where the keys live.
    pub keyspace: Keyspace,
    /// The node id to claim.
    pub id: NodeId,
    /// Lease TTL; the record disappears this long after the process dies.
    pub ttl: Duration,
    /// How long to wait for another live instance to release the id before giving up.
    pub claim_timeout: Duration,
    /// Random token of this process; lets a restarted agent replace its own old record.
    pub instance: String,
    /// Version string written into the record.
    pub version: String,
    /// Start time written into the record (RFC 3339, UTC).
    pub started_at: String,
}

impl RegistrationConfig {
    /// A config with the default TTL, a claim timeout of twice the TTL, a fresh instance token
    /// and the current time.
    pub fn new(keyspace: Keyspace, id: NodeId) -> Self {
        Self {
            keyspace,
            id,
            ttl: DEFAULT_TTL,
            claim_timeout: 2 * DEFAULT_TTL,
            instance: new_instance_token(),
            version: concat!("peerkeep ", env!("CARGO_PKG_VERSION")).to_owned(),
            started_at: now_rfc3339(),
        }
    }

    /// Sets the TTL and the claim timeout to twice it (the default relation).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self.claim_timeout = 2 * ttl;
        self
    }

    fn check(&self) -> Result<(), RegistryError> {
        if self.ttl < MIN_TTL {
            return Err(RegistryError::BadOption {
                flag: "--lease-ttl",
                reason: format!("{:?} is below the minimum of {MIN_TTL:?}", self.ttl),
            });
        }
        Ok(())
    }
}

/// A fresh random instance token: 16 hex digits.
pub fn new_instance_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The parts of the record the caller changes over time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Lifecycle state.
    pub state: NodeState,
    /// Named endpoints (`p2p`, `health`, ...).
    pub endpoints: BTreeMap<EndpointName, Endpoint>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
}

impl NodeInfo {
    /// A `starting` node with the given endpoints and no labels.
    pub fn new(endpoints: BTreeMap<EndpointName, Endpoint>) -> Self {
        Self {
            state: NodeState::Starting,
            endpoints,
            labels: BTreeMap::new(),
        }
    }
}

/// The record to write, with the generation it came from.
#[derive(Debug, Clone)]
struct Desired {
    info: NodeInfo,
    generation: u64,
}

fn build_record(cfg: &RegistrationConfig, info: &NodeInfo, slot: Slot) -> NodeRecord {
    NodeRecord {
        id: cfg.id.clone(),
        state: info.state,
        endpoints: info.endpoints.clone(),
        slot,
        instance: cfg.instance.clone(),
        version: cfg.version.clone(),
        started_at: cfg.started_at.clone(),
        labels: info.labels.clone(),
    }
}

/// Checks that a record built from `info` can be written whatever slot is claimed.
fn check_info(cfg: &RegistrationConfig, info: &NodeInfo) -> Result<(), RegistryError> {
    let widest = Slot::new(MAX_SLOT).map_err(|e| RegistryError::BadOption {
        flag: "slot",
        reason: e.to_string(),
    })?;
    build_record(cfg, info, widest).encode()?;
    Ok(())
}

enum Command {
    Revoke(oneshot::Sender<Result<(), RegistryError>>),
}

/// A running registration. See the module documentation.
#[derive(Debug)]
pub struct Registration {
    id: NodeId,
    desired: watch::Sender<Desired>,
    status: watch::Receiver<RegistrationStatus>,
    events: broadcast::Sender<RegistrationEvent>,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
    config: RegistrationConfig,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Revoke")
    }
}

impl Registration {
    /// Starts registering in the background and returns at once.
    ///
    /// Fails only when the configuration is unusable (TTL too short, a record too large); etcd
    /// errors are retried and reported through [`Self::status`] and [`Self::events`].
    ///
    /// Must be called within a tokio runtime (the task is spawned on it).
    pub fn spawn(
        etcd: Etcd,
        config: RegistrationConfig,
        info: NodeInfo,
    ) -> Result<Self, RegistryError> {
        config.check()?;
        check_info(&config, &info)?;
        let (desired_tx, desired_rx) = watch::channel(Desired {
            info,
            generation: 1,
        });
        let (status_tx, status_rx) = watch::channel(RegistrationStatus::new());
        let (events_tx, _) = broadcast::channel(64);
        let (cmd_tx, cmd_rx) = mpsc::channel(1);
        let worker = worker::Worker::new(
            etcd,
            config.clone(),
            desired_rx,
            cmd_rx,
            status_tx,
            events_tx.clone(),
        );
        let task = tokio::spawn(worker.run());
        Ok(Self {
            id: config.id.clone(),
            desired: desired_tx,
            status: status_rx,
            events: events_tx,
            commands: cmd_tx,
            task,
            config,
        })
    }

    /// The node id being registered.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// This process's instance token.
    pub fn instance(&self) -> &str {
        &self.config.instance
    }

    /// The current status.
    pub fn status(&self) -> RegistrationStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<RegistrationStatus> {
        self.status.clone()
    }

    /// Subscribes to transition events from now on.
    pub fn events(&self) -> broadcast::Receiver<RegistrationEvent> {
        self.events.subscribe()
    }

    /// Changes the record's state; returns the generation to pass to [`Self::written`].
    pub fn set_state(&self, state: NodeState) -> u64 {
        let mut generation = 0;
        self.desired.send_modify(|d| {
            if d.info.state != state {
                d.info.state = state;
                d.generation += 1;
            }
            generation = d.generation;
        });
        generation
    }

    /// Changes endpoints, labels or state; returns the generation to pass to [`Self::written`].
    /// Refuses (and keeps the current record) when the result would be too large to store.
    pub fn update(&self, change: impl FnOnce(&mut NodeInfo)) -> Result<u64, RegistryError> {
        let mut info = self.desired.borrow().info.clone();
        change(&mut info);
        check_info(&self.config, &info)?;
        let mut generation = 0;
        self.desired.send_modify(|d| {
            if d.info != info {
                d.info = info;
                d.generation += 1;
            }
            generation = d.generation;
        });
        Ok(generation)
    }

    /// Waits until the record of `generation` (or a later one) is in etcd.
    ///
    /// While etcd is unreachable this waits as long as the outage lasts; callers on a deadline
    /// (the agent's shutdown) wrap it in a timeout.
    pub async fn written(&self, generation: u64) -> Result<(), RegistryError> {
        let mut rx = self.status.clone();
        let result = rx
            .wait_for(|s| s.written_generation >= generation || s.state.is_terminal())
            .await
            .map(|s| s.written_generation >= generation);
        match result {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => Err(self.terminal_error()),
        }
    }

    /// Waits until registered; fails with [`RegistryError::IdTaken`] when the id is taken.
    pub async fn registered(&self) -> Result<RegistrationStatus, RegistryError> {
        let mut rx = self.status.clone();
        let result = rx
            .wait_for(|s| s.state == RegistrationState::Registered || s.state.is_terminal())
            .await
            .map(|s| s.clone());
        match result {
            Ok(s) if s.state == RegistrationState::Registered => Ok(s),
            Ok(_) | Err(_) => Err(self.terminal_error()),
        }
    }

    /// Resolves when the registration has stopped for good, with the reason (for an agent's
    /// `select!`: [`RegistryError::IdTaken`] is the one to exit on, with code 4).
    pub async fn stopped(&self) -> RegistryError {
        let mut rx = self.status.clone();
        let _ = rx.wait_for(|s| s.state.is_terminal()).await;
        self.terminal_error()
    }

    fn terminal_error(&self) -> RegistryError {
        let s = self.status.borrow();
        match (&s.state, &s.id_holder) {
            (RegistrationState::IdTaken, Some(h)) => RegistryError::IdTaken {
                id: self.id.clone(),
                holder_instance: h.instance.clone(),
                holder_started_at: h.started_at.clone(),
            },
            _ => RegistryError::Stopped,
        }
    }

    /// Revokes the lease (deleting the record and slot at once) and stops the task.
    ///
    /// When etcd cannot be reached the error is returned; the keys then expire with the lease.
    pub async fn revoke(self) -> Result<(), RegistryError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        if self.commands.send(Command::Revoke(reply_tx)).await.is_err() {
            // The task has already ended (IdTaken, or an earlier revoke): nothing is held.
            return Ok(());
        }
        reply_rx.await.unwrap_or(Ok(()))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Like a crash: the lease is left to expire. `revoke()` is the clean way out.
        self.task.abort();
    }
}
