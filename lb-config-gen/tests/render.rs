//! Snapshot tests of rendered configurations; every rendered file must pass real `haproxy -c`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use lb_config_gen::{Config, build, render};
use peerkeep_registry::{AddressPolicy, MembershipSnapshot, NodeRecord};

fn config(text: &str) -> Config {
    Config::parse(Path::new("t.toml"), text).expect("valid test config")
}

const TWO_SERVICES: &str = r#"
[haproxy]
config = "/tmp/lb/haproxy.cfg"
master_socket = "/tmp/lb/master.sock"
stats_socket = "/tmp/lb/admin.sock"
state_file = "/tmp/lb/state"

[[services]]
name = "rpc"
bind = "127.0.0.1:8080"
endpoint = "api"
capacity = 4
per_node = { bind_ip = "127.0.0.1", port_base = 9000 }

[[services]]
name = "p2p"
bind = "[::1]:3000"
mode = "tcp"
balance = "leastconn"
endpoint = "p2p"
capacity = 2
check = { type = "tcp", interval = "500ms", fall = 3, rise = 1 }
timeouts = { connect = "1s", server = "1m" }
"#;

fn record(id: &str, slot: u32, ip: &str) -> NodeRecord {
    let host = |port: u16| {
        if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        }
    };
    let json = serde_json::json!({
        "id": id, "state": "ready", "slot": slot, "instance": "i",
        "endpoints": { "api": host(9000), "health": host(8080), "p2p": host(3000) },
    });
    NodeRecord::parse(id, json.to_string().as_bytes()).expect("valid record")
}

fn snapshot(records: Vec<NodeRecord>) -> MembershipSnapshot {
    MembershipSnapshot::from_records(records, 7, AddressPolicy::default())
}

/// Runs the real `haproxy -c` on `text`.
fn assert_haproxy_accepts(text: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("haproxy must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "haproxy -c rejected:\n{stderr}\n{text}"
    );
    // The only acceptable warning is the state file not existing yet.
    for line in stderr.lines().filter(|l| l.contains("[WARNING]")) {
        assert!(
            line.contains("server state file"),
            "unexpected warning: {line}"
        );
    }
}

#[test]
fn empty_membership() {
    let c = config(TWO_SERVICES);
    let (m, _) = build(&c, &snapshot(vec![]), &BTreeMap::new());
    let r = render(&m);
    assert_haproxy_accepts(r.as_str());
    insta::assert_snapshot!(r.as_str());
}

#[test]
fn mixed_membership_with_ipv6() {
    let c = config(TWO_SERVICES);
    let (m, _) = build(
        &c,
        &snapshot(vec![
            record("node-1", 1, "10.0.0.1"),
            record("node-3", 3, "2001:db8::3"),
        ]),
        &BTreeMap::new(),
    );
    let r = render(&m);
    assert_haproxy_accepts(r.as_str());
    insta::assert_snapshot!(r.as_str());
}

#[test]
fn same_membership_renders_same_bytes_whatever_the_insertion_order() {
    let c = config(TWO_SERVICES);
    let a = vec![record("x", 2, "10.0.0.2"), record("y", 1, "10.0.0.1")];
    let b = vec![record("y", 1, "10.0.0.1"), record("x", 2, "10.0.0.2")];
    let ra = render(&build(&c, &snapshot(a), &BTreeMap::new()).0);
    let rb = render(&build(&c, &snapshot(b), &BTreeMap::new()).0);
    assert_eq!(ra, rb);
}

#[test]
fn grown_capacity_is_valid() {
    let c = config(TWO_SERVICES);
    let (m, _) = build(
        &c,
        &snapshot(vec![record("far", 9, "10.0.0.9")]),
        &BTreeMap::new(),
    );
    assert_eq!(m.backends[0].capacity, 16);
    let r = render(&m);
    assert_haproxy_accepts(r.as_str());
    assert!(
        r.as_str()
            .contains("frontend rpc:n16\n    bind 127.0.0.1:9016")
    );
}

#[test]
fn example_compose_config_parses_and_renders_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/lb.toml");
    let c = Config::load(&path).expect("compose/lb.toml must be valid");
    let (m, _) = build(
        &c,
        &snapshot(vec![record("n1", 1, "10.0.0.1")]),
        &BTreeMap::new(),
    );
    assert_haproxy_accepts(render(&m).as_str());
}
