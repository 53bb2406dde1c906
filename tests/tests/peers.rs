//! Peer keeping end to end: real devnodes under real agents (Wavelet adapter), real etcd.
//!
//! Deadlines here are generous; the tight convergence numbers are measured by
//! `scripts/bench peers` and recorded in docs/benchmarks.md.

use std::time::{Duration, Instant};

use peerkeep_tests::fleet::{FleetConfig, FleetNode, connected};
use peerkeep_tests::{Etcd, TcpProxy, eventually};

const K: usize = 3;

fn config(etcd: &str, ttl: &str) -> FleetConfig {
    FleetConfig {
        etcd: etcd.to_owned(),
        min_peers: K,
        lease_ttl: ttl.to_owned(),
        agent_args: vec!["--peer-poll".into(), "500ms".into()],
    }
}

fn start_fleet(cfg: &FleetConfig, n: usize, prefix: &str) -> Vec<FleetNode> {
    (0..n)
        .map(|i| FleetNode::start(cfg, &format!("{prefix}{i}"), i == 0))
        .collect()
}

/// Degrees of the nodes that answer, with the ids of their peers.
fn adjacency(nodes: &[FleetNode]) -> Option<Vec<(String, Vec<String>)>> {
    nodes
        .iter()
        .map(|n| Some((n.id.clone(), n.peer_ids()?)))
        .collect()
}

fn all_at_least(nodes: &[FleetNode], k: usize) -> Option<Vec<(String, Vec<String>)>> {
    let adj = adjacency(nodes)?;
    adj.iter().all(|(_, p)| p.len() >= k).then_some(adj)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until the fleet is quiet: no connect in flight and no connect or disconnect counted
/// during one quiet window of three peer-poll rounds. Returns the counters.
fn wait_quiet(nodes: &[&FleetNode]) -> Vec<(f64, f64)> {
    eventually(
        Duration::from_secs(60),
        "the fleet stops changing its peers",
        || {
            let idle = |nodes: &[&FleetNode]| {
                nodes
                    .iter()
                    .all(|n| n.status().is_some_and(|s| s["keeper"]["in_flight"] == 0))
            };
            let before = churn_counters(nodes);
            if !idle(nodes) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1500));
            (idle(nodes) && churn_counters(nodes) == before).then_some(before)
        },
    )
}

fn counter(n: &FleetNode, name: &str) -> f64 {
    n.metric(name).unwrap_or(f64::NAN)
}

fn churn_counters(nodes: &[&FleetNode]) -> Vec<(f64, f64)> {
    nodes
        .iter()
        .map(|n| {
            (
                counter(n, "peerkeep_agent_peer_connects_total"),
                counter(n, "peerkeep_agent_peer_disconnects_total"),
            )
        })
        .collect()
}

#[test]
fn heavy_peers_thirty_nodes_converge_to_a_connected_graph() {
    let etcd = Etcd::start();
    let cfg = config(&etcd.endpoint(), "5s");
    let nodes = start_fleet(&cfg, 30, "n");
    // Converged: every node between K and max (2K) at the same time. The first nodes collect
    // extra links while the fleet is still starting; trimming brings them back under the max.
    let last = std::cell::RefCell::new(None);
    let converged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(
            Duration::from_secs(90),
            "every node has K..=2K peers",
            || {
                let adj = adjacency(&nodes);
                last.replace(adj.clone());
                adj.filter(|adj| adj.iter().all(|(_, p)| (K..=2 * K).contains(&p.len())))
            },
        )
    }));
    let adj = converged.unwrap_or_else(|_| {
        let degrees: Vec<(String, usize)> = last
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|(id, p)| (id, p.len()))
            .collect();
        let silent: Vec<String> = nodes
            .iter()
            .filter(|n| n.ledger().is_none())
            .map(|n| format!("{}: {}", n.id, tail(&n.log(), 5)))
            .collect();
        panic!("no convergence within 90 s; last degrees: {degrees:?}; not answering: {silent:#?}")
    });
    let degrees: Vec<usize> = adj.iter().map(|(_, p)| p.len()).collect();
    let (min, max) = (
        degrees.iter().min().copied().unwrap_or(0),
        degrees.iter().max().copied().unwrap_or(0),
    );
    eprintln!("30 nodes, K={K}: degree min {min}, max {max}, all {degrees:?}");
    assert!(max <= 2 * K, "a node exceeds --max-peers (2K): {degrees:?}");
    assert!(connected(&adj), "the peer graph is not connected: {adj:?}");
    // Well mixed: rendezvous ranking spreads the inbound load, so no node collects most links.
    assert!(max - min <= K, "degree spread too wide: {degrees:?}");
}

#[test]
fn heavy_peers_survivors_recover_through_the_adapter_before_leases_expire() {
    let etcd = Etcd::start();
    // A 60 s lease: the dead nodes stay registered (and stay candidates) for the whole test.
    let cfg = config(&etcd.endpoint(), "60s");
    let mut nodes = start_fleet(&cfg, 12, "r");
    eventually(Duration::from_secs(60), "every node has >= K peers", || {
        all_at_least(&nodes, K)
    });
    // Every node registered, so the dead ones stay in etcd (60 s leases) as candidates.
    eventually(Duration::from_secs(30), "all 12 nodes registered", || {
        let out = etcd.etcdctl(&[
            "get",
            "--prefix",
            "--keys-only",
            "/peerkeep/v1/clusters/default/nodes/",
        ]);
        (String::from_utf8_lossy(&out.stdout)
            .matches("/nodes/")
            .count()
            == 12)
            .then_some(())
    });
    let killed_at = Instant::now();
    let dead: Vec<FleetNode> = (0..4).map(|_| nodes.remove(nodes.len() - 1)).collect();
    for mut d in dead {
        d.kill9();
    }
    let adj = eventually(
        Duration::from_secs(40),
        "survivors back at >= K peers",
        || {
            let adj = adjacency(&nodes)?;
            // Only live nodes count: the survivors' lists must no longer hold the dead ones.
            let live: Vec<&String> = adj.iter().map(|(id, _)| id).collect();
            adj.iter()
                .all(|(_, ps)| ps.iter().filter(|p| live.contains(p)).count() >= K)
                .then_some(adj)
        },
    );
    let took = killed_at.elapsed();
    eprintln!("recovery after kill -9 of 4 of 12 nodes: {took:?}");
    assert!(
        took < Duration::from_secs(45),
        "recovery must come from the daemons' peer lists, well before the 60 s leases expire"
    );
    let records = etcd.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        "/peerkeep/v1/clusters/default/nodes/",
    ]);
    let keys = String::from_utf8_lossy(&records.stdout);
    assert!(
        keys.contains("/nodes/r11"),
        "dead nodes must still be registered: {keys}"
    );
    assert!(connected(&adj));
}

#[test]
fn heavy_peers_etcd_outage_disconnects_nothing() {
    let mut etcd = Etcd::start();
    let cfg = config(&etcd.endpoint(), "2s");
    let nodes = start_fleet(&cfg, 6, "e");
    eventually(Duration::from_secs(60), "every node has >= K peers", || {
        all_at_least(&nodes, K)
    });
    let all: Vec<&FleetNode> = nodes.iter().collect();
    let before = wait_quiet(&all);
    let peers_before = adjacency(&nodes).expect("all answer");
    etcd.stop();
    std::thread::sleep(Duration::from_secs(6)); // 3 × TTL with etcd down is the scenario itself.
    let during = adjacency(&nodes).expect("daemons answer while etcd is down");
    assert_eq!(
        churn_counters(&all).iter().map(|c| c.1).collect::<Vec<_>>(),
        before.iter().map(|c| c.1).collect::<Vec<_>>(),
        "no disconnect while etcd is down"
    );
    for ((id, a), (_, b)) in peers_before.iter().zip(&during) {
        for p in a {
            assert!(b.contains(p), "{id} lost peer {p} during the etcd outage");
        }
    }
    etcd.start_again();
    // Registrations come back; once they have, nothing churns.
    eventually(Duration::from_secs(30), "all registered again", || {
        let out = etcd.etcdctl(&[
            "get",
            "--prefix",
            "--keys-only",
            "/peerkeep/v1/clusters/default/nodes/",
        ]);
        (String::from_utf8_lossy(&out.stdout)
            .matches("/nodes/")
            .count()
            == nodes.len())
        .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3)); // several poll rounds, to see whether anything moves
    assert_eq!(
        churn_counters(&all),
        before,
        "connect/disconnect counters stay flat"
    );
}

#[test]
fn heavy_peers_drain_moves_peers_away_and_undrain_restores_candidacy() {
    let etcd = Etcd::start();
    let cfg = config(&etcd.endpoint(), "2s");
    let nodes = start_fleet(&cfg, 6, "d");
    eventually(Duration::from_secs(60), "every node has >= K peers", || {
        all_at_least(&nodes, K)
    });
    let target = &nodes[2];
    let out = std::process::Command::new(peerkeep_tests::proc::workspace_bin("peerkeep"))
        .args(["drain", &target.id, "--etcd-endpoints", &etcd.endpoint()])
        .output()
        .expect("peerkeep drain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let others: Vec<&FleetNode> = nodes.iter().filter(|n| n.id != target.id).collect();
    eventually(
        Duration::from_secs(30),
        "peers leave the drained node and replace it",
        || {
            let ok = others.iter().all(|n| {
                n.peer_ids().is_some_and(|p| {
                    !p.contains(&target.id) && p.len() >= (K).min(others.len() - 1)
                })
            });
            ok.then_some(())
        },
    );
    // The drained daemon itself keeps running.
    assert!(target.ledger().is_some(), "drain must not stop the daemon");
    let out = std::process::Command::new(peerkeep_tests::proc::workspace_bin("peerkeep"))
        .args(["undrain", &target.id, "--etcd-endpoints", &etcd.endpoint()])
        .output()
        .expect("peerkeep undrain");
    assert!(out.status.success());
    eventually(
        Duration::from_secs(30),
        "undrained node is peered again",
        || target.peer_ids().filter(|p| p.len() >= K).map(|_| ()),
    );
}

#[test]
fn heavy_peers_node_cut_off_from_etcd_keeps_its_peers() {
    let etcd = Etcd::start();
    let cfg = config(&etcd.endpoint(), "2s");
    let mut nodes = start_fleet(&cfg, 6, "c");
    let proxy = TcpProxy::start(([127, 0, 0, 1], etcd.client_port()).into());
    let cut = FleetNode::start_with_etcd(&cfg, &proxy.url(), "cut", false);
    eventually(Duration::from_secs(60), "every node has >= K peers", || {
        let mut all: Vec<&FleetNode> = nodes.iter().collect();
        all.push(&cut);
        all.iter()
            .all(|n| n.peer_ids().is_some_and(|p| p.len() >= K))
            .then_some(())
    });
    // Its view must hold the whole fleet before the cut: it can only replace dead peers from
    // what it knew.
    eventually(
        Duration::from_secs(30),
        "the node to cut sees every other node",
        || (cut.status()?["view"]["other_live"] == nodes.len()).then_some(()),
    );
    let cut_peers = cut.peer_ids().expect("answers");
    proxy.cut();
    // Its record expires; the others must not disconnect it (a vanished record is no reason).
    eventually(
        Duration::from_secs(20),
        "the cut-off node's record expires",
        || {
            let out = etcd.etcdctl(&["get", "/peerkeep/v1/clusters/default/nodes/cut"]);
            out.stdout.is_empty().then_some(())
        },
    );
    // Some of its peers die and new nodes join meanwhile.
    let victim_id = cut_peers.iter().find(|p| p.as_str() != "c0").cloned();
    if let Some(v) = &victim_id
        && let Some(pos) = nodes.iter().position(|n| &n.id == v)
    {
        nodes.remove(pos).kill9();
    }
    nodes.push(FleetNode::start(&cfg, "c-new1", false));
    nodes.push(FleetNode::start(&cfg, "c-new2", false));
    let recovered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(
            Duration::from_secs(30),
            "the cut-off node stays at >= K live peers",
            || {
                let live: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
                cut.peer_ids()
                    .filter(|p| p.iter().filter(|x| live.contains(&x.as_str())).count() >= K)
                    .map(|_| ())
            },
        )
    }));
    if recovered.is_err() {
        panic!(
            "cut-off node did not recover: peers {:?}, status {}, log:\n{}",
            cut.peer_ids(),
            cut.status().map(|s| s.to_string()).unwrap_or_default(),
            tail(&cut.log(), 30)
        );
    }
    let kept = cut.peer_ids().expect("answers");
    for p in &cut_peers {
        if Some(p) != victim_id.as_ref() {
            assert!(
                kept.contains(p),
                "cut-off node lost live peer {p}: {kept:?}"
            );
        }
    }
    let mut all: Vec<&FleetNode> = nodes.iter().collect();
    all.push(&cut);
    let before = wait_quiet(&all);
    proxy.restore();
    eventually(Duration::from_secs(20), "registered again", || {
        let out = etcd.etcdctl(&["get", "/peerkeep/v1/clusters/default/nodes/cut"]);
        (!out.stdout.is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3)); // poll rounds after reconnection
    let after = churn_counters(&all);
    let disconnects: f64 = after.iter().zip(&before).map(|(a, b)| a.1 - b.1).sum();
    let logged: Vec<String> = nodes
        .iter()
        .flat_map(|n| {
            n.log()
                .lines()
                .filter(|l| l.contains("keeper::run: disconnect"))
                .map(|l| format!("{}: {l}", n.id))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(disconnects, 0.0, "reconnection must not churn: {logged:#?}");
}
