//! `lb-config-gen run` owning a real HAProxy 2.6, and small HTTP backends to balance.
//!
//! [`Lb`] writes a TOML file into a temporary directory (`peerkeep-test-lb-*`, so a killed
//! runner's leftovers are swept by `scripts/test`), starts the binary against a test etcd, and
//! talks to HAProxy's master and runtime sockets directly, so tests count reloads with
//! HAProxy's own `show proc` rather than the tool's metrics. On drop it sends SIGTERM (the tool
//! stops HAProxy), then SIGKILLs both if anything is left.
//!
//! [`HttpBackend`] is a minimal HTTP/1.1 server with a separate health port: `GET` on the API
//! port answers `200 <name>`, `/readyz` on the health port answers 200 or 503. [`HttpBackend::kill`]
//! drops the listeners and every open connection at once, like `kill -9` would. It is written
//! by hand rather than with axum because axum's server keeps accepted connections alive after
//! its task is aborted, which would hide exactly the failure the churn tests provoke.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::etcd::Etcd;
use crate::proc::{die_with_test, free_port, signal, terminate, workspace_bin};

/// A running `lb-config-gen run` with its HAProxy.
pub struct Lb {
    dir: TempDir,
    child: Option<Child>,
    health: SocketAddr,
    master_pid: std::sync::OnceLock<u32>,
}

impl Lb {
    /// Starts the generator with `services` (TOML `[[services]]` entries) against `etcd`, with
    /// loopback allowed, and waits until `/readyz` answers 200.
    pub fn start(etcd: &Etcd, services: &str, extra_args: &[&str]) -> Self {
        let lb = Self::spawn(etcd, services, extra_args);
        lb.wait_ready();
        lb
    }

    /// Starts the generator without waiting for it.
    pub fn spawn(etcd: &Etcd, services: &str, extra_args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("peerkeep-test-lb-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(dir.path().join("gen")).expect("config dir");
        std::fs::write(dir.path().join("lb.toml"), toml_for(dir.path(), services))
            .expect("write lb.toml");
        let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut lb = Self {
            dir,
            child: None,
            health,
            master_pid: std::sync::OnceLock::new(),
        };
        lb.launch(etcd, extra_args);
        lb
    }

    fn launch(&mut self, etcd: &Etcd, extra_args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("lb.log"))
            .expect("log file");
        let bin = workspace_bin("lb-config-gen");
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build -p lb-config-gen` first",
            bin.display()
        );
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(self.dir.path().join("lb.toml"))
            .arg("--etcd-endpoints")
            .arg(etcd.endpoint())
            .arg("--allow-loopback")
            .arg("--health-listen")
            .arg(self.health.to_string())
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        die_with_test(&mut cmd);
        self.child = Some(cmd.spawn().expect("spawn lb-config-gen"));
    }

    /// Waits until `/readyz` answers 200, and records HAProxy's master pid for cleanup.
    pub fn wait_ready(&self) {
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while self.readyz().0 != 200 {
            self.assert_running();
            assert!(
                std::time::Instant::now() < end,
                "lb-config-gen not ready within 30s; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.remember_master();
    }

    fn remember_master(&self) {
        if let Some(pid) = self.show_proc().ok().and_then(|t| master_pid(&t)) {
            let _ = self.master_pid.set(pid);
        }
    }

    fn assert_running(&self) {
        if let Some(c) = &self.child {
            let alive = kill(Pid::from_raw(c.id() as i32), None).is_ok();
            assert!(alive, "lb-config-gen died; log:\n{}", self.log_tail());
        }
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The TOML file the generator reads.
    pub fn toml_path(&self) -> PathBuf {
        self.dir.path().join("lb.toml")
    }

    /// Rewrites the `[[services]]` part of the TOML file (send [`Lb::sighup`] to apply it).
    pub fn write_services(&self, services: &str) {
        std::fs::write(self.toml_path(), toml_for(self.dir.path(), services)).expect("write");
    }

    /// The generated HAProxy configuration on disk.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gen/haproxy.cfg")).unwrap_or_default()
    }

    /// `show proc` on the master socket.
    pub fn show_proc(&self) -> std::io::Result<String> {
        cli_exchange(&self.dir.path().join("master.sock"), "show proc\n")
    }

    /// The master's reload counter, from `show proc`; waits out a master that is
    /// re-executing itself (its socket refuses connections for a moment).
    pub fn reloads(&self) -> u32 {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(n) = self.try_reloads() {
                return n;
            }
            assert!(
                std::time::Instant::now() < end,
                "master does not answer show proc; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The master's reload counter, if the master answers now.
    pub fn try_reloads(&self) -> Option<u32> {
        let text = self.show_proc().ok()?;
        text.lines()
            .find(|l| l.contains(" master "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|n| n.parse().ok())
    }

    /// One command on the runtime API socket.
    pub fn runtime(&self, command: &str) -> String {
        cli_exchange(&self.dir.path().join("admin.sock"), &format!("{command}\n"))
            .expect("runtime API")
    }

    /// `(status, body)` of `GET /readyz` on the health server (status 0 if unreachable).
    pub fn readyz(&self) -> (u16, String) {
        http_get(self.health, "/readyz").unwrap_or((0, String::new()))
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> String {
        http_get(self.health, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Sends SIGHUP (re-read the TOML).
    pub fn sighup(&self) {
        if let Some(c) = &self.child {
            signal(c, Signal::SIGHUP);
        }
    }

    /// HAProxy's master pid, once [`Lb::wait_ready`] has seen it.
    pub fn master_pid(&self) -> Option<u32> {
        self.master_pid.get().copied()
    }

    /// Waits up to `limit` for the generator to exit on its own; its status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let status = self
            .child
            .take()
            .and_then(|mut c| terminate(&mut c, Duration::from_secs(15)));
        self.kill_master();
        status
    }

    /// The last lines of the generator's log (HAProxy's output included).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("lb.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("lb.log")).unwrap_or_default()
    }

    fn kill_master(&mut self) {
        if let Some(pid) = self.master_pid.get().and_then(|p| i32::try_from(*p).ok()) {
            // Normally gone already (the generator stops it); this only catches leftovers.
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(10));
        }
        self.kill_master();
    }
}

fn toml_for(dir: &Path, services: &str) -> String {
    let d = dir.display();
    format!(
        "[haproxy]\nconfig = \"{d}/gen/haproxy.cfg\"\nmaster_socket = \"{d}/master.sock\"\n\
         stats_socket = \"{d}/admin.sock\"\nstate_file = \"{d}/server-state\"\n\
         hard_stop_after = \"5s\"\n\n{services}\n"
    )
}

fn master_pid(show_proc: &str) -> Option<u32> {
    show_proc
        .lines()
        .find(|l| l.contains(" master "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
}

/// A base port such that `base + 1 ..= base + n` were all free a moment ago (for per-node
/// frontends).
pub fn free_port_range(n: u16) -> u16 {
    for _ in 0..200 {
        let base = 20_000 + rand::random::<u16>() % 30_000;
        let free = (1..=n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no range of {n} free loopback ports found");
}

/// One exchange on an HAProxy CLI socket: write, half-close, read to the end.
pub fn cli_exchange(path: &Path, request: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A blocking `GET path` over HTTP/1.0 on loopback: `(status, body)`.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A small HTTP backend with an API port and a health port.
pub struct HttpBackend {
    name: String,
    api: SocketAddr,
    health: SocketAddr,
    ready: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpBackend {
    /// Starts a backend named `name` on two free loopback ports, ready.
    pub fn start(name: &str) -> Self {
        let api_l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind api");
        let health_l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind health");
        for l in [&api_l, &health_l] {
            l.set_nonblocking(true).expect("nonblocking");
        }
        let api = api_l.local_addr().expect("addr");
        let health = health_l.local_addr().expect("addr");
        let ready = Arc::new(AtomicBool::new(true));
        let served = Arc::new(AtomicU64::new(0));
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let body = Arc::new(name.to_owned());
        let (r, s) = (ready.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("backend runtime");
            rt.block_on(async move {
                let api_l = TcpListener::from_std(api_l).expect("tokio listener");
                let health_l = TcpListener::from_std(health_l).expect("tokio listener");
                // Connection tasks live in this set: dropping it (kill) closes every socket.
                let mut conns = tokio::task::JoinSet::new();
                let mut stop_rx = stop_rx;
                loop {
                    tokio::select! {
                        Ok((c, _)) = api_l.accept() => {
                            conns.spawn(serve_conn(c, Reply::Api(body.clone(), s.clone())));
                        }
                        Ok((c, _)) = health_l.accept() => {
                            conns.spawn(serve_conn(c, Reply::Health(r.clone())));
                        }
                        Some(_) = conns.join_next(), if !conns.is_empty() => {}
                        _ = &mut stop_rx => break,
                    }
                }
            });
        });
        Self {
            name: name.to_owned(),
            api,
            health,
            ready,
            served,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The backend's name (its response body).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The API address.
    pub fn api(&self) -> SocketAddr {
        self.api
    }
    /// The health address.
    pub fn health(&self) -> SocketAddr {
        self.health
    }
    /// Makes `/readyz` answer 200 (true) or 503 (false).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
    /// API requests served so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
    /// Closes both listeners and every open connection at once.
    pub fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone)]
enum Reply {
    Api(Arc<String>, Arc<AtomicU64>),
    Health(Arc<AtomicBool>),
}

/// Serves keep-alive HTTP/1.1 requests without bodies until the peer closes.
async fn serve_conn(mut c: tokio::net::TcpStream, reply: Reply) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 2048];
            match c.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        buf.drain(..head_end);
        let close = head.contains("connection: close") || head.contains("http/1.0");
        let (status, body) = match &reply {
            Reply::Api(name, served) => {
                served.fetch_add(1, Ordering::SeqCst);
                ("200 OK", name.as_str().to_owned())
            }
            Reply::Health(ready) if ready.load(Ordering::SeqCst) => ("200 OK", "ready".into()),
            Reply::Health(_) => ("503 Service Unavailable", "not ready".into()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if c.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// The NodeRecord JSON of a ready node with `api` and `health` endpoints, for `etcdctl put`.
pub fn record_json(
    id: &str,
    slot: u32,
    state: &str,
    api: SocketAddr,
    health: SocketAddr,
) -> String {
    serde_json::json!({
        "id": id, "state": state, "slot": slot, "instance": "test",
        "endpoints": { "api": api.to_string(), "health": health.to_string() },
    })
    .to_string()
}
