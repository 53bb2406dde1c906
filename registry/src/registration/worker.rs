//! The registration task: claim, keep alive, repair, revoke.
//!
//! One task owns the lease and is the only writer of the node's keys, so there is no locking:
//! the handle talks to it through a `watch` of the desired record and a command channel, and it
//! answers through a `watch` of the status and a `broadcast` of events.
//!
//! The loop alternates two phases. *Claim* (until it succeeds): read the node key and the slot
//! keys, decide with [`super::claim`], and write both keys in one compare-guarded transaction
//! under a lease. *Keep*: send keepalives at TTL/3 on our own timer and check every answer; check
//! the keys at TTL/2 and put them back if they were deleted or altered; write record changes. A
//! broken keepalive stream is re-opened on the same lease with jittered backoff; the phase ends
//! only when etcd says the lease is gone (or when someone else took our id or slot).

use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp, TxnOpResponse,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;

use super::claim::{NodeKeyHolder, choose_slot, node_key_holder, slot_holders};
use super::status::{IdHolder, RegistrationEvent, RegistrationState, RegistrationStatus};
use super::{Command, Desired, RegistrationConfig, build_record};
use crate::connect::Etcd;
use crate::error::RegistryError;
use crate::names::{MAX_SLOT, Slot};

/// Lost claim races retried at once before falling back to the backoff. Twenty nodes starting
/// together lose at most nineteen races each for the lowest slots.
const MAX_QUICK_RETRIES: u32 = 32;

/// Why the task stops.
enum Exit {
    Revoke(oneshot::Sender<Result<(), RegistryError>>),
    /// The handle is gone; leave the lease to expire.
    Dropped,
    IdTaken(IdHolder),
}

/// How a keep phase ended.
enum KeepEnd {
    /// etcd says the lease is gone.
    Lost,
    /// Our node key or slot now belongs to someone else; give the lease up and claim again.
    Conflict(String),
    Exit(Exit),
}

/// One claim attempt's outcome.
enum Claim {
    Done {
        slot: Slot,
    },
    /// A compare failed (a concurrent claimant, or our own retried write): read again.
    Retry,
    Held(IdHolder),
}

/// What a record check found.
enum Sync {
    /// etcd holds what we want.
    InPlace,
    /// We wrote the record; `restored` when etcd held something we had not written.
    Written { restored: bool },
    /// Another instance or node holds our key or slot.
    Conflict(String),
    /// A compare failed between read and write; check again soon.
    Raced,
}

/// What [`Worker::write_keys`] expects to find, as read just before the write.
struct Expect {
    /// `None`: the node key must be absent; `Some(rev)`: unchanged since revision `rev`.
    node_mod_revision: Option<i64>,
    /// `slots/{n}` must already name us; otherwise it must be absent.
    slot_names_us: bool,
}

/// The state of the two keys as read in one transaction.
struct Keys {
    node: Option<(Vec<u8>, i64, i64)>,
    slot: Option<(String, i64)>,
}

pub(super) struct Worker {
    etcd: Etcd,
    cfg: RegistrationConfig,
    desired: watch::Receiver<Desired>,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<RegistrationStatus>,
    events: broadcast::Sender<RegistrationEvent>,
    lease: Option<i64>,
    slot: Option<Slot>,
    /// The record bytes we last wrote, to tell our own writes from changes made outside.
    written: Option<Vec<u8>>,
    ever_registered: bool,
}

impl Worker {
    pub(super) fn new(
        etcd: Etcd,
        cfg: RegistrationConfig,
        desired: watch::Receiver<Desired>,
        commands: mpsc::Receiver<Command>,
        status: watch::Sender<RegistrationStatus>,
        events: broadcast::Sender<RegistrationEvent>,
    ) -> Self {
        Self {
            etcd,
            cfg,
            desired,
            commands,
            status,
            events,
            lease: None,
            slot: None,
            written: None,
            ever_registered: false,
        }
    }

    pub(super) async fn run(mut self) {
        let exit = loop {
            if let Err(exit) = self.claim_phase().await {
                break exit;
            }
            match self.keep_phase().await {
                KeepEnd::Lost => {
                    let lease = self.lease.take().unwrap_or_default();
                    self.status.send_modify(|s| s.lease = None);
                    self.emit(RegistrationEvent::LeaseLost { lease });
                    self.transition(RegistrationState::Lost, "etcd reports the lease gone");
                }
                KeepEnd::Conflict(why) => {
                    self.give_up_lease().await;
                    self.transition(RegistrationState::Lost, &why);
                }
                KeepEnd::Exit(exit) => break exit,
            }
        };
        match exit {
            Exit::Revoke(reply) => {
                let result = self.give_up_lease_checked().await;
                self.transition(RegistrationState::Revoked, "revoked on request");
                self.emit(RegistrationEvent::Revoked);
                let _ = reply.send(result);
            }
            Exit::Dropped => {}
            Exit::IdTaken(holder) => {
                self.give_up_lease().await;
                tracing::error!(
                    node_id = %self.cfg.id,
                    holder_instance = %holder.instance,
                    holder_started_at = %holder.started_at,
                    "node id is held by another live instance; giving up"
                );
                self.status
                    .send_modify(|s| s.id_holder = Some(holder.clone()));
                self.transition(
                    RegistrationState::IdTaken,
                    "another live instance holds the id",
                );
                self.emit(RegistrationEvent::IdTaken { holder });
            }
        }
    }

    // ---- claim phase ----

    async fn claim_phase(&mut self) -> Result<(), Exit> {
        let mut delays = backoff(self.cfg.ttl);
        let mut held_since: Option<Instant> = None;
        let mut failing = false;
        let mut races: u32 = 0;
        loop {
            match self.try_claim().await {
                Ok(Claim::Done { slot }) => {
                    self.registered(slot);
                    return Ok(());
                }
                Ok(Claim::Retry) => {
                    // Concurrent claimants retry at once, with a little jitter to spread them;
                    // a compare that keeps failing for another reason must not spin on etcd.
                    races += 1;
                    if races == MAX_QUICK_RETRIES + 1 {
                        tracing::warn!(
                            node_id = %self.cfg.id,
                            attempts = races,
                            slot = ?self.slot.map(Slot::get),
                            "the claim of the node id and slot keeps failing its compare; \
                             retrying with backoff (check the keys under the cluster's slots/)"
                        );
                    } else {
                        tracing::debug!(node_id = %self.cfg.id, attempts = races, "claim raced; retrying");
                    }
                    let pause = if races <= MAX_QUICK_RETRIES {
                        Duration::from_millis(rand::random_range(0..20))
                    } else {
                        delays.next().unwrap_or(self.cfg.ttl)
                    };
                    self.pause(pause).await?;
                }
                Ok(Claim::Held(holder)) => {
                    let since = *held_since.get_or_insert_with(|| {
                        tracing::warn!(
                            node_id = %self.cfg.id,
                            holder_instance = %holder.instance,
                            claim_timeout = ?self.cfg.claim_timeout,
                            "node id is held by another instance; waiting for it to be released"
                        );
                        Instant::now()
                    });
                    if since.elapsed() >= self.cfg.claim_timeout {
                        return Err(Exit::IdTaken(holder));
                    }
                    self.status.send_modify(|s| s.id_holder = Some(holder));
                    self.give_up_lease().await;
                    self.pause(held_poll(self.cfg.ttl)).await?;
                }
                Err(e) => {
                    if let RegistryError::LeaseNotFound { .. } = e {
                        self.lease = None;
                        continue;
                    }
                    if !failing {
                        tracing::warn!(node_id = %self.cfg.id, error = %e, "cannot register yet; retrying");
                        if e.is_unreachable() {
                            self.emit(RegistrationEvent::EtcdUnreachable {
                                error: e.to_string(),
                            });
                        }
                        failing = true;
                    } else {
                        tracing::debug!(node_id = %self.cfg.id, error = %e, "registration attempt failed");
                    }
                    self.failed(&e);
                    let pause = delays.next().unwrap_or(self.cfg.ttl);
                    self.pause(pause).await?;
                }
            }
        }
    }

    async fn try_claim(&mut self) -> Result<Claim, RegistryError> {
        let ks = self.cfg.keyspace.clone();
        let node_key = ks.node_key(&self.cfg.id);
        let slots_prefix = ks.slots_prefix();
        let read = Txn::new().and_then(vec![
            TxnOp::get(node_key.as_str(), None),
            TxnOp::get(slots_prefix.as_str(), Some(GetOptions::new().with_prefix())),
        ]);
        let resp = self.etcd.txn(&node_key, read).await?;
        let mut gets = get_responses(resp.op_responses());
        let slots = gets.pop().unwrap_or_default();
        let node = gets.pop().unwrap_or_default();
        let node_kv = node.first();
        match node_key_holder(node_kv.map(|kv| kv.value()), &self.cfg.instance) {
            NodeKeyHolder::Absent | NodeKeyHolder::Ours => {}
            NodeKeyHolder::Unreadable => {
                return Ok(Claim::Held(IdHolder {
                    instance: "(unreadable record)".to_owned(),
                    started_at: String::new(),
                }));
            }
            NodeKeyHolder::Other {
                instance,
                started_at,
            } => {
                return Ok(Claim::Held(IdHolder {
                    instance,
                    started_at,
                }));
            }
        }
        let holders = slot_holders(&slots_prefix, slots.iter().map(|kv| (kv.key(), kv.value())));
        let choice = choose_slot(&holders, &self.cfg.id, self.slot).ok_or_else(|| {
            RegistryError::NoFreeSlot {
                cluster: ks.cluster().to_string(),
                max: MAX_SLOT,
            }
        })?;
        let lease = self.ensure_lease().await?;
        let (bytes, generation) = self.desired_bytes(choice.slot)?;
        let expect = Expect {
            node_mod_revision: node_kv.map(KeyValue::mod_revision),
            slot_names_us: choice.already_ours,
        };
        if !self
            .write_keys(choice.slot, bytes.clone(), lease, expect)
            .await?
        {
            return Ok(Claim::Retry);
        }
        self.written = Some(bytes);
        self.mark_written(generation);
        Ok(Claim::Done { slot: choice.slot })
    }

    async fn ensure_lease(&mut self) -> Result<i64, RegistryError> {
        if let Some(lease) = self.lease {
            return Ok(lease);
        }
        let lease = self.etcd.lease_grant(self.cfg.ttl).await?;
        self.lease = Some(lease);
        self.status.send_modify(|s| {
            s.lease = Some(lease);
            s.lease_grants += 1;
        });
        tracing::debug!(node_id = %self.cfg.id, lease = %format_args!("{lease:x}"), "lease granted");
        Ok(lease)
    }

    fn registered(&mut self, slot: Slot) {
        let lease = self.lease.unwrap_or_default();
        self.slot = Some(slot);
        self.status.send_modify(|s| {
            s.slot = Some(slot);
            s.lease = Some(lease);
            s.last_error = None;
            s.id_holder = None;
        });
        let event = if self.ever_registered {
            RegistrationEvent::ReRegistered { lease, slot }
        } else {
            RegistrationEvent::Registered { lease, slot }
        };
        self.ever_registered = true;
        self.transition(RegistrationState::Registered, "record and slot written");
        self.emit(event);
    }

    // ---- keep phase ----

    async fn keep_phase(&mut self) -> KeepEnd {
        let Some(lease) = self.lease else {
            return KeepEnd::Lost;
        };
        let mut delays = backoff(self.cfg.ttl);
        let mut down_since: Option<Instant> = None;
        loop {
            let opened = tokio::select! {
                r = self.etcd.lease_keep_alive(lease) => r,
                cmd = self.commands.recv() => return KeepEnd::Exit(exit_for(cmd)),
            };
            match opened {
                Ok((keeper, stream)) => {
                    if down_since.take().is_some() {
                        self.status.send_modify(|s| s.last_error = None);
                        self.emit(RegistrationEvent::Reconnected { lease });
                        self.transition(
                            RegistrationState::Registered,
                            "keepalive re-opened on the same lease",
                        );
                    }
                    delays = backoff(self.cfg.ttl);
                    match self.keep_stream(lease, keeper, stream).await {
                        Ok(end) => return end,
                        Err(e) => {
                            self.failed(&e);
                            self.emit(RegistrationEvent::EtcdUnreachable {
                                error: e.to_string(),
                            });
                            self.transition(RegistrationState::Unconfirmed, &e.to_string());
                            down_since = Some(Instant::now());
                        }
                    }
                }
                Err(RegistryError::LeaseNotFound { .. }) => return KeepEnd::Lost,
                Err(e) => {
                    self.failed(&e);
                    if down_since.is_none() {
                        self.emit(RegistrationEvent::EtcdUnreachable {
                            error: e.to_string(),
                        });
                        self.transition(RegistrationState::Unconfirmed, &e.to_string());
                        down_since = Some(Instant::now());
                    }
                }
            }
            let pause = delays.next().unwrap_or(self.cfg.ttl);
            if let Err(exit) = self.pause(pause).await {
                return KeepEnd::Exit(exit);
            }
        }
    }

    /// Runs one keepalive stream until it breaks (`Err`, re-open it) or the phase ends (`Ok`).
    async fn keep_stream(
        &mut self,
        lease: i64,
        mut keeper: LeaseKeeper,
        mut stream: LeaseKeepAliveStream,
    ) -> Result<KeepEnd, RegistryError> {
        let ttl = self.cfg.ttl;
        // Opening the stream was itself a keepalive, so the first tick waits a full period.
        let mut keepalive = tokio::time::interval_at((Instant::now() + ttl / 3).into(), ttl / 3);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first check runs at once: after an outage the record may need putting back.
        let mut check = tokio::time::interval(ttl / 2);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_answer = Instant::now();
        let endpoints = self.etcd.endpoints().join(",");
        let stream_err = |detail: String| RegistryError::Unreachable {
            endpoints: endpoints.clone(),
            op: "lease keepalive",
            detail,
        };
        loop {
            tokio::select! {
                // A due keepalive goes first: with checks bounded by `check_budget`, at most one
                // check can run between two keepalives.
                biased;
                _ = keepalive.tick() => {
                    if last_answer.elapsed() > ttl {
                        return Err(stream_err(format!("no keepalive answer for {ttl:?}")));
                    }
                    if let Err(e) = keeper.keep_alive().await {
                        return Err(stream_err(e.to_string()));
                    }
                }
                msg = stream.message() => match msg {
                    Ok(Some(answer)) if answer.ttl() <= 0 => return Ok(KeepEnd::Lost),
                    Ok(Some(_)) => last_answer = Instant::now(),
                    Ok(None) => return Err(stream_err("the keepalive stream ended".to_owned())),
                    Err(e) => return Err(stream_err(e.to_string())),
                },
                _ = check.tick() => {
                    if let Some(end) = self.check_record(lease).await {
                        return Ok(end);
                    }
                }
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        return Ok(KeepEnd::Exit(Exit::Dropped));
                    }
                    if let Some(end) = self.check_record(lease).await {
                        return Ok(end);
                    }
                }
                cmd = self.commands.recv() => return Ok(KeepEnd::Exit(exit_for(cmd))),
            }
        }
    }

    /// Checks the keys and writes what is missing or out of date. `Some` ends the keep phase.
    ///
    /// The check runs inside the loop that sends keepalives, so it is cut off after
    /// [`check_budget`]: a request stuck on an unresponsive endpoint (each may take the whole
    /// request timeout, 5 s by default) must not hold back keepalives until the lease lapses.
    /// A check cut off is retried at the next tick; cutting it off is harmless, because every
    /// write is compare-guarded and the next check recognises a write that did land.
    async fn check_record(&mut self, lease: i64) -> Option<KeepEnd> {
        let budget = check_budget(self.cfg.ttl);
        let checked = tokio::time::timeout(budget, self.sync_record(lease))
            .await
            .unwrap_or_else(|_| {
                Err(RegistryError::Unreachable {
                    endpoints: self.etcd.endpoints().join(","),
                    op: "record check",
                    detail: format!(
                        "no answer within {budget:?} (a quarter of the lease TTL, so that \
                         keepalives are not held back)"
                    ),
                })
            });
        match checked {
            Ok(Sync::InPlace) | Ok(Sync::Raced) => None,
            Ok(Sync::Written { restored }) => {
                if restored {
                    tracing::warn!(node_id = %self.cfg.id, "our record was missing or altered in etcd; put it back");
                    self.emit(RegistrationEvent::RecordRestored);
                }
                None
            }
            Ok(Sync::Conflict(why)) => Some(KeepEnd::Conflict(why)),
            Err(RegistryError::LeaseNotFound { .. }) => Some(KeepEnd::Lost),
            Err(e) => {
                // The keepalive stream reports outages; a failed check is retried at the next tick.
                tracing::debug!(node_id = %self.cfg.id, error = %e, "record check failed");
                self.failed(&e);
                None
            }
        }
    }

    async fn read_keys(&self, slot: Slot) -> Result<Keys, RegistryError> {
        let node_key = self.cfg.keyspace.node_key(&self.cfg.id);
        let slot_key = self.cfg.keyspace.slot_key(slot);
        let read = Txn::new().and_then(vec![
            TxnOp::get(node_key.as_str(), None),
            TxnOp::get(slot_key.as_str(), None),
        ]);
        let resp = self.etcd.txn(&node_key, read).await?;
        let mut gets = get_responses(resp.op_responses());
        let slot_resp = gets.pop().unwrap_or_default();
        let node_resp = gets.pop().unwrap_or_default();
        Ok(Keys {
            node: node_resp
                .first()
                .map(|kv| (kv.value().to_vec(), kv.mod_revision(), kv.lease())),
            slot: slot_resp
                .first()
                .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease())),
        })
    }

    async fn sync_record(&mut self, lease: i64) -> Result<Sync, RegistryError> {
        let Some(slot) = self.slot else {
            return Ok(Sync::Conflict("no slot held".to_owned()));
        };
        let (bytes, generation) = self.desired_bytes(slot)?;
        let keys = self.read_keys(slot).await?;
        let me = self.cfg.id.as_str();
        if let Some((holder, _)) = &keys.slot
            && holder != me
        {
            return Ok(Sync::Conflict(format!("slot {slot} now names {holder:?}")));
        }
        if let NodeKeyHolder::Other { instance, .. } = node_key_holder(
            keys.node.as_ref().map(|n| n.0.as_slice()),
            &self.cfg.instance,
        ) {
            return Ok(Sync::Conflict(format!(
                "node key now belongs to instance {instance}"
            )));
        }
        let node_ok = keys
            .node
            .as_ref()
            .is_some_and(|(v, _, l)| *v == bytes && *l == lease);
        let slot_ok = keys.slot.as_ref().is_some_and(|(_, l)| *l == lease);
        if node_ok && slot_ok {
            self.written = Some(bytes);
            self.mark_written(generation);
            return Ok(Sync::InPlace);
        }
        let restored = match &keys.node {
            None => true,
            Some((v, _, _)) => self.written.as_deref() != Some(v.as_slice()),
        } || keys.slot.is_none();
        let expect = Expect {
            node_mod_revision: keys.node.as_ref().map(|(_, rev, _)| *rev),
            slot_names_us: keys.slot.is_some(),
        };
        if !self.write_keys(slot, bytes.clone(), lease, expect).await? {
            return Ok(Sync::Raced);
        }
        self.written = Some(bytes);
        self.mark_written(generation);
        Ok(Sync::Written { restored })
    }

    /// The one write of the node's keys, shared by the claim and the repair so that they cannot
    /// drift apart: the record and `slots/{n}` (naming us) put under `lease`, in one
    /// transaction guarded by `expect`. Returns whether the guard held and the keys were written.
    async fn write_keys(
        &self,
        slot: Slot,
        record: Vec<u8>,
        lease: i64,
        expect: Expect,
    ) -> Result<bool, RegistryError> {
        let node_key = self.cfg.keyspace.node_key(&self.cfg.id);
        let slot_key = self.cfg.keyspace.slot_key(slot);
        let me = self.cfg.id.as_str();
        let node_cmp = match expect.node_mod_revision {
            None => Compare::version(node_key.as_str(), CompareOp::Equal, 0),
            Some(rev) => Compare::mod_revision(node_key.as_str(), CompareOp::Equal, rev),
        };
        let slot_cmp = if expect.slot_names_us {
            Compare::value(slot_key.as_str(), CompareOp::Equal, me)
        } else {
            Compare::version(slot_key.as_str(), CompareOp::Equal, 0)
        };
        let under_lease = || Some(PutOptions::new().with_lease(lease));
        let write = Txn::new().when(vec![node_cmp, slot_cmp]).and_then(vec![
            TxnOp::put(node_key.as_str(), record, under_lease()),
            TxnOp::put(slot_key.as_str(), me, under_lease()),
        ]);
        let resp = self
            .etcd
            .txn(&node_key, write)
            .await
            .map_err(|e| crate::connect::lease_error(e, lease))?;
        Ok(resp.succeeded())
    }

    fn desired_bytes(&mut self, slot: Slot) -> Result<(Vec<u8>, u64), RegistryError> {
        let desired = self.desired.borrow_and_update().clone();
        let bytes = build_record(&self.cfg, &desired.info, slot).encode()?;
        Ok((bytes, desired.generation))
    }

    fn mark_written(&self, generation: u64) {
        self.status.send_if_modified(|s| {
            let newer = s.written_generation < generation;
            if newer {
                s.written_generation = generation;
            }
            newer
        });
    }

    // ---- leases, status, waiting ----

    /// Revokes the lease if we hold one, ignoring failures (it expires on its own).
    async fn give_up_lease(&mut self) {
        if let Err(e) = self.give_up_lease_checked().await {
            tracing::debug!(node_id = %self.cfg.id, error = %e, "lease revoke failed; it will expire");
        }
    }

    async fn give_up_lease_checked(&mut self) -> Result<(), RegistryError> {
        let Some(lease) = self.lease.take() else {
            return Ok(());
        };
        self.status.send_modify(|s| s.lease = None);
        match self.etcd.lease_revoke(lease).await {
            Ok(()) | Err(RegistryError::LeaseNotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn transition(&self, to: RegistrationState, reason: &str) {
        self.status.send_if_modified(|s| {
            if s.state == to {
                return false;
            }
            tracing::info!(
                node_id = %self.cfg.id,
                from = %s.state,
                to = %to,
                lease = ?s.lease.map(|l| format!("{l:x}")),
                slot = ?s.slot.map(Slot::get),
                reason,
                "registration state changed"
            );
            s.state = to;
            s.since = SystemTime::now();
            true
        });
    }

    fn failed(&self, e: &RegistryError) {
        self.status
            .send_modify(|s| s.last_error = Some(e.to_string()));
    }

    fn emit(&self, event: RegistrationEvent) {
        // No subscriber is fine: events are an optional view of the status.
        let _ = self.events.send(event);
    }

    /// Sleeps, unless a command or the handle's drop ends the task first.
    async fn pause(&mut self, pause: Duration) -> Result<(), Exit> {
        tokio::select! {
            _ = tokio::time::sleep(pause) => Ok(()),
            cmd = self.commands.recv() => Err(exit_for(cmd)),
        }
    }
}

fn exit_for(cmd: Option<Command>) -> Exit {
    match cmd {
        Some(Command::Revoke(reply)) => Exit::Revoke(reply),
        None => Exit::Dropped,
    }
}

/// The key-values of each `get` in a transaction's answer, in order.
fn get_responses(ops: Vec<TxnOpResponse>) -> Vec<Vec<KeyValue>> {
    ops.into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(mut g) => Some(g.take_kvs()),
            _ => None,
        })
        .collect()
}

/// Reconnect backoff: quick at first, capped at TTL/3 so that a returning etcd is found again
/// well before the lease would expire, with jitter so a fleet does not reconnect in lockstep.
fn backoff(ttl: Duration) -> ExponentialBackoff {
    let cap = (ttl / 3).clamp(Duration::from_millis(100), Duration::from_secs(3));
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(cap)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The longest a record check may take. It shares a loop with the keepalives, which are due
/// every TTL/3: bounded by TTL/4, a check delays a keepalive to at most 7/12 of the TTL after
/// the previous one, leaving the answer time to arrive before the lease lapses.
fn check_budget(ttl: Duration) -> Duration {
    ttl / 4
}

/// How often to look again at an id held by another instance.
fn held_poll(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: record checks awaited inside the keepalive loop could each take the whole
    /// request timeout (5 s) on a blackholed endpoint, so with a TTL of 7 s or less the lease
    /// expired while a check waited. However long the requests may take, the check's budget
    /// plus the keepalive period stays well inside the TTL.
    #[test]
    fn record_check_cannot_hold_keepalives_back_past_the_ttl() {
        for secs in [1, 2, 3, 5, 7, 10, 30, 600] {
            let ttl = Duration::from_secs(secs);
            let worst_gap = ttl / 3 + check_budget(ttl);
            assert!(
                worst_gap * 3 <= ttl * 2,
                "TTL {ttl:?}: keepalives up to {worst_gap:?} apart"
            );
            assert!(check_budget(ttl) < ttl / 3, "TTL {ttl:?}");
        }
    }
}
