//! The `peerkeep` binary against a real etcd: every command, its JSON output, its exit codes,
//! and the discovery API served by `peerkeep serve`.
//!
//! The binary must be built first (`cargo build -p peerkeep-registry --bins`; `scripts/test`
//! does it).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use peerkeep_tests::proc::{die_with_test, free_addr, free_port, terminate, workspace_bin};
use peerkeep_tests::{Etcd, eventually_async};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);

fn bin() -> PathBuf {
    let p = workspace_bin("peerkeep");
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p peerkeep-registry --bins` first",
        p.display()
    );
    p
}

/// `peerkeep <args> --etcd-endpoints <url> --prefix /t --cluster c`, with a clean environment.
fn command(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .args(args)
        .args(["--etcd-endpoints", url, "--prefix", "/t", "--cluster", "c"])
        .stdin(Stdio::null());
    cmd
}

fn run(url: &str, args: &[&str]) -> Output {
    command(url, args).output().expect("run peerkeep")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(url: &str, args: &[&str]) -> String {
    let o = run(url, args);
    assert!(o.status.success(), "{args:?} failed: {}", stderr(&o));
    stdout(&o)
}

fn record(id: &str, state: &str, slot: u32, p2p: &str) -> String {
    json!({
        "id": id, "state": state, "slot": slot, "instance": "secret-instance",
        "endpoints": { "p2p": p2p, "api": "10.1.0.1:9000", "health": "10.1.0.1:8080" },
        "version": "test", "started_at": "2026-11-26T10:00:00Z",
        "labels": { "enode": "secret-label" },
    })
    .to_string()
}

fn node_key(id: &str) -> String {
    format!("/t/clusters/c/nodes/{id}")
}

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        terminate(&mut self.0, Duration::from_secs(5));
    }
}

fn spawn(mut cmd: Command) -> Running {
    die_with_test(&mut cmd);
    Running(cmd.spawn().expect("spawn peerkeep"))
}

#[test]
fn ls_and_get_print_table_and_json_and_get_fails_for_absent_nodes() {
    let etcd = Etcd::start();
    let url = etcd.endpoint();
    etcd.put(&node_key("n1"), &record("n1", "ready", 1, "10.0.0.1:3000"));
    etcd.put(
        &node_key("n2"),
        &record("n2", "starting", 2, "10.0.0.2:3000"),
    );
    etcd.put(&node_key("broken"), "not json");

    let out = run(&url, &["ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("P2P"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("n1") && lines[1].contains("10.0.0.1:3000"),
        "{table}"
    );
    assert!(stderr(&out).contains("1 invalid entries skipped"));

    let doc: Value = serde_json::from_str(&ok(&url, &["ls", "--json"])).expect("ls --json");
    assert_eq!(doc["nodes"].as_array().map(Vec::len), Some(2));
    assert_eq!(doc["nodes"][1]["state"], "starting");
    assert_eq!(doc["skipped"].as_array().map(Vec::len), Some(1));

    let rec: Value = serde_json::from_str(&ok(&url, &["get", "n1"])).expect("get JSON");
    assert_eq!(rec["endpoints"]["p2p"], "10.0.0.1:3000");
    assert_eq!(rec["slot"], 1);

    let absent = run(&url, &["get", "nope"]);
    assert_eq!(absent.status.code(), Some(1));
    assert!(
        stderr(&absent).contains("no node nope"),
        "{}",
        stderr(&absent)
    );
    let invalid = run(&url, &["get", "broken"]);
    assert_eq!(invalid.status.code(), Some(1));
    assert!(stderr(&invalid).contains("invalid record"));
    let usage = run(&url, &["get", "bad id"]);
    assert_eq!(
        usage.status.code(),
        Some(2),
        "a bad node id is a usage error"
    );
}

#[test]
fn drain_and_undrain_write_and_delete_the_control_key() {
    let etcd = Etcd::start();
    let url = etcd.endpoint();
    etcd.put(&node_key("n1"), &record("n1", "ready", 1, "10.0.0.1:3000"));
    let control = "/t/clusters/c/control/n1";

    assert!(ok(&url, &["drain", "n1"]).contains("drain requested"));
    let got = etcd.etcdctl(&["get", control, "--print-value-only"]);
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        r#"{"drain":true}"#
    );
    let doc: Value = serde_json::from_str(&ok(&url, &["ls", "--json"])).expect("ls --json");
    assert_eq!(doc["drain_requested"], json!(["n1"]));
    assert!(ok(&url, &["ls"]).contains("ready (drain requested)"));

    assert!(ok(&url, &["undrain", "n1"]).contains("withdrawn"));
    let got = etcd.etcdctl(&["get", control, "--print-value-only"]);
    assert!(String::from_utf8_lossy(&got.stdout).trim().is_empty());
    assert!(ok(&url, &["undrain", "n1"]).contains("nothing to do"));

    let ahead = run(&url, &["drain", "later"]);
    assert!(ahead.status.success());
    assert!(stderr(&ahead).contains("no valid record"));
}

#[test]
fn rm_deletes_a_dead_nodes_keys_and_warns_for_a_live_one() {
    let etcd = Etcd::start();
    let url = etcd.endpoint();
    etcd.put(
        &node_key("dead"),
        &record("dead", "ready", 1, "10.0.0.1:3000"),
    );
    etcd.put("/t/clusters/c/slots/1", "dead");
    etcd.put("/t/clusters/c/slots/2", "other");

    let out = run(&url, &["rm", "dead"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("slots [1]"), "{}", stdout(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let left = etcd.etcdctl(&["get", "/t/clusters/c/", "--prefix", "--keys-only"]);
    let left = String::from_utf8_lossy(&left.stdout);
    let keys: Vec<&str> = left.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        keys,
        ["/t/clusters/c/slots/2"],
        "only the other node's slot stays"
    );

    let again = run(&url, &["rm", "dead"]);
    assert_eq!(again.status.code(), Some(1));

    let grant = etcd.etcdctl(&["lease", "grant", "60"]);
    let lease = String::from_utf8_lossy(&grant.stdout)
        .split_whitespace()
        .nth(1)
        .expect("lease id in `lease grant` output")
        .to_owned();
    let value = record("live", "ready", 3, "10.0.0.3:3000");
    let put = etcd.etcdctl(&["put", "--lease", &lease, &node_key("live"), &value]);
    assert!(put.status.success());
    let out = run(&url, &["rm", "live"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let warning = stderr(&out);
    assert!(
        warning.contains("warning") && warning.contains("peerkeep drain live"),
        "{warning}"
    );
}

#[test]
fn every_command_exits_5_naming_the_endpoints_when_etcd_is_unreachable() {
    // One endpoint refuses connections, the other accepts them and never answers (a hung etcd).
    let refused = format!("http://127.0.0.1:{}", free_port());
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung = format!("http://{}", silent.local_addr().expect("addr"));
    let listen = free_addr().to_string();
    let commands: [&[&str]; 7] = [
        &["ls"],
        &["get", "n1"],
        &["watch"],
        &["drain", "n1"],
        &["undrain", "n1"],
        &["rm", "n1"],
        &["serve", "--listen", &listen],
    ];
    for url in [&refused, &hung] {
        for args in commands {
            let started = Instant::now();
            let out = command(url, args)
                .args([
                    "--etcd-connect-timeout",
                    "1s",
                    "--etcd-request-timeout",
                    "1s",
                ])
                .output()
                .expect("run peerkeep");
            let took = started.elapsed();
            assert_eq!(
                out.status.code(),
                Some(5),
                "{args:?} {url}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains(url.as_str()),
                "{args:?}: message names the endpoint: {}",
                stderr(&out)
            );
            assert!(
                took < Duration::from_secs(4),
                "{args:?} {url} took {took:?}"
            );
        }
    }
}

#[test]
fn watch_json_prints_added_changed_removed_with_revisions() {
    let etcd = Etcd::start();
    let url = etcd.endpoint();
    etcd.put(
        &node_key("n1"),
        &record("n1", "starting", 1, "10.0.0.1:3000"),
    );
    let mut cmd = command(&url, &["watch", "--json"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = spawn(cmd);
    let out = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line).expect("each line is one JSON object");
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let next = || rx.recv_timeout(DEADLINE).expect("a change line in time");

    let first = next();
    assert_eq!(
        (first["change"].as_str(), first["id"].as_str()),
        (Some("added"), Some("n1"))
    );
    etcd.put(&node_key("n1"), &record("n1", "ready", 1, "10.0.0.1:3000"));
    let changed = next();
    assert_eq!(changed["change"], "changed");
    assert_eq!(changed["record"]["state"], "ready");
    assert!(changed["revision"].as_i64() > first["revision"].as_i64());
    assert!(etcd.etcdctl(&["del", &node_key("n1")]).status.success());
    let removed = next();
    assert_eq!(removed["change"], "removed");
    assert!(removed["record"].is_null());

    let status = terminate(&mut child.0, Duration::from_secs(5)).expect("exit status");
    assert!(status.success(), "watch exits 0 on SIGTERM: {status}");
}

/// Starts `peerkeep serve` and waits until its view is loaded.
async fn serve(url: &str, extra: &[&str]) -> (Running, String) {
    let listen = free_addr();
    let mut cmd = command(url, &["serve", "--listen", &listen.to_string()]);
    cmd.args(extra).stdout(Stdio::null()).stderr(Stdio::null());
    let child = spawn(cmd);
    let base = format!("http://{listen}");
    let health = format!("{base}/healthz");
    eventually_async(DEADLINE, "discovery API healthy", || async {
        let r = reqwest::get(&health).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    (child, base)
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_nodes_rotating_seeds_health_and_metrics_from_the_view() {
    let mut etcd = Etcd::start();
    let url = etcd.endpoint();
    for (i, state) in ["ready", "ready", "ready", "starting"].iter().enumerate() {
        let n = i + 1;
        etcd.put(
            &node_key(&format!("n{n}")),
            &record(
                &format!("n{n}"),
                state,
                n as u32,
                &format!("10.0.0.{n}:3000"),
            ),
        );
    }
    let (_default, base) = serve(&url, &[]).await;
    let (_exposing, base_api) = serve(&url, &["--expose-endpoint", "api"]).await;

    let (_, clusters) = get_json(&format!("{base}/v1/clusters")).await;
    assert_eq!(clusters["clusters"], json!(["c"]));

    let (status, all) = get_json(&format!("{base}/v1/clusters/c/nodes")).await;
    assert_eq!(status, 200);
    assert_eq!(all["nodes"].as_array().map(Vec::len), Some(4));
    assert_eq!(all["stale"], false);
    let (_, ready) = get_json(&format!("{base}/v1/clusters/c/nodes?state=ready")).await;
    let ready = ready["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(ready.len(), 3);
    assert_eq!(
        ready[0]["endpoints"],
        json!({ "p2p": "10.0.0.1:3000" }),
        "only p2p by default"
    );
    let body = reqwest::get(format!("{base}/v1/clusters/c/nodes"))
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert!(
        !body.contains("secret-label") && !body.contains("secret-instance"),
        "labels and instance never exposed: {body}"
    );
    let (_, exposed) = get_json(&format!("{base_api}/v1/clusters/c/nodes?state=ready")).await;
    assert_eq!(
        exposed["nodes"][0]["endpoints"],
        json!({ "p2p": "10.0.0.1:3000", "api": "10.1.0.1:9000" })
    );
    let (status, _) = get_json(&format!("{base}/v1/clusters/other/nodes")).await;
    assert_eq!(status, 404);
    let (status, _) = get_json(&format!("{base}/v1/clusters/c/nodes?state=asleep")).await;
    assert_eq!(status, 400);

    let mut firsts = Vec::new();
    for _ in 0..3 {
        let (_, seeds) = get_json(&format!("{base}/v1/clusters/c/seeds?n=2")).await;
        let seeds = seeds["seeds"].as_array().cloned().unwrap_or_default();
        assert_eq!(seeds.len(), 2);
        assert!(
            seeds.iter().all(|s| s != "10.0.0.4:3000"),
            "seeds are ready nodes only"
        );
        firsts.push(seeds[0].clone());
    }
    assert_eq!(
        firsts,
        [
            json!("10.0.0.1:3000"),
            json!("10.0.0.2:3000"),
            json!("10.0.0.3:3000")
        ],
        "seed lists rotate between calls"
    );

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    for name in [
        "peerkeep_discovery_requests_total{route=\"seeds\"} 3",
        "peerkeep_discovery_view_revision ",
        "peerkeep_discovery_view_stale_seconds ",
        "peerkeep_discovery_invalid_records_total 0",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }

    // The view is served from memory: stopping etcd keeps the answers and flags them stale.
    etcd.stop();
    let health = format!("{base}/healthz");
    eventually_async(DEADLINE, "healthz 503 while etcd is down", || async {
        let r = reqwest::get(&health).await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    let (status, stale) = get_json(&format!("{base}/v1/clusters/c/nodes?state=ready")).await;
    assert_eq!(status, 200);
    assert_eq!(stale["stale"], true);
    assert_eq!(stale["nodes"].as_array().map(Vec::len), Some(3));
    etcd.start_again();
    eventually_async(DEADLINE, "healthz 200 once etcd is back", || async {
        let r = reqwest::get(&health).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

/// Runs `peerkeep <args>` with stdout a pipe whose reader has already gone away, as in
/// `peerkeep ls --json | true`, and returns its exit status and stderr.
fn run_with_closed_stdout(url: &str, args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut cmd = command(url, args);
    cmd.stdout(writer).stderr(Stdio::piped());
    let mut child = spawn(cmd);
    let mut err = child.0.stderr.take().expect("piped stderr");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "peerkeep {args:?} did not exit with its stdout closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut err, &mut text).expect("read stderr");
    (status, text)
}

/// Regression: `println!` panicked on a closed stdout ("failed printing to stdout: Broken
/// pipe", exit 101). A reader that goes away is a normal end for a command-line filter.
#[test]
fn closed_stdout_pipe_ends_every_printing_command_with_exit_0_not_a_panic() {
    let etcd = Etcd::start();
    let url = etcd.endpoint();
    etcd.put(&node_key("n1"), &record("n1", "ready", 1, "10.0.0.1:3000"));
    for args in [
        &["ls", "--json"][..],
        &["ls"],
        &["get", "n1"],
        &["watch"],
        &["watch", "--json"],
        &["drain", "n1"],
        &["undrain", "n1"],
    ] {
        let (status, err) = run_with_closed_stdout(&url, args);
        assert!(!err.contains("panicked"), "peerkeep {args:?}: {err}");
        assert_eq!(status.code(), Some(0), "peerkeep {args:?}: {err}");
    }
}
