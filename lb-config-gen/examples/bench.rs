//! Benchmarks of the pure path and the runtime API, against the real haproxy on this machine:
//!
//! - build + render, and `haproxy -c`, for 100, 1,000 and 10,000 servers (one backend, and
//!   10,000 spread over 100 backends);
//! - one runtime API batch that fills 1,000 empty slots (4,000 commands) on a running HAProxy;
//! - `wrk` throughput straight to one small HTTP backend and through HAProxy to it, same run.
//!
//! `cargo run -p lb-config-gen --example bench` (or `scripts/bench-lb`). Servers point at
//! closed ports on 127.0.0.0/8, so no traffic leaves the host.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lb_config_gen::haproxy::runtime_api::RuntimeApi;
use lb_config_gen::{Apply, Config, build, diff, render};
use peerkeep_registry::{AddressPolicy, MembershipSnapshot, NodeRecord};

fn config(dir: &Path, services: usize, capacity: usize) -> Config {
    config_with(dir, services, capacity, "")
}

fn config_with(dir: &Path, services: usize, capacity: usize, extra: &str) -> Config {
    let d = dir.display();
    let mut text = format!(
        "[haproxy]\nconfig = \"{d}/haproxy.cfg\"\nmaster_socket = \"{d}/master.sock\"\n\
         stats_socket = \"{d}/admin.sock\"\nstate_file = \"{d}/state\"\n"
    );
    for i in 0..services {
        text.push_str(&format!(
            "[[services]]\nname = \"svc{i}\"\nbind = \"127.0.0.1:{}\"\nendpoint = \"api\"\n\
             capacity = {capacity}\n{extra}",
            30_000 + i
        ));
    }
    Config::parse(Path::new("bench.toml"), &text).unwrap_or_else(|e| panic!("{e}"))
}

fn snapshot(n: usize) -> MembershipSnapshot {
    let records = (1..=n).map(|i| {
        let ip = format!("127.{}.{}.{}", 1 + i / 65_536, (i / 256) % 256, i % 256);
        let json = serde_json::json!({
            "id": format!("node-{i}"), "state": "ready", "slot": i, "instance": "bench",
            "endpoints": { "api": format!("{ip}:9"), "health": format!("{ip}:10") },
        });
        NodeRecord::parse(&format!("node-{i}"), json.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"))
    });
    MembershipSnapshot::from_records(
        records,
        1,
        AddressPolicy {
            allow_loopback: true,
        },
    )
}

fn haproxy_check(path: &Path) -> Duration {
    let started = Instant::now();
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("haproxy: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

fn render_and_check(dir: &Path, servers: usize, services: usize) {
    let c = config(dir, services, servers / services);
    // Each service sees every record; slots beyond its capacity would grow it, so give each
    // service its share.
    let snap = snapshot(servers / services);
    let started = Instant::now();
    let (model, _) = build(&c, &snap, &BTreeMap::new());
    let text = render(&model);
    let render_time = started.elapsed();
    let path = dir.join("check.cfg");
    std::fs::write(&path, text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let check_time = haproxy_check(&path);
    println!(
        "| {servers} | {services} | {:.1} ms | {:.0} ms | {} KiB |",
        render_time.as_secs_f64() * 1e3,
        check_time.as_secs_f64() * 1e3,
        text.as_bytes().len() / 1024
    );
}

fn start_haproxy(dir: &Path, text: &str) -> std::process::Child {
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, text).unwrap_or_else(|e| panic!("{e}"));
    Command::new("haproxy")
        .arg("-W")
        .arg("-db")
        .arg("-S")
        .arg(dir.join("master.sock"))
        .arg("-f")
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("haproxy: {e}"))
}

async fn wait_for_socket(api: &RuntimeApi) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.servers_state().await.is_err() {
        assert!(Instant::now() < deadline, "haproxy did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn runtime_apply(dir: &Path) {
    let c = config(dir, 1, 1024);
    let (empty, _) = build(&c, &MembershipSnapshot::default(), &BTreeMap::new());
    let (full, _) = build(&c, &snapshot(1000), &empty.capacities());
    let mut child = start_haproxy(dir, render(&empty).as_str());
    let api = RuntimeApi::new(dir.join("admin.sock"));
    wait_for_socket(&api).await;
    let Apply::Runtime(cmds) = diff(Some(&empty), &full) else {
        panic!("1,000 joins within capacity must be a runtime change");
    };
    let started = Instant::now();
    let result = api.apply(&cmds).await;
    let elapsed = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    result.unwrap_or_else(|e| panic!("{e}"));
    println!(
        "\nruntime API: 1,000 server changes ({} commands, one connection): {:.1} ms",
        cmds.len(),
        elapsed.as_secs_f64() * 1e3
    );
}

/// A minimal keep-alive HTTP/1.1 server answering `200 ok` to everything.
async fn backend() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut have = 0;
                loop {
                    match c.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    // Answer each complete request head (GETs without bodies).
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if c.write_all(reply).await.is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                    }
                    if have == buf.len() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn wrk(url: &str) -> String {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", "-d5s", url])
        .output()
        .unwrap_or_else(|e| panic!("wrk: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .map_or("?", |l| l.trim_start_matches("Requests/sec:").trim());
    let latency = text
        .lines()
        .find(|l| l.trim_start().starts_with("Latency"))
        .map_or("?".to_owned(), |l| {
            l.split_whitespace().nth(1).unwrap_or("?").to_owned()
        });
    format!("{rps} req/s, mean latency {latency}")
}

async fn wrk_compare(dir: &Path) {
    let addr = backend().await;
    let c = config_with(dir, 1, 1, "check = { type = \"tcp\" }\n");
    let json = serde_json::json!({
        "id": "b", "state": "ready", "slot": 1, "instance": "bench",
        "endpoints": { "api": addr.to_string() },
    });
    let record =
        NodeRecord::parse("b", json.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let snap = MembershipSnapshot::from_records(
        [record],
        1,
        AddressPolicy {
            allow_loopback: true,
        },
    );
    let (model, _) = build(&c, &snap, &BTreeMap::new());
    let mut child = start_haproxy(dir, render(&model).as_str());
    wait_for_socket(&RuntimeApi::new(dir.join("admin.sock"))).await;
    let frontend = c.services[0].bind;
    let direct = tokio::task::spawn_blocking(move || wrk(&format!("http://{addr}/")));
    let direct = direct.await.unwrap_or_else(|e| panic!("{e}"));
    let via = tokio::task::spawn_blocking(move || wrk(&format!("http://{frontend}/")));
    let via = via.await.unwrap_or_else(|e| panic!("{e}"));
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "\nwrk -t2 -c32 -d5s, one backend:\n  direct:        {direct}\n  through HAProxy: {via}"
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    println!("| servers | backends | build + render | haproxy -c | file |");
    println!("|---|---|---|---|---|");
    for (servers, services) in [(100, 1), (1_000, 1), (10_000, 1), (10_000, 100)] {
        render_and_check(dir.path(), servers, services);
    }
    runtime_apply(dir.path()).await;
    wrk_compare(dir.path()).await;
}
