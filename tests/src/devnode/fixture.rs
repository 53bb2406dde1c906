//! Starting `devnode` processes from tests.
//!
//! A [`DevNode`] owns one devnode child on loopback with its own temp dir (token file, log
//! file, ready file); it is killed when dropped. devnode binds port 0 and reports the ports it
//! got, so parallel tests never race for a port. The HTTP helpers are blocking and minimal (one
//! request per connection) so sync and async tests can both use them without a client library.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::proc::{die_with_test, kill_and_reap, terminate, workspace_bin};
use crate::wait::eventually;

/// A running devnode owned by a test.
pub struct DevNode {
    id: String,
    p2p_listen: SocketAddr,
    p2p: SocketAddr,
    api: SocketAddr,
    token: String,
    dir: TempDir,
    child: Option<Child>,
}

impl DevNode {
    /// Starts `devnode --id ID` with `extra` flags and waits until `/ledger` answers. The
    /// daemon binds port 0 and reports its ports through `--ready-file`, so no port can be
    /// taken between choosing and binding it.
    pub fn start(id: &str, extra: &[&str]) -> Self {
        Self::launch(id, None, extra)
    }

    /// Like [`DevNode::start`], with the p2p listener on `p2p_listen` (so a proxy in front of
    /// it can be set up first and passed as `--advertise`).
    pub fn start_on(id: &str, p2p_listen: SocketAddr, extra: &[&str]) -> Self {
        Self::launch(id, Some(p2p_listen), extra)
    }

    fn launch(id: &str, p2p_listen: Option<SocketAddr>, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("peerkeep-devnode-")
            .tempdir()
            .expect("temp dir");
        let token = format!("token-{id}-{}", rand::random::<u64>());
        std::fs::write(dir.path().join("token"), &token).expect("write token file");
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut n = Self {
            id: id.to_string(),
            p2p_listen: p2p_listen.unwrap_or(unbound),
            p2p: unbound,
            api: unbound,
            token,
            dir,
            child: None,
        };
        n.spawn(extra);
        n
    }

    fn spawn(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("devnode log file");
        let ready = self.dir.path().join("ready.json");
        let mut cmd = Command::new(workspace_bin("devnode"));
        cmd.args(["--id", &self.id])
            .args(["--p2p-listen", &self.p2p_listen.to_string()])
            .args(["--api-listen", "127.0.0.1:0"])
            .arg("--api-token-file")
            .arg(self.token_file())
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = die_with_test(&mut cmd).spawn().expect("spawn devnode");
        self.child = Some(child);
        let ports: Value = eventually(Duration::from_secs(10), "devnode is listening", || {
            self.check_alive();
            serde_json::from_str(&std::fs::read_to_string(&ready).ok()?).ok()
        });
        let addr = |k: &str| -> SocketAddr {
            ports[k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("ready file lacks {k}: {ports}"))
        };
        self.p2p_listen = addr("p2p");
        self.p2p = addr("advertised");
        self.api = addr("api");
        eventually(Duration::from_secs(10), "devnode /ledger answers", || {
            self.check_alive();
            self.ledger()
        });
    }

    fn check_alive(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            panic!("devnode {} exited early with {st}: {}", self.id, self.log());
        }
    }

    /// The node id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The advertised p2p address: what peers dial (the listener unless `--advertise`).
    pub fn p2p(&self) -> SocketAddr {
        self.p2p
    }
    /// The address the p2p listener is bound to.
    pub fn p2p_listen(&self) -> SocketAddr {
        self.p2p_listen
    }
    /// The API address.
    pub fn api(&self) -> SocketAddr {
        self.api
    }
    /// The API base URL, e.g. `http://127.0.0.1:4000`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }
    /// The bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }
    /// The file holding the bearer token.
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }
    /// The file devnode logs to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("devnode.log")
    }
    /// The log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
    /// The PID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `GET /ledger`, or `None` when it does not answer 200 with JSON.
    pub fn ledger(&self) -> Option<Value> {
        let (status, body) = http(self.api, "GET", "/ledger", None, None)?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// The advertised addresses listed in `/ledger`'s peers.
    pub fn peer_addrs(&self) -> Option<Vec<SocketAddr>> {
        let l = self.ledger()?;
        let Some(peers) = l["peers"].as_array() else {
            return Some(Vec::new());
        };
        Some(
            peers
                .iter()
                .filter_map(|p| p["address"].as_str()?.parse().ok())
                .collect(),
        )
    }

    /// The head height from `/ledger`.
    pub fn height(&self) -> Option<u64> {
        self.ledger()?["block"]["height"].as_u64()
    }

    /// `POST /node/connect` with the token: the status code and the body.
    pub fn connect(&self, addr: SocketAddr) -> (u16, String) {
        self.node_call("/node/connect", addr)
    }

    /// `POST /node/disconnect` with the token: the status code and the body.
    pub fn disconnect(&self, addr: SocketAddr) -> (u16, String) {
        self.node_call("/node/disconnect", addr)
    }

    fn node_call(&self, path: &str, addr: SocketAddr) -> (u16, String) {
        let body = serde_json::json!({ "address": addr.to_string() }).to_string();
        http(self.api, "POST", path, Some(&self.token), Some(&body))
            .unwrap_or_else(|| panic!("devnode {} API did not answer {path}", self.id))
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
    }

    /// SIGTERM, then waits up to `grace`; returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        terminate(&mut c, grace)
    }
}

impl Drop for DevNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP/1.1 request with `Connection: close`; `None` if the server does not answer
/// within 2 s.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    let body = body.unwrap_or("");
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split(' ').nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}
