//! The `Membership` view against a real etcd: puts and deletes, a watcher cut off while the
//! history it needs is compacted, etcd stopped and restarted, invalid entries of every kind, and
//! the address policy both ways.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use peerkeep_registry::{
    AddressPolicy, ClusterName, Etcd, EtcdOptions, Keyspace, Membership, MembershipSnapshot,
    connect, list_clusters, read_once,
};
use peerkeep_tests::{Etcd as EtcdServer, TcpProxy, eventually_async};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);
const LAX: AddressPolicy = AddressPolicy {
    allow_loopback: true,
};

fn keyspace() -> Keyspace {
    Keyspace::new("/t", "c".parse::<ClusterName>().expect("valid")).expect("valid prefix")
}

fn node_key(id: &str) -> String {
    format!("/t/clusters/c/nodes/{id}")
}

fn record(id: &str, state: &str, p2p: &str) -> String {
    json!({
        "id": id, "state": state, "slot": 1, "instance": "i-1",
        "endpoints": { "p2p": p2p, "health": "10.0.9.9:8080" },
        "version": "test", "started_at": "2026-11-26T10:00:00Z", "labels": {},
    })
    .to_string()
}

async fn client(url: &str) -> Etcd {
    let opts = EtcdOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..EtcdOptions::new([url])
    };
    connect(&opts).await.expect("options are valid")
}

fn ids(snap: &MembershipSnapshot) -> Vec<String> {
    snap.records.keys().map(|k| k.to_string()).collect()
}

/// Waits until the watcher's view holds exactly `want` (and is not stale).
async fn wait_for_ids(m: &Membership, want: &[&str]) -> Arc<MembershipSnapshot> {
    eventually_async(DEADLINE, &format!("view holds {want:?}"), || async {
        let s = m.snapshot();
        (s.initialized && s.stale_since.is_none() && ids(&s) == want).then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_puts_deletes_and_drain_requests() {
    let etcd = EtcdServer::start();
    let m = Membership::start(client(&etcd.endpoint()).await, keyspace(), LAX);
    etcd.put(&node_key("n1"), &record("n1", "starting", "10.0.0.1:3000"));
    wait_for_ids(&m, &["n1"]).await;

    etcd.put(&node_key("n1"), &record("n1", "ready", "10.0.0.1:3000"));
    etcd.put(&node_key("n2"), &record("n2", "ready", "10.0.0.2:3000"));
    etcd.put("/t/clusters/c/control/n2", r#"{"drain":true}"#);
    etcd.put("/t/clusters/c/slots/1", "n1");
    etcd.put(
        "/t/clusters/other/nodes/x",
        &record("x", "ready", "10.0.0.3:1"),
    );
    let s = eventually_async(DEADLINE, "n1 ready, n2 drain requested", || async {
        let s = m.snapshot();
        let ready = s.records.values().filter(|r| r.state.as_str() == "ready");
        (ready.count() == 2 && !s.drain_requested.is_empty()).then_some(s)
    })
    .await;
    assert_eq!(
        ids(&s),
        ["n1", "n2"],
        "the other cluster is not in the view"
    );
    assert_eq!(s.invalid_total, 0);

    assert!(etcd.etcdctl(&["del", &node_key("n1")]).status.success());
    let s = wait_for_ids(&m, &["n2"]).await;
    let fresh = read_once(&client(&etcd.endpoint()).await, &keyspace(), LAX)
        .await
        .expect("read");
    assert_eq!(s.records, fresh.records);
    assert_eq!(s.drain_requested, fresh.drain_requested);

    let clusters = list_clusters(&client(&etcd.endpoint()).await, &keyspace())
        .await
        .expect("list clusters");
    let names: Vec<String> = clusters.iter().map(|c| c.to_string()).collect();
    assert_eq!(names, ["c", "other"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_held_behind_across_compaction_ends_equal_to_fresh_read() {
    let etcd = EtcdServer::start();
    let proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], etcd.client_port())));
    let direct = client(&etcd.endpoint()).await;
    let m = Membership::start(client(&proxy.url()).await, keyspace(), LAX);
    // Never read until the end: a slow consumer must still end up with the latest view.
    let held = m.subscribe();
    etcd.put(&node_key("n1"), &record("n1", "ready", "10.0.0.1:3000"));
    etcd.put(&node_key("n2"), &record("n2", "ready", "10.0.0.2:3000"));
    let before = wait_for_ids(&m, &["n1", "n2"]).await;

    proxy.cut();
    eventually_async(DEADLINE, "view marked stale", || async {
        m.snapshot().stale_since.is_some().then_some(())
    })
    .await;
    assert_eq!(
        ids(&m.snapshot()),
        ["n1", "n2"],
        "a stale view keeps its records"
    );
    etcd.put(&node_key("n2"), &record("n2", "draining", "10.0.0.2:3000"));
    etcd.put(&node_key("n3"), &record("n3", "ready", "10.0.0.3:3000"));
    assert!(etcd.etcdctl(&["del", &node_key("n1")]).status.success());
    let revision = read_once(&direct, &keyspace(), LAX)
        .await
        .expect("read")
        .revision;
    let out = etcd.etcdctl(&["compact", &revision.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    proxy.restore();

    let fresh = read_once(&direct, &keyspace(), LAX).await.expect("read");
    let after = eventually_async(DEADLINE, "view re-read after compaction", || async {
        let s = m.snapshot();
        (s.stale_since.is_none() && s.records == fresh.records).then_some(s)
    })
    .await;
    assert!(
        after.resyncs > before.resyncs,
        "the compacted history forces a re-read: {} -> {}",
        before.resyncs,
        after.resyncs
    );
    assert_eq!(after.revision, fresh.revision);
    let latest = held.borrow().clone();
    assert_eq!(latest.records, fresh.records);
    assert_eq!(latest.revision, fresh.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_marks_view_stale_and_restart_makes_it_fresh_and_correct() {
    let mut etcd = EtcdServer::start();
    let m = Membership::start(client(&etcd.endpoint()).await, keyspace(), LAX);
    etcd.put(&node_key("n1"), &record("n1", "ready", "10.0.0.1:3000"));
    wait_for_ids(&m, &["n1"]).await;

    etcd.stop();
    let stale = eventually_async(DEADLINE, "view marked stale", || async {
        let s = m.snapshot();
        s.stale_since.is_some().then_some(s)
    })
    .await;
    assert_eq!(
        ids(&stale),
        ["n1"],
        "an outage does not look like an empty cluster"
    );

    etcd.start_again();
    etcd.put(&node_key("n2"), &record("n2", "ready", "10.0.0.2:3000"));
    let s = wait_for_ids(&m, &["n1", "n2"]).await;
    let fresh = read_once(&client(&etcd.endpoint()).await, &keyspace(), LAX)
        .await
        .expect("read");
    assert_eq!(s.records, fresh.records);
    assert_eq!(s.revision, fresh.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_entries_of_each_kind_are_skipped_and_counted_and_good_ones_stay() {
    let etcd = EtcdServer::start();
    let good = record("good", "ready", "10.0.0.1:3000");
    let big = json!({
        "id": "big", "state": "ready", "slot": 1, "instance": "i",
        "endpoints": { "p2p": "10.0.0.2:1" }, "labels": { "pad": "x".repeat(4100) },
    })
    .to_string();
    let bad_state = record("badstate", "sleeping", "10.0.0.1:1");
    let bad_ep_name = record("badname", "ready", "10.0.0.1:1").replace("\"p2p\"", "\"p 2p\"");
    let invalid: Vec<(String, String)> = vec![
        (node_key("notjson"), "not json".to_owned()),
        (node_key("big"), big),
        (
            node_key("mismatch"),
            record("someone-else", "ready", "10.0.0.1:1"),
        ),
        (node_key("bad id"), record("bad id", "ready", "10.0.0.1:1")),
        (node_key("badname"), bad_ep_name),
        (
            node_key("badep"),
            record("badep", "ready", "example.com:80"),
        ),
        (node_key("port0"), record("port0", "ready", "10.0.0.1:0")),
        (node_key("badstate"), bad_state),
        (node_key("zero"), record("zero", "ready", "0.0.0.0:3000")),
        ("/t/clusters/c/control/good".to_owned(), "drain".to_owned()),
    ];
    etcd.put(&node_key("good"), &good);
    etcd.put(&node_key("lo"), &record("lo", "ready", "127.0.0.1:3000"));
    for (key, value) in &invalid {
        etcd.put(key, value);
    }

    let strict = Membership::start(
        client(&etcd.endpoint()).await,
        keyspace(),
        AddressPolicy::default(),
    );
    let lax = Membership::start(client(&etcd.endpoint()).await, keyspace(), LAX);
    let s = wait_for_ids(&strict, &["good"]).await;
    assert_eq!(
        s.invalid_total,
        invalid.len() as u64 + 1,
        "{:#?}",
        s.skipped
    );
    assert_eq!(s.skipped.len(), invalid.len() + 1);
    assert!(
        s.skipped
            .iter()
            .any(|k| k.key.contains("nodes/lo") && k.reason.contains("loopback")),
        "loopback refused by default: {:#?}",
        s.skipped
    );
    assert!(
        s.skipped
            .iter()
            .any(|k| k.key == r#""/t/clusters/c/nodes/bad id""#),
        "keys are shown escaped: {:#?}",
        s.skipped
    );
    let l = wait_for_ids(&lax, &["good", "lo"]).await;
    assert_eq!(l.invalid_total, invalid.len() as u64, "{:#?}", l.skipped);
    assert!(
        l.skipped.iter().any(|k| k.key.contains("nodes/zero")),
        "0.0.0.0 is refused even with allow_loopback"
    );

    // A valid value replacing an invalid one is picked up; the count only grows with new
    // invalid revisions.
    etcd.put(
        &node_key("badstate"),
        &record("badstate", "ready", "10.0.0.5:1"),
    );
    let s = wait_for_ids(&strict, &["badstate", "good"]).await;
    assert_eq!(s.invalid_total, invalid.len() as u64 + 1);
    assert_eq!(s.skipped.len(), invalid.len());
}

/// A SIGSTOPped etcd keeps its connections open and answers nothing; only the connection's
/// HTTP/2 pings (10 s interval, 5 s timeout) reveal it, so this takes ~15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_hung_etcd_is_noticed_as_stale_and_recovers_when_it_answers_again() {
    let etcd = EtcdServer::start();
    let m = Membership::start(client(&etcd.endpoint()).await, keyspace(), LAX);
    etcd.put(&node_key("n1"), &record("n1", "ready", "10.0.0.1:3000"));
    let first = m.first_read().await;
    assert!(first.initialized);
    wait_for_ids(&m, &["n1"]).await;

    etcd.pause();
    let stale = eventually_async(Duration::from_secs(45), "hung etcd noticed", || async {
        let s = m.snapshot();
        s.is_stale().then_some(s)
    })
    .await;
    assert_eq!(ids(&stale), ["n1"]);
    etcd.resume();
    etcd.put(&node_key("n2"), &record("n2", "ready", "10.0.0.2:3000"));
    wait_for_ids(&m, &["n1", "n2"]).await;
}

/// An etcd restored or wiped comes back with a lower revision; a watch resumed at the old
/// revision would wait forever for revisions that now mean something else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_wiped_and_restarted_with_lower_revision_is_read_again() {
    let mut etcd = EtcdServer::start();
    let m = Membership::start(client(&etcd.endpoint()).await, keyspace(), LAX);
    for i in 0..10 {
        etcd.put(
            &node_key("old"),
            &record("old", "ready", &format!("10.0.0.1:{}", 3000 + i)),
        );
    }
    wait_for_ids(&m, &["old"]).await;
    let before = m.snapshot();

    etcd.stop();
    std::fs::remove_dir_all(etcd.data_dir()).expect("wipe etcd data");
    etcd.start_again();
    etcd.put(&node_key("new"), &record("new", "ready", "10.0.0.2:3000"));
    let after = wait_for_ids(&m, &["new"]).await;
    assert!(
        after.revision < before.revision,
        "{} vs {}",
        after.revision,
        before.revision
    );
    assert!(after.resyncs > before.resyncs);
}

/// Regression: after a stream break etcd sends the watcher's whole backlog (up to 1000
/// revisions) in one watch response. Above 4 MiB the client refuses that message ("message
/// length too large"); resuming at the same revision failed the same way forever and the view
/// stayed stale. The watcher must read the (paged) prefix again instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_backlog_beyond_one_grpc_message_is_read_again_instead_of_staying_stale() {
    let etcd = EtcdServer::start();
    let proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], etcd.client_port())));
    let direct = client(&etcd.endpoint()).await;
    let m = Membership::start(client(&proxy.url()).await, keyspace(), LAX);
    etcd.put(&node_key("n1"), &record("n1", "ready", "10.0.0.1:3000"));
    let before = wait_for_ids(&m, &["n1"]).await;

    proxy.cut();
    eventually_async(DEADLINE, "view marked stale", || async {
        m.snapshot().stale_since.is_some().then_some(())
    })
    .await;
    // Six values of 900 KiB, one revision each (etcd refuses requests above 1.5 MiB): a
    // 5.4 MiB backlog. They are invalid records (above 4 KiB) and only have to be skipped.
    let big: Vec<(Vec<u8>, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                node_key(&format!("big{i}")).into_bytes(),
                vec![b'x'; 900 * 1024],
            )
        })
        .collect();
    etcd.put_raw(&big).await;
    etcd.put(&node_key("n2"), &record("n2", "ready", "10.0.0.2:3000"));
    proxy.restore();

    let fresh = read_once(&direct, &keyspace(), LAX).await.expect("read");
    assert_eq!(fresh.skipped.len(), big.len());
    let after = eventually_async(DEADLINE, "view fresh and equal to a read", || async {
        let s = m.snapshot();
        (s.stale_since.is_none() && s.records == fresh.records && s.revision == fresh.revision)
            .then_some(s)
    })
    .await;
    assert_eq!(ids(&after), ["n1", "n2"]);
    assert_eq!(after.skipped.len(), big.len(), "{:#?}", after.skipped);
    assert!(after.resyncs > before.resyncs, "the backlog is read again");
}
