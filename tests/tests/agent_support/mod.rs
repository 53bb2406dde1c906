//! The real `peerkeep-agent` binary as a test fixture, shared by the `agent_*` test files.
//!
//! Each agent runs in its own temp dir (its working directory: test daemons write marker files
//! there), with a free health port, a 2 s lease and short drain/stop timings, and its output in
//! `agent.log`. Dropping the fixture asks the agent to stop (two TERMs: skip the waits), then
//! kills it; daemons that write `daemon.pid` have their process group killed as well, so
//! nothing survives a failed test.

#![allow(dead_code, missing_docs)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use peerkeep_tests::Etcd;
use peerkeep_tests::proc::{die_with_test, free_addr, workspace_bin};
use tempfile::TempDir;

/// Generous deadline for conditions that normally hold within a second.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct AgentProc {
    child: Option<Child>,
    pub health: SocketAddr,
    pub dir: TempDir,
    pub node_id: String,
}

/// Flags every test agent gets; tests append their own (later flags win for single-valued ones
/// only when not repeated, so tests pass what they need instead of overriding these).
fn base_args(etcd: &str, node_id: &str, health: SocketAddr) -> Vec<String> {
    [
        "run",
        "--etcd-endpoints",
        etcd,
        "--node-id",
        node_id,
        "--allow-loopback",
        "--private-addr",
        "ip:127.0.0.1",
        "--health-listen",
        &health.to_string(),
        "--lease-ttl",
        "2s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

impl AgentProc {
    /// Starts `peerkeep-agent run` with the base flags, `extra` flags, and `daemon` after `--`.
    pub fn start(etcd: &str, node_id: &str, extra: &[&str], daemon: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("peerkeep-agent-test-")
            .tempdir()
            .expect("temp dir");
        Self::start_in(dir, etcd, node_id, extra, daemon)
    }

    /// Like [`AgentProc::start`] in a prepared directory.
    pub fn start_in(
        dir: TempDir,
        etcd: &str,
        node_id: &str,
        extra: &[&str],
        daemon: &[&str],
    ) -> Self {
        Self::start_wrapped(&[], dir, etcd, node_id, extra, daemon)
    }

    /// Like [`AgentProc::start_in`], with the agent started through `wrapper` (for example
    /// `unshare --pid --fork`, to run it as PID 1). Signals go to the wrapper, which must
    /// forward them.
    pub fn start_wrapped(
        wrapper: &[&str],
        dir: TempDir,
        etcd: &str,
        node_id: &str,
        extra: &[&str],
        daemon: &[&str],
    ) -> Self {
        Self::spawn(
            &workspace_bin("peerkeep-agent"),
            wrapper,
            dir,
            etcd,
            node_id,
            extra,
            daemon,
        )
    }

    fn spawn(
        agent: &Path,
        wrapper: &[&str],
        dir: TempDir,
        etcd: &str,
        node_id: &str,
        extra: &[&str],
        daemon: &[&str],
    ) -> Self {
        let health = free_addr();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(agent);
                c
            }
            None => Command::new(agent),
        };
        cmd.args(base_args(etcd, node_id, health))
            .args(extra)
            .arg("--")
            .args(daemon)
            .env_remove("PEERKEEP_HEALTH_LISTEN");
        Self::launch(cmd, dir, health, node_id)
    }

    /// Starts `peerkeep-agent run -- <daemon>` configured through `PEERKEEP_*` variables only:
    /// the base settings of [`AgentProc::start`] as variables, plus `env`.
    pub fn start_from_env(
        etcd: &str,
        node_id: &str,
        env: &[(&str, &str)],
        daemon: &[&str],
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("peerkeep-agent-test-")
            .tempdir()
            .expect("temp dir");
        let health = free_addr();
        let mut cmd = Command::new(workspace_bin("peerkeep-agent"));
        cmd.arg("run")
            .arg("--")
            .args(daemon)
            .env("PEERKEEP_ETCD_ENDPOINTS", etcd)
            .env("PEERKEEP_NODE_ID", node_id)
            .env("PEERKEEP_ALLOW_LOOPBACK", "1")
            .env("PEERKEEP_PRIVATE_ADDR", "ip:127.0.0.1")
            .env("PEERKEEP_HEALTH_LISTEN", health.to_string())
            .env("PEERKEEP_LEASE_TTL", "2s")
            .envs(env.iter().copied());
        Self::launch(cmd, dir, health, node_id)
    }

    fn launch(mut cmd: Command, dir: TempDir, health: SocketAddr, node_id: &str) -> Self {
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
        cmd.current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        die_with_test(&mut cmd);
        let child = cmd
            .spawn()
            .expect("peerkeep-agent binary (cargo build -p peerkeep-agent --bins)");
        Self {
            child: Some(child),
            health,
            dir,
            node_id: node_id.to_owned(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map(|c| i32::try_from(c.id()).expect("pid fits"))
            .expect("agent running")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal the agent");
    }

    /// Waits for the agent to exit; panics with its log after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        let child = self.child.as_mut().expect("agent running");
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return st;
            }
            if Instant::now() > end {
                panic!("agent did not exit within {limit:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the agent process still runs.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `GET path` on the health server: `(status, body)`, or `None` if it does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.health, path)
    }

    /// `/status` as JSON.
    pub fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = self.get("/status")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// Runs `peerkeep-agent health --probe <probe> --addr <health>`: `(exit code, stdout)`.
    pub fn health_cmd(&self, probe: &str) -> (i32, String) {
        let out = Command::new(workspace_bin("peerkeep-agent"))
            .args([
                "health",
                "--probe",
                probe,
                "--addr",
                &self.health.to_string(),
            ])
            .env_remove("PEERKEEP_HEALTH_LISTEN")
            .output()
            .expect("run peerkeep-agent health");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The daemon's pid, from the `daemon.pid` file test daemons write.
    pub fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.path("daemon.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = kill(pid, Signal::SIGTERM);
            std::thread::sleep(Duration::from_millis(50));
            let _ = kill(pid, Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(daemon) = self.daemon_pid() {
            let _ = killpg(Pid::from_raw(daemon), Signal::SIGKILL);
        }
    }
}

/// A minimal HTTP/1.0 GET (the harness has no blocking HTTP client).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// The record key of `id` in the default cluster.
pub fn node_key(id: &str) -> String {
    format!("/peerkeep/v1/clusters/default/nodes/{id}")
}

/// The record of `id` as JSON, or `None` when absent.
pub fn record(etcd: &Etcd, id: &str) -> Option<serde_json::Value> {
    let out = etcd.etcdctl(&["get", &node_key(id), "--print-value-only"]);
    assert!(
        out.status.success(),
        "etcdctl get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let text = text.trim();
    (!text.is_empty()).then(|| serde_json::from_str(text).expect("record is JSON"))
}

/// The record's `state`, or `None` when absent.
pub fn record_state(etcd: &Etcd, id: &str) -> Option<String> {
    record(etcd, id).and_then(|r| r["state"].as_str().map(str::to_owned))
}

/// A `/bin/sh -c` daemon that writes `daemon.pid` first, then runs `body`.
pub fn sh(body: &str) -> Vec<String> {
    vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        format!("echo $$ > daemon.pid; {body}"),
    ]
}

/// `&[String]` → `Vec<&str>` for [`AgentProc::start`].
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Whether the process `pid` exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Zombie children of `parent`.
pub fn zombie_children(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
        if state == Some("Z") && ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Waits for `path` to exist.
pub fn wait_file(path: &Path, what: &str) {
    peerkeep_tests::eventually(DEADLINE, what, || path.exists().then_some(()));
}

/// `POST path` with a bearer token and a JSON body: `(status, body)`.
pub fn http_post(addr: SocketAddr, path: &str, bearer: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}
