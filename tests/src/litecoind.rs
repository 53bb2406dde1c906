//! Real `litecoind -regtest` nodes (Debian's Litecoin Core, which keeps Bitcoin Core's RPC) on
//! free loopback ports, each in its own temp datadir.
//!
//! A [`Litecoind`] can be stopped and started again on the same ports and datadir — with a
//! fresh cookie file, as after a real daemon restart. [`Litecoind::rpc`] is a small blocking
//! JSON-RPC client for test set-up and assertions (mining, connection counts), independent of
//! the agent's adapter under test. Blocks are mined with `generatetodescriptor` to `raw(51)`
//! (anyone-can-spend), so no wallet is needed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::proc::{die_with_test, free_port, kill_and_reap, terminate};
use crate::wait::eventually;

/// How RPC clients authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcAuth {
    /// The cookie file the daemon writes at start (`<datadir>/regtest/.cookie`).
    Cookie,
    /// `-rpcuser`/`-rpcpassword`.
    UserPassword {
        /// User.
        user: String,
        /// Password.
        password: String,
    },
}

/// A litecoind owned by a test.
pub struct Litecoind {
    id: String,
    dir: TempDir,
    p2p_port: u16,
    rpc_port: u16,
    auth: RpcAuth,
    child: Option<Child>,
}

impl Litecoind {
    /// Starts a regtest node with cookie auth and `-uacomment=<id>`, and waits for its RPC.
    pub fn start(id: &str) -> Self {
        Self::start_with(id, RpcAuth::Cookie)
    }

    /// Starts a regtest node with the given RPC auth.
    pub fn start_with(id: &str, auth: RpcAuth) -> Self {
        let mut n = Self::new(id, auth);
        n.spawn();
        n.ready_or_retry()
    }

    /// Starts `n` nodes named `{prefix}0..` with cookie auth. They boot in parallel; this
    /// returns when all answer RPC. (Call from the test's own thread: children die with the
    /// thread that spawned them.)
    pub fn start_many(prefix: &str, n: usize) -> Vec<Self> {
        let mut nodes: Vec<Self> = (0..n)
            .map(|i| Self::new(&format!("{prefix}{i}"), RpcAuth::Cookie))
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        nodes.into_iter().map(Self::ready_or_retry).collect()
    }

    /// Waits for a freshly spawned node; if it died (most likely a port chosen by
    /// [`free_port`] was taken before the daemon bound it), starts over on new ports, twice.
    fn ready_or_retry(mut self) -> Self {
        for _ in 0..2 {
            match self.wait_ready() {
                Ok(()) => return self,
                Err(why) => {
                    eprintln!("{why}\nretrying on new ports");
                    self = Self::new(&self.id, self.auth.clone());
                    self.spawn();
                }
            }
        }
        if let Err(why) = self.wait_ready() {
            panic!("{why}");
        }
        self
    }

    fn new(id: &str, auth: RpcAuth) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("peerkeep-litecoind-")
            .tempdir()
            .expect("temp dir");
        Self {
            id: id.to_string(),
            dir,
            p2p_port: free_port(),
            rpc_port: free_port(),
            auth,
            child: None,
        }
    }

    /// (Re)starts the daemon on the same ports and datadir and waits until its RPC answers.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        self.spawn();
        if let Err(why) = self.wait_ready() {
            panic!("{why}");
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stderr.log"))
            .expect("litecoind log");
        let mut cmd = Command::new("litecoind");
        cmd.arg("-regtest")
            .arg(format!("-datadir={}", self.dir.path().display()))
            .arg(format!("-port={}", self.p2p_port))
            .arg(format!("-rpcport={}", self.rpc_port))
            .args([
                "-bind=127.0.0.1",
                "-rpcbind=127.0.0.1",
                "-rpcallowip=127.0.0.1",
                "-listen=1",
                "-server=1",
                "-fallbackfee=0.001",
                "-discover=0",
                "-dnsseed=0",
                "-listenonion=0",
                "-printtoconsole=0",
            ])
            .arg(format!("-uacomment={}", self.id));
        if let RpcAuth::UserPassword { user, password } = &self.auth {
            cmd.arg(format!("-rpcuser={user}"))
                .arg(format!("-rpcpassword={password}"));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.child = Some(die_with_test(&mut cmd).spawn().expect("spawn litecoind"));
    }

    /// Waits until RPC answers; `Err` (with the log) if the daemon exited first.
    fn wait_ready(&mut self) -> Result<(), String> {
        eventually(Duration::from_secs(60), "litecoind RPC answers", || {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                self.child = None;
                return Some(Err(format!(
                    "litecoind {} exited with {st}: {}",
                    self.id,
                    self.log()
                )));
            }
            self.rpc("getblockcount", json!([])).ok().map(|_| Ok(()))
        })
    }

    /// Stops the daemon cleanly (RPC `stop`, SIGTERM, then SIGKILL after 20 s). The cookie file is removed
    /// by the daemon; the next start writes a new one.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The RPC `stop` is the daemon's own clean path; SIGTERM is the fallback.
            let _ = self.rpc("stop", json!([]));
            terminate(&mut c, Duration::from_secs(20));
        }
    }

    /// The node id given as `-uacomment`.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The p2p address.
    pub fn p2p(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.p2p_port))
    }
    /// The RPC address.
    pub fn rpc_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.rpc_port))
    }
    /// The RPC URL, e.g. `http://127.0.0.1:18443/`.
    pub fn rpc_url(&self) -> String {
        format!("http://{}/", self.rpc_addr())
    }
    /// The datadir.
    pub fn datadir(&self) -> &Path {
        self.dir.path()
    }
    /// The cookie file (exists while the daemon runs with cookie auth).
    pub fn cookie_file(&self) -> PathBuf {
        self.dir.path().join("regtest").join(".cookie")
    }
    /// The daemon's debug log and stderr, for assertion messages.
    pub fn log(&self) -> String {
        let debug = std::fs::read_to_string(self.dir.path().join("regtest").join("debug.log"))
            .unwrap_or_default();
        let tail: String = debug
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        let stderr =
            std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        format!("{stderr}\n{tail}")
    }

    fn authorization(&self) -> Option<String> {
        let creds = match &self.auth {
            RpcAuth::Cookie => std::fs::read_to_string(self.cookie_file()).ok()?,
            RpcAuth::UserPassword { user, password } => format!("{user}:{password}"),
        };
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(creds.trim_end())
        ))
    }

    /// One JSON-RPC call: the `result`, or the error (RPC error, HTTP status or transport).
    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, String> {
        let auth = self
            .authorization()
            .ok_or("no credentials (cookie not written yet)")?;
        let body =
            json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params}).to_string();
        let timeout = Duration::from_secs(30);
        let mut s = TcpStream::connect_timeout(&self.rpc_addr(), Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let req = format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.rpc_addr(),
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
        let (head, body) = resp.split_once("\r\n\r\n").ok_or("truncated response")?;
        let v: Value = serde_json::from_str(body)
            .map_err(|_| format!("{method}: {}", head.lines().next().unwrap_or("")))?;
        if !v["error"].is_null() {
            return Err(format!("{method}: {}", v["error"]));
        }
        Ok(v["result"].clone())
    }

    /// `getconnectioncount`.
    pub fn connection_count(&self) -> u64 {
        self.rpc("getconnectioncount", json!([]))
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("getconnectioncount on {}", self.id))
    }

    /// `getblockcount`.
    pub fn block_count(&self) -> u64 {
        self.rpc("getblockcount", json!([]))
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("getblockcount on {}", self.id))
    }

    /// Mines `n` blocks (to an anyone-can-spend script) and returns the new height.
    pub fn mine(&self, n: u32) -> u64 {
        self.rpc("generatetodescriptor", json!([n, "raw(51)"]))
            .unwrap_or_else(|e| panic!("mining on {}: {e}", self.id));
        self.block_count()
    }
}

impl Drop for Litecoind {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
    }
}
