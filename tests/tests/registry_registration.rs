//! `Registration` against a real etcd: lease lifetime, outages, repairs, id conflicts, slots.
//!
//! Every test starts its own etcd on free loopback ports and uses a 2 s TTL. Records are read
//! back with `etcdctl`, independently of the code under test. The registrations run on a
//! runtime owned by the test while the test body stays synchronous, so the blocking fixtures
//! (stopping etcd, running etcdctl) never stall the registration task.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use peerkeep_registry::{
    DEFAULT_PREFIX, Etcd as Client, EtcdOptions, Keyspace, NodeId, NodeInfo, NodeRecord, NodeState,
    Registration, RegistrationConfig, RegistrationEvent, RegistrationState, RegistryError, Slot,
    connect,
};
use peerkeep_tests::{Etcd, TcpProxy, eventually};
use tokio::runtime::Runtime;

const TTL: Duration = Duration::from_secs(2);
/// Deadline for "within 2 s" requirements: 2 s plus scheduling slack on a loaded 2-core host.
const REPAIR: Duration = Duration::from_secs(4);
/// Deadline for things that merely have to happen eventually.
const LONG: Duration = Duration::from_secs(20);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn keyspace() -> Keyspace {
    Keyspace::new(DEFAULT_PREFIX, "t".parse().expect("valid cluster")).expect("valid keyspace")
}

fn id(s: &str) -> NodeId {
    s.parse().expect("valid node id")
}

fn info(port: u16) -> NodeInfo {
    let mut endpoints = BTreeMap::new();
    endpoints.insert(
        "p2p".parse().expect("valid name"),
        format!("127.0.0.1:{port}").parse().expect("valid endpoint"),
    );
    NodeInfo::new(endpoints)
}

fn client(rt: &Runtime, endpoint: String) -> Client {
    let opts = EtcdOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        ..EtcdOptions::new([endpoint])
    };
    rt.block_on(connect(&opts)).expect("connect is lazy")
}

fn spawn(rt: &Runtime, etcd: &Client, node: &str) -> Registration {
    let _ctx = rt.enter();
    let cfg = RegistrationConfig::new(keyspace(), id(node)).with_ttl(TTL);
    Registration::spawn(etcd.clone(), cfg, info(3000)).expect("valid registration")
}

fn wait_registered(rt: &Runtime, reg: &Registration) -> (i64, Slot) {
    let status = rt
        .block_on(async { tokio::time::timeout(LONG, reg.registered()).await })
        .expect("registered in time")
        .expect("registered");
    (
        status.lease.expect("a registered status has a lease"),
        status.slot.expect("a registered status has a slot"),
    )
}

/// The raw value of `key`, read with etcdctl.
fn value(etcd: &Etcd, key: &str) -> Option<String> {
    let out = etcd.etcdctl(&["get", key, "--print-value-only"]);
    assert!(
        out.status.success(),
        "etcdctl get failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn record(etcd: &Etcd, node: &str) -> Option<NodeRecord> {
    let key = keyspace().node_key(&id(node));
    value(etcd, &key).map(|v| NodeRecord::parse(node, v.as_bytes()).expect("a valid record"))
}

fn slot_value(etcd: &Etcd, slot: Slot) -> Option<String> {
    value(etcd, &keyspace().slot_key(slot))
}

#[test]
fn register_is_visible_and_a_dropped_registration_vanishes_after_the_ttl() {
    let etcd = Etcd::start();
    let rt = runtime();
    let c = client(&rt, etcd.endpoint());
    let reg = spawn(&rt, &c, "n1");
    let (_, slot) = wait_registered(&rt, &reg);

    let r = record(&etcd, "n1").expect("record visible");
    assert_eq!(r.slot, slot);
    assert_eq!(slot.get(), 1, "the first node takes the lowest slot");
    assert_eq!(r.instance, reg.instance());
    assert_eq!(r.state, NodeState::Starting);
    assert_eq!(slot_value(&etcd, slot).as_deref(), Some("n1"));

    // Dropping aborts the task without revoking: the keys stay until the lease expires.
    drop(reg);
    let dropped = Instant::now();
    assert!(record(&etcd, "n1").is_some(), "not revoked on drop");
    eventually(TTL + REPAIR, "record gone after the TTL", || {
        record(&etcd, "n1").is_none().then_some(())
    });
    assert!(
        dropped.elapsed() >= TTL / 2,
        "the record vanished after {:?}, before its lease could expire",
        dropped.elapsed()
    );
    assert_eq!(
        slot_value(&etcd, slot),
        None,
        "slot released with the lease"
    );
}

#[test]
fn state_updates_are_written_and_revoke_deletes_at_once() {
    let etcd = Etcd::start();
    let rt = runtime();
    let c = client(&rt, etcd.endpoint());
    let reg = spawn(&rt, &c, "n1");
    let (_, slot) = wait_registered(&rt, &reg);

    let generation = reg.set_state(NodeState::Ready);
    rt.block_on(reg.written(generation)).expect("written");
    assert_eq!(record(&etcd, "n1").map(|r| r.state), Some(NodeState::Ready));

    let generation = reg
        .update(|i| {
            i.labels.insert("role".into(), "seed".into());
        })
        .expect("small update");
    rt.block_on(reg.written(generation)).expect("written");
    let r = record(&etcd, "n1").expect("record");
    assert_eq!(r.labels.get("role").map(String::as_str), Some("seed"));
    assert_eq!(r.state, NodeState::Ready, "earlier changes kept");

    let too_big = reg.update(|i| {
        i.labels.insert("x".into(), "y".repeat(5000));
    });
    assert!(
        matches!(too_big, Err(RegistryError::Record(_))),
        "{too_big:?}"
    );

    rt.block_on(reg.revoke()).expect("revoke");
    assert_eq!(record(&etcd, "n1"), None, "record deleted by revoke");
    assert_eq!(slot_value(&etcd, slot), None, "slot deleted by revoke");
}

#[test]
fn spawn_does_not_block_while_etcd_is_down_and_registers_once_it_is_up() {
    let mut etcd = Etcd::start();
    etcd.stop();
    let rt = runtime();
    let c = client(&rt, etcd.endpoint());
    let started = Instant::now();
    let reg = spawn(&rt, &c, "n1");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "spawn returned at once"
    );
    eventually(LONG, "the failure is reported in the status", || {
        let s = reg.status();
        (s.state == RegistrationState::Unregistered && s.last_error.is_some()).then_some(())
    });
    etcd.start_again();
    wait_registered(&rt, &reg);
    assert!(record(&etcd, "n1").is_some());
}

#[test]
fn heavy_etcd_restart_keeps_the_registration_on_the_same_lease() {
    let mut etcd = Etcd::start();
    let rt = runtime();
    let c = client(&rt, etcd.endpoint());
    let reg = spawn(&rt, &c, "n1");
    let (lease, slot) = wait_registered(&rt, &reg);

    etcd.stop();
    eventually(LONG, "the outage is noticed", || {
        (reg.status().state == RegistrationState::Unconfirmed).then_some(())
    });
    std::thread::sleep(3 * TTL);
    etcd.start_again();
    let back = Instant::now();
    eventually(REPAIR, "record back after the restart", || {
        record(&etcd, "n1").map(drop)
    });
    eventually(REPAIR, "registration confirmed again", || {
        (reg.status().state == RegistrationState::Registered).then_some(())
    });
    eprintln!("repaired {:?} after the fault ended", back.elapsed());
    assert!(back.elapsed() <= REPAIR);
    // etcd 3.4 keeps leases across a restart, so the same lease is kept alive.
    assert_eq!(reg.status().lease, Some(lease), "same lease after restart");
    assert_eq!(reg.status().lease_grants, 1, "no new lease was granted");

    std::thread::sleep(3 * TTL);
    let r = record(&etcd, "n1").expect("still registered 3×TTL later");
    assert_eq!(r.slot, slot);
    assert_eq!(reg.status().lease, Some(lease));
}

#[test]
fn heavy_cut_off_registrant_gets_a_new_lease_after_restore() {
    let etcd = Etcd::start();
    let proxy = TcpProxy::start(([127, 0, 0, 1], etcd.client_port()).into());
    let rt = runtime();
    let c = client(&rt, proxy.url());
    let reg = spawn(&rt, &c, "n1");
    let (lease, slot) = wait_registered(&rt, &reg);
    let mut events = reg.events();

    proxy.cut();
    eventually(TTL + REPAIR, "the lease expires while cut off", || {
        record(&etcd, "n1").is_none().then_some(())
    });
    std::thread::sleep(3 * TTL);
    proxy.restore();
    let restored = Instant::now();
    eventually(REPAIR, "record back after restore", || {
        record(&etcd, "n1").map(drop)
    });
    eprintln!("repaired {:?} after the fault ended", restored.elapsed());
    assert!(restored.elapsed() <= REPAIR);
    let s = reg.status();
    assert_eq!(s.state, RegistrationState::Registered);
    let new_lease = s.lease.expect("lease");
    assert_ne!(new_lease, lease, "a new lease after expiry");
    assert_eq!(s.slot, Some(slot), "the old slot was free and kept");
    assert_eq!(record(&etcd, "n1").map(|r| r.slot), Some(slot));
    assert!(s.lease_grants >= 2);

    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    assert!(
        seen.iter()
            .any(|e| matches!(e, RegistrationEvent::LeaseLost { lease: l } if *l == lease)),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(
            |e| matches!(e, RegistrationEvent::ReRegistered { lease: l, .. } if *l == new_lease)
        ),
        "{seen:?}"
    );
}

#[test]
fn lease_revoked_from_outside_is_replaced_within_two_seconds() {
    let etcd = Etcd::start();
    let rt = runtime();
    let c = client(&rt, etcd.endpoint());
    let reg = spawn(&rt, &c, "n1");
    let (lease, slot) = wait_registered(&rt, &reg);

    let out = etcd.etcdctl(&["lease", "revoke", &format!("{lease:x}")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = Instant::now();
    let new_lease = eventually(REPAIR, "re-registered under a new lease", || {
        let s = reg.status();
        let fresh = s.lease.filter(|l| *l != lease);
        (s.state == RegistrationState::Registered && record(&etcd, "n1").is_some())
            .then_some(fresh)
            .flatten()
    });
    eprintln!("repaired {:?} after the fault ended", revoked.elapsed());
    assert!(revoked.elapsed() <= REPAIR);
    assert_ne!(new_lease, lease);
    assert_eq!(reg.status().slot, Some(slot), "slot kept");
    assert_eq!(slot_value(&etcd, slot).as_deref(), Some("n1"));
}

#[test]
fn record_deleted_from_outside_is_put_back_within_two_seconds() {
    let etcd = Etcd::start();
    let rt = runtime();
    let c = client(&rt, etcd.endpoint());
    let reg = spawn(&rt, &c, "n1");
    let (lease, _) = wait_registered(&rt, &reg);
    let mut events = reg.events();

    let key = keyspace().node_key(&id("n1"));
    let out = etcd.etcdctl(&["del", &key]);
    assert!(out.status.success());
    assert_eq!(record(&etcd, "n1"), None);
    let deleted = Instant::now();
    eventually(REPAIR, "record put back", || record(&etcd, "n1").map(drop));
    eprintln!("repaired {:?} after the fault ended", deleted.elapsed());
    assert!(deleted.elapsed() <= REPAIR);
    assert_eq!(reg.status().lease, Some(lease), "the lease was alive: kept");
    let restored = rt.block_on(async {
        tokio::time::timeout(LONG, async {
            loop {
                match events.recv().await {
                    Ok(RegistrationEvent::RecordRestored) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
    });
    assert_eq!(restored, Ok(true), "a RecordRestored event");

    // An altered record is put back too.
    etcd.put(&key, r#"{"garbage":true}"#);
    eventually(REPAIR, "altered record repaired", || {
        value(&etcd, &key)
            .filter(|v| NodeRecord::parse("n1", v.as_bytes()).is_ok())
            .map(drop)
    });
}

#[test]
fn second_instance_with_the_same_id_is_refused_then_takes_over_when_the_first_dies() {
    let etcd = Etcd::start();
    let rt = runtime();
    let c = client(&rt, etcd.endpoint());
    let first = spawn(&rt, &c, "n1");
    wait_registered(&rt, &first);
    let first_instance = first.instance().to_owned();

    // While the first lives, a second is refused after the claim timeout (2×TTL).
    let second = spawn(&rt, &c, "n1");
    let started = Instant::now();
    let err = rt.block_on(async {
        tokio::time::timeout(LONG, second.stopped())
            .await
            .expect("gives up in time")
    });
    let waited = started.elapsed();
    match &err {
        RegistryError::IdTaken {
            id,
            holder_instance,
            ..
        } => {
            assert_eq!(id.as_str(), "n1");
            assert_eq!(holder_instance, &first_instance);
        }
        other => panic!("expected IdTaken, got {other:?}"),
    }
    assert_eq!(err.exit_code(), 4);
    assert!(err.to_string().contains(&first_instance), "{err}");
    assert!(
        waited >= 2 * TTL,
        "gave up after {waited:?}, before the claim timeout"
    );
    assert_eq!(second.status().state, RegistrationState::IdTaken);
    assert_eq!(
        record(&etcd, "n1").map(|r| r.instance),
        Some(first_instance.clone()),
        "the refused instance wrote nothing"
    );

    // A third instance takes over within the claim timeout once the first dies.
    let third = spawn(&rt, &c, "n1");
    eventually(LONG, "the third instance waits for the id", || {
        third.status().id_holder.map(drop)
    });
    drop(first);
    let (_, slot) = wait_registered(&rt, &third);
    let r = record(&etcd, "n1").expect("record");
    assert_eq!(r.instance, third.instance());
    assert_eq!(slot_value(&etcd, slot).as_deref(), Some("n1"));
}

#[test]
fn twenty_concurrent_registrations_get_twenty_distinct_slots() {
    let etcd = Etcd::start();
    let rt = runtime();
    let c = client(&rt, etcd.endpoint());
    let regs: Vec<Registration> = (0..20).map(|i| spawn(&rt, &c, &format!("n{i}"))).collect();
    let slots: BTreeSet<u32> = regs
        .iter()
        .map(|r| wait_registered(&rt, r).1.get())
        .collect();
    assert_eq!(
        slots,
        (1..=20).collect(),
        "20 distinct slots, the lowest ones"
    );
    for (i, r) in regs.iter().enumerate() {
        let slot = r.status().slot.expect("slot");
        assert_eq!(
            slot_value(&etcd, slot),
            Some(format!("n{i}")),
            "slot key names its holder"
        );
    }
}

#[test]
fn one_dead_endpoint_of_two_does_not_fail_requests() {
    let etcd = Etcd::start();
    let dead = format!("http://127.0.0.1:{}", peerkeep_tests::proc::free_port());
    let rt = runtime();
    let c = rt
        .block_on(connect(&EtcdOptions {
            connect_timeout: Duration::from_millis(500),
            ..EtcdOptions::new([dead, etcd.endpoint()])
        }))
        .expect("connect is lazy");
    let failures: Vec<String> = rt.block_on(async {
        let mut failures = Vec::new();
        for _ in 0..200 {
            if let Err(e) = c.probe().await {
                failures.push(e.to_string());
            }
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} of 200 failed: {:?}",
        failures.len(),
        failures.first()
    );
}

#[test]
fn heavy_hung_etcd_is_detected_and_the_record_is_back_after_it_resumes() {
    let etcd = Etcd::start();
    let rt = runtime();
    let c = client(&rt, etcd.endpoint());
    let reg = spawn(&rt, &c, "n1");
    wait_registered(&rt, &reg);

    // SIGSTOP: connections stay open, nothing answers, no stream error arrives by itself.
    etcd.pause();
    eventually(LONG, "the silent keepalive stream is noticed", || {
        (reg.status().state == RegistrationState::Unconfirmed).then_some(())
    });
    std::thread::sleep(3 * TTL);
    etcd.resume();
    let resumed = Instant::now();
    eventually(REPAIR, "registered again after resume", || {
        (reg.status().state == RegistrationState::Registered && record(&etcd, "n1").is_some())
            .then_some(())
    });
    eprintln!("repaired {:?} after the fault ended", resumed.elapsed());
    std::thread::sleep(TTL);
    assert!(
        record(&etcd, "n1").is_some(),
        "still registered a TTL later"
    );
}

/// Regression: a slot key spelled with a non-canonical number (`slots/03`, `slots/+4`) was read
/// as slot 3 (4). A node it named chose that slot as "already ours", compared `slots/3` — a key
/// that does not exist — and retried the failing transaction forever, logging nothing.
#[test]
fn non_canonical_slot_keys_naming_the_node_do_not_stall_its_registration() {
    let etcd = Etcd::start();
    let slots = keyspace().slots_prefix();
    etcd.put(&format!("{slots}03"), "n1");
    etcd.put(&format!("{slots}+4"), "n1");
    let rt = runtime();
    let c = client(&rt, etcd.endpoint());
    let reg = spawn(&rt, &c, "n1");
    let (_, slot) = wait_registered(&rt, &reg);
    assert_eq!(slot.get(), 1, "the lowest real slot");
    assert_eq!(slot_value(&etcd, slot).as_deref(), Some("n1"));
    assert_eq!(record(&etcd, "n1").expect("record").slot, slot);
}
