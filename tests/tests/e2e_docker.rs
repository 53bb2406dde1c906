//! Docker end-to-end smoke test of the demo stack (issue 8): the images build without a
//! registry, `scripts/demo` brings etcd, the lb, the producer and 4 nodes up healthy, the
//! registry shows the 4 nodes ready with distinct slots, a GET through the lb answers, and
//! `scripts/demo down` leaves no container, network or volume of the project behind.
//!
//! It drives the real `docker` and compose CLIs against the machine's engine, under a project
//! name, host ports and a subnet of its own, so it neither touches nor collides with a demo
//! the user is running. Every command has a deadline; a guard runs `down --volumes` when the
//! test ends, panics included. Without a Docker engine the test is skipped with a message,
//! except under `CI=true`, where that is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peerkeep_tests::proc::workspace_bin;

/// The stack: etcd, lb, producer and this many `node` replicas.
const NODES: usize = 4;
/// Image tag used by this test, so a demo running from the `local` tag is left alone.
const IMAGE_TAG: &str = "e2e";
/// A cold machine bootstraps the Debian base image first (debootstrap + import): minutes.
const BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// `scripts/demo up` bounds its own wait for health (PEERKEEP_DEMO_TIMEOUT); this is the
/// outer bound around it.
const UP_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DOWN_TIMEOUT: Duration = Duration::from_secs(3 * 60);
const READY_TIMEOUT: Duration = Duration::from_secs(90);

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// What a finished command printed.
struct Output {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with a deadline (killed after it), capturing stdout and stderr through files so
/// a chatty child can never block on a full pipe.
fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let out = std::fs::File::create(&out_path).expect("stdout file");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let spawned = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn();
    let mut child = match spawned {
        Ok(child) => child,
        // Not there at all (no docker CLI): an ordinary failure, so callers can skip on it.
        Err(e) => {
            return Output {
                ok: false,
                code: None,
                stdout: String::new(),
                stderr: format!("cannot start {what}: {e}"),
            };
        }
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let mut stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if status.is_none() {
        stderr.push_str(&format!("\n[killed: still running after {timeout:?}]"));
    }
    Output {
        ok: status.is_some_and(|s| s.success()),
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
    }
}

/// Runs `cmd` and panics with its output unless it succeeds.
fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let what = format!("{cmd:?}");
    let out = run(cmd, timeout);
    assert!(
        out.ok,
        "{what} failed (exit {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.code, out.stdout, out.stderr
    );
    out.stdout
}

/// Why Docker can't be used here, if it can't.
fn docker_unavailable() -> Option<String> {
    let out = run(
        Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]),
        Duration::from_secs(20),
    );
    if !out.ok {
        return Some(format!(
            "no Docker engine answers `docker info`: {}",
            out.stderr.trim()
        ));
    }
    if compose_program().is_none() {
        return Some("neither docker-compose nor `docker compose` is installed".into());
    }
    None
}

/// `docker-compose` (v1) or `docker compose` (v2), whichever is installed.
fn compose_program() -> Option<Vec<String>> {
    let v1 = run(
        Command::new("docker-compose").arg("version"),
        Duration::from_secs(20),
    );
    if v1.ok {
        return Some(vec!["docker-compose".into()]);
    }
    let v2 = run(
        Command::new("docker").args(["compose", "version"]),
        Duration::from_secs(20),
    );
    v2.ok.then(|| vec!["docker".into(), "compose".into()])
}

/// `count` consecutive loopback ports that were free a moment ago.
fn free_port_range(count: u16) -> u16 {
    for _ in 0..200 {
        let base: u16 = rand::random_range(20_000..60_000);
        let all_free = (base..base + count)
            .all(|p| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], p))).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no {count} consecutive free loopback ports found");
}

/// A /24 in 10.213.0.0/16 that no Docker network on this engine uses (the demo's own default
/// is 10.213.0.0/24, the litecoind stack's 10.213.1.0/24).
fn free_subnet() -> String {
    let ids = run_ok(
        Command::new("docker").args(["network", "ls", "-q"]),
        Duration::from_secs(30),
    );
    let mut used = String::new();
    if !ids.trim().is_empty() {
        used = run_ok(
            Command::new("docker")
                .args([
                    "network",
                    "inspect",
                    "--format",
                    "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
                ])
                .args(ids.split_whitespace()),
            Duration::from_secs(30),
        );
    }
    for i in 0..230u32 {
        let octet = 16 + (std::process::id() + i) % 230;
        let subnet = format!("10.213.{octet}.0/24");
        if !used.contains(&format!("10.213.{octet}.")) {
            return subnet;
        }
    }
    panic!("no free 10.213.x.0/24 subnet for the test stack");
}

/// The test's compose project. Dropping it removes the project's containers, networks and
/// volumes, whether the test passed or panicked.
struct Stack {
    project: String,
    compose: Vec<String>,
    env: Vec<(String, String)>,
}

impl Stack {
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(repo_dir());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn compose(&self) -> Command {
        let mut cmd = self.command(&self.compose[0]);
        cmd.args(&self.compose[1..]).args([
            "--project-name",
            &self.project,
            "--file",
            "compose/docker-compose.yml",
        ]);
        cmd
    }

    fn demo(&self) -> Command {
        let mut cmd = self.command("scripts/demo");
        cmd.env("PEERKEEP_PROJECT", &self.project);
        cmd
    }

    /// Container ids of the project (`ps -q`, optionally one service).
    fn container_ids(&self, service: Option<&str>) -> Vec<String> {
        let mut cmd = self.compose();
        cmd.args(["ps", "-q"]).args(service);
        run_ok(&mut cmd, Duration::from_secs(60))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Objects of the project still present, by kind, from Docker's own labels.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = Vec::new();
        for (kind, args) in [
            ("container", vec!["ps", "-a", "-q", "--filter", &label]),
            ("network", vec!["network", "ls", "-q", "--filter", &label]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
        ] {
            let out = run_ok(Command::new("docker").args(&args), Duration::from_secs(30));
            left.extend(out.split_whitespace().map(|id| format!("{kind} {id}")));
        }
        left
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let mut cmd = self.compose();
        cmd.args(["down", "--volumes", "--remove-orphans", "--timeout", "20"]);
        let out = run(&mut cmd, DOWN_TIMEOUT);
        if !out.ok {
            eprintln!(
                "cleanup: `down` of project {} failed: {}\n{}",
                self.project, out.stdout, out.stderr
            );
        }
    }
}

/// `GET path` on 127.0.0.1:port; the status code, or why there is none.
fn http_get(port: u16, path: &str) -> Result<u16, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", head.lines().next()))
}

/// Polls `cond` once a second until it returns `Ok`, or panics with the last error.
fn poll<T>(deadline: Duration, what: &str, mut cond: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + deadline;
    loop {
        match cond() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= end => {
                panic!("timed out after {deadline:?} waiting for {what}; last: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Each container's (state, health), by name.
fn container_health(ids: &[String]) -> BTreeMap<String, String> {
    let out = run_ok(
        Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{.Name}} {{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
            ])
            .args(ids),
        Duration::from_secs(30),
    );
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, s)| (n.trim_start_matches('/').to_owned(), s.to_owned()))
        .collect()
}

#[test]
fn heavy_e2e_demo_smoke() {
    if let Some(why) = docker_unavailable() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and Docker is required: {why}");
        }
        eprintln!("SKIPPED heavy_e2e_demo_smoke: {why}");
        return;
    }
    let started = Instant::now();
    let mut phases: Vec<(&str, Duration)> = Vec::new();
    let mut phase_start = Instant::now();
    let mut phase_done = |name: &'static str| {
        phases.push((name, phase_start.elapsed()));
        eprintln!("phase {name}: {:?}", phase_start.elapsed());
        phase_start = Instant::now();
    };

    // --- images, from the binaries this test run already built ---------------------------
    let bin_dir = workspace_bin("peerkeep-agent")
        .parent()
        .expect("binary directory")
        .to_path_buf();
    for b in ["peerkeep", "peerkeep-agent", "lb-config-gen", "devnode"] {
        assert!(
            bin_dir.join(b).is_file(),
            "{} is missing: build the workspace's binaries first (cargo build --bins)",
            bin_dir.join(b).display()
        );
    }
    run_ok(
        Command::new(repo_dir().join("images/build"))
            .arg("--bin-dir")
            .arg(&bin_dir)
            .args(["--tag", IMAGE_TAG]),
        BUILD_TIMEOUT,
    );
    phase_done("images");

    // --- the demo, under a project, ports and subnet of its own ----------------------------
    // One block of ports: the lb's frontend, its metrics, then 16 per-node frontends.
    let lb_port = free_port_range(18);
    let metrics_port = lb_port + 1;
    let node_ports = lb_port + 2;
    let project = format!("peerkeep-e2e-{}", std::process::id());
    let stack = Stack {
        compose: compose_program().expect("checked above"),
        env: vec![
            ("PEERKEEP_IMAGE_TAG".into(), IMAGE_TAG.into()),
            ("PEERKEEP_LB_PORT".into(), lb_port.to_string()),
            ("PEERKEEP_LB_METRICS_PORT".into(), metrics_port.to_string()),
            (
                "PEERKEEP_LB_NODE_PORTS".into(),
                format!("{node_ports}-{}", node_ports + 15),
            ),
            ("PEERKEEP_DATA_SUBNET".into(), free_subnet()),
            // A crashing container shows up as exited instead of restarting in a loop.
            ("PEERKEEP_RESTART".into(), "no".into()),
            ("PEERKEEP_DEMO_TIMEOUT".into(), "180".into()),
        ],
        project,
    };
    let up = run(
        stack
            .demo()
            .args(["up", "--no-build", "--nodes", &NODES.to_string()]),
        UP_TIMEOUT,
    );
    assert!(
        up.ok,
        "scripts/demo up failed (exit {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        up.code, up.stdout, up.stderr
    );
    phase_done("up (healthy)");

    // --- every container healthy ------------------------------------------------------------
    let ids = stack.container_ids(None);
    assert_eq!(ids.len(), 3 + NODES, "etcd, lb, producer and {NODES} nodes");
    let health = container_health(&ids);
    let unhealthy: Vec<_> = health
        .iter()
        .filter(|(_, s)| *s != "running/healthy")
        .collect();
    assert!(unhealthy.is_empty(), "not healthy: {unhealthy:?}");

    // --- the registry: the 4 nodes ready, distinct slots --------------------------------------
    let lb = stack.container_ids(Some("lb")).remove(0);
    // Docker sets each container's host name to its short id, the agent's default node id.
    let node_ids: BTreeSet<String> = stack
        .container_ids(Some("node"))
        .iter()
        .map(|id| id[..12].to_owned())
        .collect();
    assert_eq!(node_ids.len(), NODES);
    let slots = poll(
        READY_TIMEOUT,
        "4 ready nodes in `peerkeep ls --json`",
        || {
            let out = run(
                Command::new("docker").args(["exec", &lb, "peerkeep", "ls", "--json"]),
                Duration::from_secs(30),
            );
            if !out.ok {
                return Err(format!("peerkeep ls failed: {}", out.stderr.trim()));
            }
            let doc: serde_json::Value = serde_json::from_str(&out.stdout)
                .map_err(|e| format!("not JSON ({e}): {}", out.stdout))?;
            let nodes = doc["nodes"].as_array().ok_or("no `nodes` array")?;
            let mut slots = BTreeMap::new();
            for n in nodes {
                let id = n["id"].as_str().unwrap_or_default().to_owned();
                if node_ids.contains(&id) {
                    if n["state"] != "ready" {
                        return Err(format!("node {id} is {}", n["state"]));
                    }
                    slots.insert(id, n["slot"].as_u64().ok_or("record without a slot")?);
                }
            }
            if slots.len() != NODES {
                return Err(format!(
                    "{} of {NODES} nodes registered: {}",
                    slots.len(),
                    out.stdout
                ));
            }
            let all_slots: Vec<u64> = nodes.iter().filter_map(|n| n["slot"].as_u64()).collect();
            let distinct: BTreeSet<_> = all_slots.iter().collect();
            if distinct.len() != all_slots.len() {
                return Err(format!("slots are not distinct: {all_slots:?}"));
            }
            Ok(slots)
        },
    );
    eprintln!("ready nodes and their slots: {slots:?}");
    phase_done("registry ready");

    // --- traffic through the lb: the shared frontend and one node's own port -----------------
    poll(
        Duration::from_secs(30),
        "GET /ledger through the lb",
        || match http_get(lb_port, "/ledger")? {
            200 => Ok(()),
            code => Err(format!("HTTP {code}")),
        },
    );
    let (some_node, slot) = slots.iter().next().expect("4 nodes");
    let slot_port = node_ports + u16::try_from(*slot).expect("small slot") - 1;
    poll(
        Duration::from_secs(30),
        "GET /ledger on a node's own lb port",
        || match http_get(slot_port, "/ledger")? {
            200 => Ok(()),
            code => Err(format!("HTTP {code} from node {some_node} (slot {slot})")),
        },
    );
    phase_done("traffic");

    // --- down leaves nothing behind -------------------------------------------------------------
    run_ok(stack.demo().arg("down"), DOWN_TIMEOUT);
    let left = stack.leftovers();
    assert!(
        left.is_empty(),
        "left behind by `scripts/demo down`: {left:?}"
    );
    phase_done("down");

    eprintln!(
        "heavy_e2e_demo_smoke: {:?} in all; {}",
        started.elapsed(),
        phases
            .iter()
            .map(|(n, d)| format!("{n} {:.1}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
