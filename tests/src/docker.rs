//! Docker end-to-end harness: the real images on the machine's Docker engine, driven with the
//! `docker` CLI and compose, for the fault scenarios of `tests/tests/e2e_scenarios.rs`.
//!
//! What it guarantees:
//! - every command runs with a deadline and is killed after it ([`run`]);
//! - a [`Project`] is a compose project under a name, host ports and subnet of its own, so it
//!   neither touches nor collides with a demo the user runs; dropping it runs
//!   `down --volumes --remove-orphans`, panics included; projects left by a test process that
//!   was killed before its guards ran are removed by the next test that starts a project;
//! - traffic goes only to the project's own containers: the lb's ports published on loopback,
//!   and the containers' addresses on the project's own `data` network;
//! - images are built once per set of binaries ([`ensure_images`]), from the binaries the test
//!   run already built, under the tag [`IMAGE_TAG`], so a demo on the `local` tag is left alone.
//!
//! What it must not do: pull or push images, touch containers, networks or volumes that are not
//! the project's, or sleep instead of waiting for a condition ([`poll`]).

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::proc::workspace_bin;

/// Image tag the end-to-end tests build and run.
pub const IMAGE_TAG: &str = "e2e";
/// The binaries the images COPY.
const IMAGE_BINARIES: [&str; 4] = ["peerkeep", "peerkeep-agent", "lb-config-gen", "devnode"];
/// The images `images/build` makes.
const IMAGES: [&str; 4] = ["node-devnode", "node-litecoind", "lb", "etcd"];
/// A cold machine bootstraps the Debian base image first (debootstrap + import): minutes.
const BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Bound on `down`, which stops every container with its grace period.
const DOWN_TIMEOUT: Duration = Duration::from_secs(3 * 60);
/// Bound on a short docker command (`inspect`, `ps`, `exec` of a query).
pub const SHORT: Duration = Duration::from_secs(30);

/// The repository root.
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    /// Exited with status 0.
    pub ok: bool,
    /// The exit code; `None` when killed (by a signal or the deadline) or never started.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error (plus a note when the deadline killed it).
    pub stderr: String,
}

/// Runs `cmd` with a deadline (killed after it), capturing stdout and stderr through files so
/// a chatty child can never block on a full pipe.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let out = std::fs::File::create(&out_path).expect("stdout file");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = match cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn() {
        Ok(child) => child,
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
        std::thread::sleep(Duration::from_millis(20));
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

/// Runs `cmd` and panics with its output unless it succeeds; returns its stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let what = format!("{cmd:?}");
    let out = run(cmd, timeout);
    assert!(
        out.ok,
        "{what} failed (exit {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.code, out.stdout, out.stderr
    );
    out.stdout
}

/// `docker ARGS` with a deadline.
pub fn docker(args: &[&str], timeout: Duration) -> Output {
    run(Command::new("docker").args(args), timeout)
}

/// `docker ARGS`, panicking unless it succeeds; its stdout.
pub fn docker_ok(args: &[&str], timeout: Duration) -> String {
    run_ok(Command::new("docker").args(args), timeout)
}

/// Polls `cond` every 250 ms until it returns `Ok`, or panics with `what` and the last error.
pub fn poll<T>(deadline: Duration, what: &str, mut cond: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + deadline;
    loop {
        match cond() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= end => {
                panic!("timed out after {deadline:?} waiting for {what}; last: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// `docker-compose` (v1) or `docker compose` (v2), whichever is installed.
pub fn compose_program() -> Option<Vec<String>> {
    let v1 = run(
        Command::new("docker-compose").arg("version"),
        Duration::from_secs(20),
    );
    if v1.ok {
        return Some(vec!["docker-compose".into()]);
    }
    let v2 = docker(&["compose", "version"], Duration::from_secs(20));
    v2.ok.then(|| vec!["docker".into(), "compose".into()])
}

/// Why Docker can't be used here, if it can't.
pub fn docker_unavailable() -> Option<String> {
    let out = docker(
        &["info", "--format", "{{.ServerVersion}}"],
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

/// Whether the test named `test` can run: `false` (with a SKIPPED line) without a Docker
/// engine, except under `CI=true`, where a missing engine is a failure.
pub fn docker_available(test: &str) -> bool {
    let Some(why) = docker_unavailable() else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and Docker is required: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// Builds the images from this test run's binaries under [`IMAGE_TAG`], unless images built
/// from exactly these binaries and image sources are present already (a stamp in the target
/// directory records what the last build used and which image ids it made).
pub fn ensure_images() {
    let bin_dir = workspace_bin("peerkeep-agent")
        .parent()
        .expect("binary directory")
        .to_path_buf();
    for b in IMAGE_BINARIES {
        assert!(
            bin_dir.join(b).is_file(),
            "{} is missing: build the workspace's binaries first (cargo build --bins)",
            bin_dir.join(b).display()
        );
    }
    let stamp_path = bin_dir.join(format!("peerkeep-images-{IMAGE_TAG}.stamp"));
    let inputs = image_inputs(&bin_dir);
    let stamp = |ids: &str| format!("{inputs}\n{ids}");
    if std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp(&image_ids())) {
        return;
    }
    let started = Instant::now();
    run_ok(
        Command::new(repo_dir().join("images/build"))
            .arg("--bin-dir")
            .arg(&bin_dir)
            .args(["--tag", IMAGE_TAG]),
        BUILD_TIMEOUT,
    );
    eprintln!("images built in {:.1}s", started.elapsed().as_secs_f64());
    // Best effort: without the stamp the next test only builds again (from the layer cache).
    let _ = std::fs::write(&stamp_path, stamp(&image_ids()));
}

/// A hash of the content of every binary and every file under `images/` (content, not
/// modification times: a relink that produces the same binary needs no new image).
fn image_inputs(bin_dir: &Path) -> String {
    let mut files: Vec<PathBuf> = IMAGE_BINARIES.iter().map(|b| bin_dir.join(b)).collect();
    let mut dirs = vec![repo_dir().join("images")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
        .iter()
        .map(|f| {
            let mut h = std::hash::DefaultHasher::new();
            let content = std::fs::read(f).unwrap_or_default();
            h.write(&content);
            format!("{} {} {:016x}", f.display(), content.len(), h.finish())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The ids of the tagged images, one line each ("-" for a missing one).
fn image_ids() -> String {
    IMAGES
        .iter()
        .map(|i| {
            let out = docker(
                &[
                    "image",
                    "inspect",
                    "--format",
                    "{{.Id}}",
                    &format!("peerkeep/{i}:{IMAGE_TAG}"),
                ],
                SHORT,
            );
            if out.ok {
                out.stdout.trim().to_owned()
            } else {
                "-".to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `count` consecutive loopback ports that were free a moment ago.
pub fn free_port_range(count: u16) -> u16 {
    for _ in 0..200 {
        let base: u16 = rand::random_range(20_000..30_000);
        let all_free = (base..base + count)
            .all(|p| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], p))).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no {count} consecutive free loopback ports found");
}

/// A /24 in 10.213.0.0/16 that no Docker network on this engine uses (the demo's own default
/// is 10.213.0.0/24, the litecoind stack's 10.213.1.0/24, the Swarm stack's 10.213.8.0/24).
pub fn free_subnet() -> String {
    let ids = docker_ok(&["network", "ls", "-q"], SHORT);
    // One network at a time: a network removed meanwhile (another test's) fails only its own
    // inspect, and has no subnet to avoid anyway.
    let used: String = ids
        .split_whitespace()
        .map(|id| {
            docker(
                &[
                    "network",
                    "inspect",
                    "--format",
                    "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
                    id,
                ],
                SHORT,
            )
            .stdout
        })
        .collect();
    for i in 0..200u32 {
        let octet = 32 + (std::process::id() + i * 7) % 200;
        if !used.contains(&format!("10.213.{octet}.")) {
            return format!("10.213.{octet}.0/24");
        }
    }
    panic!("no free 10.213.x.0/24 subnet for the test stack");
}

/// What one container looks like to `docker inspect`.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    /// Full container id.
    pub id: String,
    /// Container name, without the leading slash.
    pub name: String,
    /// Host name: the short id for scaled nodes, the agent's default node id.
    pub hostname: String,
    /// Compose service (for a Swarm task: its full service name, `<stack>_<service>`).
    pub service: String,
    /// `running`, `exited`, …
    pub status: String,
    /// `starting`, `healthy`, `unhealthy`, or `none` without a health check.
    pub health: String,
    /// Exit code of the last run.
    pub exit_code: i64,
    /// Address on each attached network, by network name.
    pub addresses: BTreeMap<String, IpAddr>,
    /// The `PEERKEEP_NODE_ID` in its environment, if set.
    pub node_id_env: Option<String>,
}

impl ContainerInfo {
    /// The node id its agent registers: `PEERKEEP_NODE_ID` or the host name.
    pub fn node_id(&self) -> String {
        self.node_id_env
            .clone()
            .unwrap_or_else(|| self.hostname.clone())
    }
}

/// `docker inspect` of `ids`, in the same order; a container removed meanwhile (Swarm removes
/// old tasks' containers, compose removes scaled-down ones) is left out.
pub fn inspect(ids: &[String]) -> Vec<ContainerInfo> {
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec!["inspect", "--type", "container"];
    args.extend(ids.iter().map(String::as_str));
    let out = docker(&args, SHORT);
    // With a missing id, docker still prints the others' JSON and exits 1.
    let doc: Vec<Value> = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "docker inspect printed no JSON ({e}): {}{}",
            out.stdout, out.stderr
        )
    });
    doc.iter()
        .map(|c| {
            let addresses = c["NetworkSettings"]["Networks"]
                .as_object()
                .map(|nets| {
                    nets.iter()
                        .filter_map(|(n, v)| {
                            let ip = v["IPAddress"].as_str()?.parse().ok()?;
                            Some((n.clone(), ip))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let node_id_env = c["Config"]["Env"].as_array().and_then(|env| {
                env.iter()
                    .filter_map(Value::as_str)
                    .find_map(|e| e.strip_prefix("PEERKEEP_NODE_ID=").map(str::to_owned))
            });
            ContainerInfo {
                id: c["Id"].as_str().unwrap_or_default().to_owned(),
                name: c["Name"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                hostname: c["Config"]["Hostname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                service: c["Config"]["Labels"]["com.docker.compose.service"]
                    .as_str()
                    .or_else(|| c["Config"]["Labels"]["com.docker.swarm.service.name"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
                status: c["State"]["Status"].as_str().unwrap_or_default().to_owned(),
                health: c["State"]["Health"]["Status"]
                    .as_str()
                    .unwrap_or("none")
                    .to_owned(),
                exit_code: c["State"]["ExitCode"].as_i64().unwrap_or(-1),
                addresses,
                node_id_env,
            }
        })
        .collect()
}

/// A compose project of the test's own. Dropping it removes its containers, networks and
/// volumes, whether the test passed or panicked.
#[derive(Debug)]
pub struct Project {
    /// Compose project name (also the prefix of its networks).
    pub name: String,
    compose: Vec<String>,
    files: Vec<String>,
    /// Files given to `down` (a superset of `files` removes whatever any variant started).
    down_files: Vec<String>,
    env: Vec<(String, String)>,
}

impl Project {
    /// A project for the compose `files` (relative to the repository) with `env` on top of the
    /// tag, a unique name made from `tag` and the process id, and no restart policy (a
    /// crashing container shows as exited instead of restarting in a loop).
    pub fn new(tag: &str, files: &[&str], env: Vec<(String, String)>) -> Self {
        remove_stale_projects();
        let mut all_env = vec![
            ("PEERKEEP_IMAGE_TAG".to_owned(), IMAGE_TAG.to_owned()),
            ("PEERKEEP_RESTART".to_owned(), "no".to_owned()),
            ("NO_COLOR".to_owned(), "1".to_owned()),
        ];
        all_env.extend(env);
        let files: Vec<String> = files.iter().map(|f| (*f).to_owned()).collect();
        Self {
            name: format!("{PROJECT_PREFIX}{tag}-{}", std::process::id()),
            compose: compose_program().expect("compose is installed (checked by the caller)"),
            down_files: files.clone(),
            files,
            env: all_env,
        }
    }

    /// Adds files that `down` names too, without using them for `up` (a project started with
    /// fewer files is still removed completely).
    pub fn also_down_with(mut self, files: &[&str]) -> Self {
        for f in files {
            if !self.down_files.iter().any(|d| d == f) {
                self.down_files.push((*f).to_owned());
            }
        }
        self
    }

    fn command(&self, files: &[String]) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.current_dir(repo_dir())
            .args(&self.compose[1..])
            .args(["--project-name", &self.name]);
        for f in files {
            cmd.args(["--file", f]);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// A compose command for this project's files.
    pub fn compose(&self) -> Command {
        self.command(&self.files)
    }

    /// `down`, then `up -d` with `scale` (compose 1.29 can't recreate containers in place).
    pub fn up(&self, scale: &[(&str, usize)], timeout: Duration) {
        self.down();
        let mut cmd = self.compose();
        cmd.args(["up", "--detach"]);
        for (service, n) in scale {
            cmd.args(["--scale", &format!("{service}={n}")]);
        }
        run_ok(&mut cmd, timeout);
    }

    /// Scales `service` to `n` without touching the other containers.
    pub fn scale(&self, service: &str, n: usize, timeout: Duration) {
        let mut cmd = self.compose();
        cmd.args(["up", "--detach", "--no-recreate", "--no-deps", "--scale"])
            .arg(format!("{service}={n}"))
            .arg(service);
        run_ok(&mut cmd, timeout);
    }

    /// `down --volumes --remove-orphans` with every file the project may have used.
    pub fn down(&self) -> Output {
        let mut cmd = self.command(&self.down_files);
        cmd.args(["down", "--volumes", "--remove-orphans", "--timeout", "20"]);
        run(&mut cmd, DOWN_TIMEOUT)
    }

    /// Container ids of the project, of one service or all (running or not).
    pub fn ids(&self, service: Option<&str>) -> Vec<String> {
        let mut args = vec![
            "ps".to_owned(),
            "-a".to_owned(),
            "-q".to_owned(),
            "--no-trunc".to_owned(),
            "--filter".to_owned(),
            format!("label=com.docker.compose.project={}", self.name),
        ];
        if let Some(s) = service {
            args.push("--filter".to_owned());
            args.push(format!("label=com.docker.compose.service={s}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut ids: Vec<String> = docker_ok(&args, SHORT)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        ids.sort();
        ids
    }

    /// `docker inspect` of the project's containers (of one service or all).
    pub fn containers(&self, service: Option<&str>) -> Vec<ContainerInfo> {
        inspect(&self.ids(service))
    }

    /// The one container of `service`.
    pub fn container(&self, service: &str) -> ContainerInfo {
        let mut c = self.containers(Some(service));
        assert_eq!(c.len(), 1, "exactly one {service} container");
        c.remove(0)
    }

    /// The Docker name of the project's network `network` (compose names it
    /// `<project>_<network>`).
    pub fn network(&self, network: &str) -> String {
        format!("{}_{network}", self.name)
    }

    /// Waits until `want` containers exist and all run healthy; the time it took.
    pub fn wait_healthy(&self, want: usize, deadline: Duration) -> Duration {
        let started = Instant::now();
        poll(deadline, &format!("{want} healthy containers"), || {
            let cs = self.containers(None);
            let exited: Vec<_> = cs.iter().filter(|c| c.status == "exited").collect();
            if let Some(c) = exited.first() {
                panic!(
                    "container {} exited with {}; its log:\n{}",
                    c.name,
                    c.exit_code,
                    logs(&c.id, 40)
                );
            }
            let healthy = cs
                .iter()
                .filter(|c| c.status == "running" && c.health == "healthy")
                .count();
            if cs.len() == want && healthy == want {
                Ok(())
            } else {
                let states: Vec<String> = cs
                    .iter()
                    .map(|c| format!("{} {}/{}", c.name, c.status, c.health))
                    .collect();
                Err(format!("{healthy}/{want} healthy: {states:?}"))
            }
        });
        started.elapsed()
    }

    /// Objects of the project still present, by kind, from Docker's own labels.
    pub fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let mut left = Vec::new();
        for (kind, args) in [
            ("container", vec!["ps", "-a", "-q", "--filter", &label]),
            ("network", vec!["network", "ls", "-q", "--filter", &label]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
        ] {
            let out = docker_ok(&args, SHORT);
            left.extend(out.split_whitespace().map(|id| format!("{kind} {id}")));
        }
        left
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let out = self.down();
        if !out.ok {
            eprintln!(
                "cleanup: `down` of project {} failed: {}\n{}",
                self.name, out.stdout, out.stderr
            );
        }
    }
}

/// Every project of these tests is named `pk-e2e-<tag>-<pid of the test process>`.
const PROJECT_PREFIX: &str = "pk-e2e-";

/// Removes the containers, networks and volumes of projects left by test processes that no
/// longer exist (killed before their guards ran, e.g. by a test runner's timeout). Only
/// projects named by [`Project::new`] whose process is gone are touched.
fn remove_stale_projects() {
    let listed = docker(
        &[
            "ps",
            "-a",
            "--filter",
            "label=com.docker.compose.project",
            "--format",
            "{{.Label \"com.docker.compose.project\"}}",
        ],
        SHORT,
    );
    let stale: std::collections::BTreeSet<&str> = listed
        .stdout
        .lines()
        .filter(|name| {
            name.strip_prefix(PROJECT_PREFIX)
                .and_then(|rest| rest.rsplit_once('-'))
                .and_then(|(_, pid)| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    for name in stale {
        eprintln!("removing project {name}, left behind by a test process that is gone");
        let label = format!("label=com.docker.compose.project={name}");
        for (kind, list, rm) in [
            (
                "container",
                vec!["ps", "-a", "-q"],
                vec!["rm", "--force", "--volumes"],
            ),
            (
                "network",
                vec!["network", "ls", "-q"],
                vec!["network", "rm"],
            ),
            (
                "volume",
                vec!["volume", "ls", "-q"],
                vec!["volume", "rm", "--force"],
            ),
        ] {
            let mut args = list;
            args.extend(["--filter", &label]);
            let ids = docker(&args, SHORT).stdout;
            for id in ids.split_whitespace() {
                let mut args = rm.clone();
                args.push(id);
                let out = docker(&args, Duration::from_secs(60));
                if !out.ok {
                    eprintln!("  could not remove {kind} {id}: {}", out.stderr.trim());
                }
            }
        }
    }
}

/// The last `lines` lines of a container's log (stdout and stderr).
pub fn logs(id: &str, lines: usize) -> String {
    let out = docker(&["logs", "--tail", &lines.to_string(), id], SHORT);
    format!("{}{}", out.stdout, out.stderr)
}

/// The whole log of a container (stdout and stderr).
pub fn all_logs(id: &str) -> String {
    let out = docker(&["logs", id], SHORT);
    format!("{}{}", out.stdout, out.stderr)
}

/// One registry record as `peerkeep ls --json` prints it (the fields the tests use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Node id.
    pub id: String,
    /// `starting`, `ready` or `draining`.
    pub state: String,
    /// Slot number.
    pub slot: u64,
}

/// The records of the registry, read with `peerkeep ls --json` inside `container` (the lb or a
/// node: both have the etcd settings in their environment).
pub fn registry_ls(container: &str) -> Result<BTreeMap<String, Record>, String> {
    let out = docker(&["exec", container, "peerkeep", "ls", "--json"], SHORT);
    if !out.ok {
        return Err(format!("peerkeep ls failed: {}", out.stderr.trim()));
    }
    let doc: Value =
        serde_json::from_str(&out.stdout).map_err(|e| format!("not JSON ({e}): {}", out.stdout))?;
    let nodes = doc["nodes"].as_array().ok_or("no `nodes` array")?;
    nodes
        .iter()
        .map(|n| {
            let r = Record {
                id: n["id"].as_str().ok_or("record without id")?.to_owned(),
                state: n["state"]
                    .as_str()
                    .ok_or("record without state")?
                    .to_owned(),
                slot: n["slot"].as_u64().ok_or("record without slot")?,
            };
            Ok((r.id.clone(), r))
        })
        .collect()
}

/// `GET path` on `addr` over HTTP/1.0: the status code and body, or why there is none.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(3)))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", head.lines().next()))?;
    Ok((code, body.to_owned()))
}

/// `GET path` on `addr` answering 200 with a JSON body.
pub fn get_json(addr: SocketAddr, path: &str) -> Result<Value, String> {
    match http_get(addr, path, Duration::from_secs(3))? {
        (200, body) => serde_json::from_str(&body).map_err(|e| format!("not JSON ({e}): {body}")),
        (code, body) => Err(format!("{addr}{path}: HTTP {code}: {body}")),
    }
}

/// The agent's `/status` at `ip` (its health server listens on 8080).
pub fn agent_status(ip: IpAddr) -> Result<Value, String> {
    get_json(SocketAddr::new(ip, 8080), "/status")
}

/// The value of the first sample of `metric` (a name with or without labels, as written in the
/// text) on the agent at `ip`.
pub fn agent_metric(ip: IpAddr, metric: &str) -> Result<f64, String> {
    let (code, body) = http_get(
        SocketAddr::new(ip, 8080),
        "/metrics",
        Duration::from_secs(3),
    )?;
    if code != 200 {
        return Err(format!("{ip}:8080/metrics: HTTP {code}"));
    }
    metric_value(&body, metric).ok_or_else(|| format!("no {metric} in {ip}:8080/metrics"))
}

/// The value of the first sample named exactly `metric` in a Prometheus/OpenMetrics text.
pub fn metric_value(text: &str, metric: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == metric).then(|| value.parse().ok())?
    })
}

/// The peer ids devnode reports on its API at `ip:9000` (`GET /ledger`).
pub fn devnode_peers(ip: IpAddr) -> Result<Vec<String>, String> {
    let ledger = get_json(SocketAddr::new(ip, 9000), "/ledger")?;
    let mut ids: Vec<String> = ledger["peers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Sends `command` to an HAProxy CLI socket inside the lb container and returns the answer.
/// The lb image has no socat: perl (in every Debian image) speaks to the UNIX socket. The
/// write side is shut down after the command: HAProxy answers and closes only then.
pub fn haproxy_cli(lb: &str, socket: &str, command: &str) -> Result<String, String> {
    const SCRIPT: &str = r#"
        my ($path, $cmd) = @ARGV;
        my $s = IO::Socket::UNIX->new(Peer => $path) or die "connect $path: $!\n";
        $s->autoflush(1);
        print $s "$cmd\n";
        shutdown($s, 1);
        print while <$s>;
    "#;
    let out = docker(
        &[
            "exec",
            lb,
            "perl",
            "-MIO::Socket::UNIX",
            "-e",
            SCRIPT,
            socket,
            command,
        ],
        SHORT,
    );
    if out.ok {
        Ok(out.stdout)
    } else {
        Err(format!(
            "haproxy CLI `{command}` on {socket}: {}",
            out.stderr.trim()
        ))
    }
}

/// Reloads counted by the HAProxy master (`show proc` on the master socket): the master line
/// is `<pid> master <reloads> [failed: <n>] …`.
pub fn haproxy_reloads(lb: &str) -> Result<u64, String> {
    let text = haproxy_cli(lb, "/run/haproxy/master.sock", "show proc")?;
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [_, "master", reloads, ..] => reloads.parse().ok(),
                _ => None,
            }
        })
        .ok_or_else(|| format!("no master line in `show proc`: {text}"))
}

/// Each server's status (`UP`, `DOWN`, `MAINT`, `DRAIN`, `no check`, …) in `backend`, by
/// server name, from `show stat` on the runtime socket.
pub fn haproxy_servers(lb: &str, backend: &str) -> Result<BTreeMap<String, String>, String> {
    let text = haproxy_cli(lb, "/run/haproxy/admin.sock", "show stat")?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty `show stat`")?
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("no {name} column in `show stat`"))
    };
    let (px, sv, status) = (col("pxname")?, col("svname")?, col("status")?);
    Ok(lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > status && f[px] == backend && f[sv] != "BACKEND")
        .map(|f| (f[sv].to_owned(), f[status].to_owned()))
        .collect())
}

/// What a [`LoadGen`] has counted so far.
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    /// Requests sent.
    pub sent: u64,
    /// Requests that got no 200 answer (connection error, timeout, other status).
    pub failed: u64,
    /// Answers per node id (from the `id` in devnode's `/ledger`).
    pub by_node: BTreeMap<String, u64>,
    /// The slowest answer.
    pub max_latency: Duration,
    /// The first failures: seconds since the start and what went wrong.
    pub failures: Vec<(f64, String)>,
}

#[derive(Debug, Default)]
struct Shared {
    stats: LoadStats,
}

/// A load generator: worker threads sending `GET path` through the lb's published loopback
/// port at a fixed pace, counting answers by node, until stopped (or dropped).
#[derive(Debug)]
pub struct LoadGen {
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    workers: Vec<JoinHandle<()>>,
    sent: Arc<AtomicU64>,
    started: Instant,
}

/// How many failures a [`LoadStats`] keeps the details of.
const FAILURES_KEPT: usize = 20;

impl LoadGen {
    /// Starts `workers` threads, each sending one request every `interval` (or as fast as the
    /// answers come, if slower) to `127.0.0.1:port` with a 30 s timeout per request: longer
    /// than the lb's server timeout plus its retries, so a slow answer is still an answer.
    pub fn start(port: u16, path: &str, workers: usize, interval: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let workers = (0..workers)
            .map(|_| {
                let (stop, shared, sent, path) =
                    (stop.clone(), shared.clone(), sent.clone(), path.to_owned());
                std::thread::spawn(move || {
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let t0 = Instant::now();
                        let res = http_get(addr, &path, Duration::from_secs(30));
                        let latency = t0.elapsed();
                        sent.fetch_add(1, Ordering::Relaxed);
                        let mut g = lock(&shared);
                        let st = &mut g.stats;
                        st.sent += 1;
                        st.max_latency = st.max_latency.max(latency);
                        let failure = match res {
                            Ok((200, body)) => {
                                let id = serde_json::from_str::<Value>(&body)
                                    .ok()
                                    .and_then(|v| v["id"].as_str().map(str::to_owned))
                                    .unwrap_or_else(|| "?".to_owned());
                                *st.by_node.entry(id).or_default() += 1;
                                None
                            }
                            Ok((code, body)) => Some(format!(
                                "HTTP {code}: {}",
                                body.chars().take(200).collect::<String>()
                            )),
                            Err(e) => Some(e),
                        };
                        if let Some(f) = failure {
                            st.failed += 1;
                            if st.failures.len() < FAILURES_KEPT {
                                st.failures.push((started.elapsed().as_secs_f64(), f));
                            }
                        }
                        drop(g);
                        next += interval;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now;
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            shared,
            workers,
            sent,
            started,
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> LoadStats {
        lock(&self.shared).stats.clone()
    }

    /// Answers from node `id` so far.
    pub fn answers_from(&self, id: &str) -> u64 {
        lock(&self.shared)
            .stats
            .by_node
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `n` more requests have been sent (the load is really flowing).
    pub fn wait_sent(&self, n: u64, deadline: Duration) {
        let target = self.sent.load(Ordering::Relaxed) + n;
        poll(deadline, &format!("{n} more requests sent"), || {
            let now = self.sent.load(Ordering::Relaxed);
            if now >= target {
                Ok(())
            } else {
                Err(format!("{now} of {target}"))
            }
        });
    }

    /// Stops the workers, waits for their last request, and returns the final counts.
    pub fn stop(mut self) -> LoadStats {
        self.halt();
        let st = self.stats();
        eprintln!(
            "load: {} sent, {} failed, max latency {:?}, over {:.1}s; answers by node: {:?}",
            st.sent,
            st.failed,
            st.max_latency,
            self.started.elapsed().as_secs_f64(),
            st.by_node
        );
        st
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        self.halt();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One line of `peerkeep watch --json`, with when the test saw it.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    /// When the line arrived.
    pub at: Instant,
    /// `added`, `changed` or `removed`.
    pub change: String,
    /// Node id.
    pub id: String,
    /// The record's new state (none when removed).
    pub state: Option<String>,
}

/// `peerkeep watch --json` running inside a container (bounded there by `timeout`), its lines
/// collected by a thread. Dropping it kills the `docker exec` client.
#[derive(Debug)]
pub struct RegistryWatch {
    child: Child,
    events: Arc<Mutex<Vec<WatchEvent>>>,
    reader: Option<JoinHandle<()>>,
}

impl RegistryWatch {
    /// Starts watching from inside `container`; the watch ends by itself after `limit`.
    pub fn start(container: &str, limit: Duration) -> Self {
        let mut child = Command::new("docker")
            .args(["exec", container, "timeout"])
            .arg(limit.as_secs().max(1).to_string())
            .args(["peerkeep", "watch", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker exec peerkeep watch");
        let stdout = child.stdout.take().expect("piped stdout");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                lock(&sink).push(WatchEvent {
                    at: Instant::now(),
                    change: v["change"].as_str().unwrap_or_default().to_owned(),
                    id: v["id"].as_str().unwrap_or_default().to_owned(),
                    state: v["record"]["state"].as_str().map(str::to_owned),
                });
            }
        });
        Self {
            child,
            events,
            reader: Some(reader),
        }
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<WatchEvent> {
        lock(&self.events).clone()
    }

    /// Events for node `id` so far.
    pub fn events_for(&self, id: &str) -> Vec<WatchEvent> {
        lock(&self.events)
            .iter()
            .filter(|e| e.id == id)
            .cloned()
            .collect()
    }
}

impl Drop for RegistryWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The demo stack (compose/docker-compose.yml, plus `extra_files`) under a project of its
/// own, with the lb's ports published on free loopback ports and a free data subnet.
#[derive(Debug)]
pub struct DemoStack {
    /// The compose project (dropping it removes everything).
    pub project: Project,
    /// The lb's `rpc` frontend on 127.0.0.1.
    pub lb_port: u16,
    /// lb-config-gen's health and metrics on 127.0.0.1.
    pub metrics_port: u16,
}

impl DemoStack {
    /// Prepares (does not start) the demo stack with `extra_files` as overrides and `env` on top.
    pub fn new(tag: &str, extra_files: &[&str], env: &[(&str, &str)]) -> Self {
        // One block: the lb's frontend, its metrics, then 16 per-node frontends.
        let lb_port = free_port_range(18);
        let metrics_port = lb_port + 1;
        let node_ports = lb_port + 2;
        let mut all_env: Vec<(String, String)> = vec![
            ("PEERKEEP_LB_PORT".into(), lb_port.to_string()),
            ("PEERKEEP_LB_METRICS_PORT".into(), metrics_port.to_string()),
            (
                "PEERKEEP_LB_NODE_PORTS".into(),
                format!("{node_ports}-{}", node_ports + 15),
            ),
            ("PEERKEEP_DATA_SUBNET".into(), free_subnet()),
        ];
        all_env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let mut files = vec!["compose/docker-compose.yml"];
        files.extend_from_slice(extra_files);
        Self {
            // Down with the etcd-cluster override too: it declares a superset of services.
            project: Project::new(tag, &files, all_env)
                .also_down_with(&["compose/docker-compose.yml", "compose/etcd-cluster.yml"]),
            lb_port,
            metrics_port,
        }
    }

    /// Starts it with `nodes` scaled nodes and waits until every container is healthy, every
    /// node is ready in the registry and the lb answers; the time all that took.
    pub fn start(&self, nodes: usize, etcd_members: usize) -> Duration {
        let started = Instant::now();
        self.project
            .up(&[("node", nodes)], Duration::from_secs(4 * 60));
        self.project
            .wait_healthy(etcd_members + 2 + nodes, Duration::from_secs(150));
        self.wait_registry_matches(Duration::from_secs(90));
        poll(
            Duration::from_secs(30),
            "a GET through the lb",
            || match http_get(self.lb_addr(), "/ledger", Duration::from_secs(5))? {
                (200, _) => Ok(()),
                (code, _) => Err(format!("HTTP {code}")),
            },
        );
        started.elapsed()
    }

    /// The lb's `rpc` frontend.
    pub fn lb_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.lb_port))
    }

    /// The lb container's id.
    pub fn lb(&self) -> String {
        self.project.container("lb").id
    }

    /// The running node containers: the producer and the scaled nodes.
    pub fn nodes(&self) -> Vec<ContainerInfo> {
        let mut ids = self.project.ids(Some("producer"));
        ids.extend(self.project.ids(Some("node")));
        inspect(&ids)
            .into_iter()
            .filter(|c| c.status == "running")
            .collect()
    }

    /// A container's address on the stack's `data` network.
    pub fn data_ip(&self, c: &ContainerInfo) -> IpAddr {
        *c.addresses
            .get(&self.project.network("data"))
            .unwrap_or_else(|| panic!("{} has no address on the data network", c.name))
    }

    /// Waits until the registry holds exactly the running node containers, all `ready`, with
    /// distinct slots; returns the records.
    pub fn wait_registry_matches(&self, deadline: Duration) -> BTreeMap<String, Record> {
        let lb = self.lb();
        poll(
            deadline,
            "`peerkeep ls` = the running nodes, all ready",
            || {
                let want: std::collections::BTreeSet<String> =
                    self.nodes().iter().map(ContainerInfo::node_id).collect();
                let recs = registry_ls(&lb)?;
                let have: std::collections::BTreeSet<String> = recs.keys().cloned().collect();
                if have != want {
                    return Err(format!("registry {have:?} != running {want:?}"));
                }
                if let Some(r) = recs.values().find(|r| r.state != "ready") {
                    return Err(format!("{} is {}", r.id, r.state));
                }
                let slots: std::collections::BTreeSet<u64> =
                    recs.values().map(|r| r.slot).collect();
                if slots.len() != recs.len() {
                    return Err(format!("slots not distinct: {recs:?}"));
                }
                Ok(recs)
            },
        )
    }

    /// Waits until every running node holds at least min(K, other live nodes) peers, as its
    /// daemon reports them, and none of them is in `gone`.
    pub fn wait_peers(&self, k: usize, gone: &[String], deadline: Duration) {
        poll(
            deadline,
            &format!("every node with min({k}, others) peers"),
            || {
                let nodes = self.nodes();
                let others = nodes.len().saturating_sub(1);
                for n in &nodes {
                    let peers = devnode_peers(self.data_ip(n))?;
                    if let Some(g) = peers.iter().find(|p| gone.contains(p)) {
                        return Err(format!("{} still lists {g} as a peer", n.node_id()));
                    }
                    if peers.len() < k.min(others) {
                        return Err(format!(
                            "{} has {} peers ({peers:?}), wants {}",
                            n.node_id(),
                            peers.len(),
                            k.min(others)
                        ));
                    }
                }
                Ok(())
            },
        );
    }

    /// Sum of `metric` over every running node's agent.
    pub fn sum_agent_metric(&self, metric: &str) -> f64 {
        self.nodes()
            .iter()
            .map(|n| {
                agent_metric(self.data_ip(n), metric)
                    .unwrap_or_else(|e| panic!("{} metric {metric}: {e}", n.name))
            })
            .sum()
    }
}

/// A single-node swarm this test created (`docker swarm init` on loopback). Dropping it runs
/// `docker swarm leave --force`.
#[derive(Debug)]
pub struct Swarm {
    /// `swarm init` created the `docker_gwbridge` network (it outlives `swarm leave`).
    created_gwbridge: bool,
}

impl Swarm {
    /// Makes this engine a single-node swarm manager, or says why that can't be done here. An
    /// engine that is in a swarm already is not ours to change: that is a reason too.
    pub fn init() -> Result<Self, String> {
        leave_stale_swarm();
        let state = docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"], SHORT);
        if state.trim() != "inactive" {
            return Err(format!(
                "the engine is already in a swarm (state {}): not ours to init or leave",
                state.trim()
            ));
        }
        let had_gwbridge = docker(&["network", "inspect", "docker_gwbridge"], SHORT).ok;
        // Loopback only: the swarm's control and data ports are not reachable from outside.
        let port = free_port_range(1);
        let out = docker(
            &[
                "swarm",
                "init",
                "--advertise-addr",
                "127.0.0.1",
                "--listen-addr",
                &format!("127.0.0.1:{port}"),
            ],
            Duration::from_secs(60),
        );
        if !out.ok {
            // It may have half-happened; leaving a non-swarm engine is harmless.
            let _ = docker(&["swarm", "leave", "--force"], Duration::from_secs(60));
            return Err(format!("docker swarm init failed: {}", out.stderr.trim()));
        }
        Ok(Self {
            created_gwbridge: !had_gwbridge,
        })
    }

    /// Checks that an attachable overlay network can be created and a container started on it
    /// (VXLAN in the kernel, the engine's overlay driver); why not, if not.
    pub fn preflight_overlay(&self, image: &str) -> Result<(), String> {
        let net = format!("pk-e2e-preflight-{}", std::process::id());
        let out = docker(
            &[
                "network",
                "create",
                "--driver",
                "overlay",
                "--attachable",
                &net,
            ],
            Duration::from_secs(60),
        );
        if !out.ok {
            return Err(format!(
                "cannot create an overlay network: {}",
                out.stderr.trim()
            ));
        }
        let run = docker(
            &[
                "run",
                "--rm",
                "--network",
                &net,
                "--entrypoint",
                "true",
                image,
            ],
            Duration::from_secs(60),
        );
        let _ = docker(&["network", "rm", &net], Duration::from_secs(60));
        if run.ok {
            Ok(())
        } else {
            Err(format!(
                "a container cannot join an overlay network: {}",
                run.stderr.trim()
            ))
        }
    }
}

/// Leaves a swarm that a killed test process left behind: one advertised on 127.0.0.1 whose
/// services all belong to stacks named by [`SwarmStack::deploy`] for processes that are gone.
/// Any other swarm (someone's own, or one with no such stack) is left alone.
fn leave_stale_swarm() {
    let info = docker(
        &[
            "info",
            "--format",
            "{{.Swarm.LocalNodeState}} {{.Swarm.NodeAddr}}",
        ],
        SHORT,
    );
    if info.stdout.trim() != "active 127.0.0.1" {
        return;
    }
    let services = docker(&["service", "ls", "--format", "{{.Name}}"], SHORT);
    if !services.ok {
        return;
    }
    let stacks: std::collections::BTreeSet<Option<&str>> = services
        .stdout
        .lines()
        .map(|service| {
            let (stack, _) = service.split_once('_')?;
            let pid = stack.strip_prefix(PROJECT_PREFIX)?.rsplit_once('-')?.1;
            let gone = !Path::new(&format!("/proc/{}", pid.parse::<u32>().ok()?)).exists();
            gone.then_some(stack)
        })
        .collect();
    if stacks.is_empty() || stacks.contains(&None) {
        return;
    }
    for stack in stacks.into_iter().flatten() {
        eprintln!("removing stack {stack}, left behind by a test process that is gone");
        drop(SwarmStack {
            name: stack.to_owned(),
            env: Vec::new(),
        });
    }
    eprintln!("leaving the swarm that test process created");
    let _ = docker(&["swarm", "leave", "--force"], Duration::from_secs(120));
    // Its `docker_gwbridge` outlives the swarm; unused now, and made again by the next init.
    let _ = docker(&["network", "rm", "docker_gwbridge"], SHORT);
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let out = docker(&["swarm", "leave", "--force"], Duration::from_secs(120));
        if !out.ok {
            eprintln!("cleanup: docker swarm leave --force failed: {}", out.stderr);
        }
        if self.created_gwbridge {
            let _ = docker(&["network", "rm", "docker_gwbridge"], SHORT);
        }
    }
}

/// A `docker stack deploy`ed stack. Dropping it runs `docker stack rm`, waits for its
/// containers to go, and removes its volumes and networks.
#[derive(Debug)]
pub struct SwarmStack {
    /// The stack name (prefix of its services, networks and volumes).
    pub name: String,
    env: Vec<(String, String)>,
}

impl SwarmStack {
    /// Deploys `file` (relative to the repository) as a stack named from `tag` and the process
    /// id, with `env` for the file's variables; images are used as they are locally.
    pub fn deploy(tag: &str, file: &str, env: Vec<(String, String)>) -> Self {
        let mut all_env = vec![("PEERKEEP_IMAGE_TAG".to_owned(), IMAGE_TAG.to_owned())];
        all_env.extend(env);
        let stack = Self {
            name: format!("{PROJECT_PREFIX}{tag}-{}", std::process::id()),
            env: all_env,
        };
        let mut cmd = Command::new("docker");
        cmd.current_dir(repo_dir())
            .args([
                "stack",
                "deploy",
                "--resolve-image",
                "never",
                "--compose-file",
            ])
            .args([file, &stack.name]);
        for (k, v) in &stack.env {
            cmd.env(k, v);
        }
        run_ok(&mut cmd, Duration::from_secs(120));
        stack
    }

    /// The stack's containers (running or not); `service` without the stack prefix.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        let ids: Vec<String> =
            docker_ok(&["ps", "-a", "-q", "--no-trunc", "--filter", &label], SHORT)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
        let prefix = format!("{}_", self.name);
        inspect(&ids)
            .into_iter()
            .map(|mut c| {
                if let Some(s) = c.service.strip_prefix(&prefix) {
                    c.service = s.to_owned();
                }
                c
            })
            .collect()
    }

    /// The running containers of `service`.
    pub fn running(&self, service: &str) -> Vec<ContainerInfo> {
        self.containers()
            .into_iter()
            .filter(|c| c.service == service && c.status == "running")
            .collect()
    }
}

impl Drop for SwarmStack {
    fn drop(&mut self) {
        let _ = docker(&["stack", "rm", &self.name], Duration::from_secs(60));
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        let end = Instant::now() + Duration::from_secs(90);
        while Instant::now() < end {
            let left = docker(&["ps", "-a", "-q", "--filter", &label], SHORT);
            if left.ok && left.stdout.trim().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        for kind in ["volume", "network"] {
            let ids = docker(&[kind, "ls", "-q", "--filter", &label], SHORT);
            for id in ids.stdout.split_whitespace() {
                let _ = docker(&[kind, "rm", id], SHORT);
            }
        }
    }
}
