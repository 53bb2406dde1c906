//! Docker end-to-end smoke test of the demo stack (issue 8): the images build without a
//! registry, `scripts/demo` brings etcd, the lb, the producer and 4 nodes up healthy, the
//! registry shows the 4 nodes ready with distinct slots, a GET through the lb answers (on the
//! shared frontend and on a node's own per-slot port), and `scripts/demo down` leaves no
//! container, network or volume of the project behind.
//!
//! The stack is driven through `scripts/demo` — the command users run — under a project name,
//! host ports and a subnet of its own (so a demo the user is running is left alone). The
//! harness in `peerkeep_tests::docker` bounds every command, and its project guard runs
//! `down --volumes` when the test ends, panics included. Without a Docker engine the test is
//! skipped with a message, except under `CI=true`, where that is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use peerkeep_tests::docker::{
    DemoStack, IMAGE_TAG, docker_available, ensure_images, free_subnet, http_get, poll,
    registry_ls, repo_dir, run, run_ok,
};

const TEST: &str = "heavy_e2e_demo_smoke";
/// The stack: etcd, lb, producer and this many `node` replicas.
const NODES: usize = 4;
/// `scripts/demo up` bounds its own wait for health (PEERKEEP_DEMO_TIMEOUT, set below); this
/// is the outer bound around it.
const UP_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DOWN_TIMEOUT: Duration = Duration::from_secs(3 * 60);
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// `GET /ledger` on 127.0.0.1:`port` answers 200.
fn ledger_ok(port: u16) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match http_get(addr, "/ledger", Duration::from_secs(5))? {
        (200, _) => Ok(()),
        (code, body) => Err(format!("HTTP {code}: {body}")),
    }
}

#[test]
fn heavy_e2e_demo_smoke() {
    if !docker_available(TEST) {
        return;
    }
    let started = Instant::now();
    let mut phases: Vec<(&str, Duration)> = Vec::new();
    let mut phase_start = Instant::now();
    let mut phase_done = |name: &'static str| {
        phases.push((name, phase_start.elapsed()));
        eprintln!(
            "{TEST}: phase {name}: {:.1}s",
            phase_start.elapsed().as_secs_f64()
        );
        phase_start = Instant::now();
    };

    // --- images, from the binaries this test run built (images/build, skipped when current) --
    ensure_images();
    phase_done("images");

    // --- the demo, under a project, ports and subnet of its own ----------------------------
    // The guard (and its `down`) exists before anything is started.
    let subnet = free_subnet();
    let stack = DemoStack::new("smoke", &[], &[("PEERKEEP_DATA_SUBNET", &subnet)]);
    let node_ports = stack.lb_port + 2;
    let demo = || {
        let mut cmd = Command::new(repo_dir().join("scripts/demo"));
        cmd.current_dir(repo_dir())
            .env("PEERKEEP_PROJECT", &stack.project.name)
            .env("PEERKEEP_IMAGE_TAG", IMAGE_TAG)
            .env("PEERKEEP_RESTART", "no")
            .env("PEERKEEP_LB_PORT", stack.lb_port.to_string())
            .env("PEERKEEP_LB_METRICS_PORT", stack.metrics_port.to_string())
            .env(
                "PEERKEEP_LB_NODE_PORTS",
                format!("{node_ports}-{}", node_ports + 15),
            )
            .env("PEERKEEP_DATA_SUBNET", &subnet)
            .env("PEERKEEP_DEMO_TIMEOUT", "180");
        cmd
    };
    let up = run(
        demo().args(["up", "--no-build", "--nodes", &NODES.to_string()]),
        UP_TIMEOUT,
    );
    assert!(
        up.ok,
        "scripts/demo up failed (exit {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        up.code, up.stdout, up.stderr
    );
    phase_done("up (all healthy)");

    // --- every container healthy ------------------------------------------------------------
    let containers = stack.project.containers(None);
    assert_eq!(
        containers.len(),
        3 + NODES,
        "etcd, lb, producer and {NODES} nodes"
    );
    let unhealthy: Vec<_> = containers
        .iter()
        .filter(|c| c.status != "running" || c.health != "healthy")
        .map(|c| format!("{} {}/{}", c.name, c.status, c.health))
        .collect();
    assert!(unhealthy.is_empty(), "not healthy: {unhealthy:?}");

    // --- the registry: the 4 nodes ready, every slot distinct --------------------------------
    let lb = stack.lb();
    // The `node` replicas (the producer is checked with the rest of the slots).
    let node_ids: BTreeSet<String> = stack
        .project
        .containers(Some("node"))
        .iter()
        .map(|c| c.node_id())
        .collect();
    assert_eq!(node_ids.len(), NODES, "{NODES} distinct node ids");
    let slots = poll(
        READY_TIMEOUT,
        "4 ready nodes in `peerkeep ls --json`",
        || {
            let records = registry_ls(&lb)?;
            let mut slots = BTreeMap::new();
            for id in &node_ids {
                let r = records
                    .get(id)
                    .ok_or_else(|| format!("node {id} not registered: {records:?}"))?;
                if r.state != "ready" {
                    return Err(format!("node {id} is {}", r.state));
                }
                slots.insert(id.clone(), r.slot);
            }
            let all: Vec<u64> = records.values().map(|r| r.slot).collect();
            if all.iter().collect::<BTreeSet<_>>().len() != all.len() {
                return Err(format!("slots are not distinct: {records:?}"));
            }
            Ok(slots)
        },
    );
    eprintln!("{TEST}: ready nodes and their slots: {slots:?}");
    phase_done("registry ready");

    // --- traffic through the lb: the shared frontend and one node's own port -----------------
    poll(
        Duration::from_secs(30),
        "GET /ledger through the lb",
        || ledger_ok(stack.lb_port),
    );
    let (some_node, slot) = slots.iter().next().expect("4 nodes");
    let slot_port = node_ports + u16::try_from(*slot - 1).expect("a small slot");
    poll(
        Duration::from_secs(30),
        &format!("GET /ledger on node {some_node}'s own lb port (slot {slot})"),
        || ledger_ok(slot_port),
    );
    phase_done("traffic");

    // --- down leaves nothing behind -------------------------------------------------------------
    run_ok(demo().arg("down"), DOWN_TIMEOUT);
    let left = stack.project.leftovers();
    assert!(
        left.is_empty(),
        "left behind by `scripts/demo down`: {left:?}"
    );
    phase_done("down");

    eprintln!(
        "{TEST}: {:.1}s in all; {}",
        started.elapsed().as_secs_f64(),
        phases
            .iter()
            .map(|(n, d)| format!("{n} {:.1}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Every `${VARIABLE}` the compose files read is documented in docs/compose.md, so the settings
/// table can't drift from the files. (No Docker needed.)
#[test]
fn compose_settings_are_documented() {
    let repo = repo_dir();
    let docs = fs::read_to_string(repo.join("docs/compose.md")).expect("docs/compose.md");
    let mut undocumented = BTreeSet::new();
    for file in [
        "docker-compose.yml",
        "etcd-cluster.yml",
        "litecoind.yml",
        "stack.yml",
    ] {
        let text = fs::read_to_string(repo.join("compose").join(file)).expect("compose file");
        for (_, rest) in text.match_indices("${").map(|(i, _)| text.split_at(i + 2)) {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() && !docs.contains(&format!("`{name}`")) {
                undocumented.insert(format!("{name} (compose/{file})"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "settings missing from docs/compose.md: {undocumented:?}"
    );
}
