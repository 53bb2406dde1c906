//! A real single-member etcd (Debian `etcd-server`) on free loopback ports.
//!
//! The data directory survives [`Etcd::stop`] so that [`Etcd::start_again`] brings back the same
//! cluster with its leases — the "etcd restarted" case the registry must survive.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::proc::{die_with_test, free_port, kill_and_reap, signal, terminate};

/// A running (or stopped) etcd owned by a test.
pub struct Etcd {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    extra_args: Vec<String>,
    scheme: &'static str,
    /// `user:password` passed to etcdctl once a test has enabled auth.
    etcdctl_user: Option<String>,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd over plain HTTP and waits until it is healthy.
    pub fn start() -> Self {
        Self::start_with(Vec::new(), "http")
    }

    /// Starts etcd with extra arguments (TLS, auth) and the client URL scheme they imply.
    pub fn start_with(extra_args: Vec<String>, scheme: &'static str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("peerkeep-etcd-")
            .tempdir()
            .expect("temp dir");
        let mut e = Self {
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            extra_args,
            scheme,
            etcdctl_user: None,
            child: None,
        };
        e.start_again();
        e
    }

    /// The client URL, e.g. `http://127.0.0.1:23791`.
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The temp directory (certificates may be written next to the data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PID of the running etcd, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// (Re)starts etcd on the same ports and data dir, and waits until it serves.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let mut cmd = Command::new("etcd");
        cmd.arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--name", "t"])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--log-level", "warn"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        die_with_test(&mut cmd);
        let child = cmd
            .spawn()
            .expect("etcd must be installed (Debian etcd-server)");
        self.child = Some(child);
        self.wait_serving(Duration::from_secs(20));
    }

    fn wait_serving(&mut self, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            if self.port_open() && self.etcdctl_ok(&["endpoint", "health"]) {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "etcd exited with {st} during start; log: {}",
                    self.log_tail()
                );
            }
            if Instant::now() > end {
                panic!(
                    "etcd not healthy within {limit:?}; log: {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn port_open(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.client_port)).is_ok()
    }

    fn etcdctl_ok(&self, args: &[&str]) -> bool {
        if self.scheme != "http" {
            // TLS/auth setups check health through the port only; tests add their own checks.
            return true;
        }
        self.etcdctl(args).status.success()
    }

    /// Stops etcd gracefully (the data dir is kept).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(10));
        }
    }

    /// SIGSTOPs etcd: connections stay open but nothing answers (a hung server).
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            signal(c, Signal::SIGSTOP);
        }
    }

    /// SIGCONTs a paused etcd.
    pub fn resume(&self) {
        if let Some(c) = &self.child {
            signal(c, Signal::SIGCONT);
        }
    }

    /// Makes [`Self::etcdctl`] (and the health check of [`Self::start_again`]) authenticate,
    /// for tests that enable etcd's auth.
    pub fn set_etcdctl_user(&mut self, user: &str, password: &str) {
        self.etcdctl_user = Some(format!("{user}:{password}"));
    }

    /// Runs `etcdctl` (Debian `etcd-client`) against this etcd with API v3.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(self.etcdctl_user.iter().map(|u| format!("--user={u}")))
            .args(["--dial-timeout", "3s", "--command-timeout", "5s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl must be installed (Debian etcd-client)")
    }

    /// `etcdctl put KEY VALUE`, panicking on failure.
    pub fn put(&self, key: &str, value: &str) {
        let out = self.etcdctl(&["put", key, value]);
        assert!(
            out.status.success(),
            "etcdctl put failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes raw key/values (any bytes) through etcd's v3 JSON gateway, batched into
    /// transactions of at most 100 puts and about 1 MiB (etcd refuses requests above 1.5 MiB):
    /// much faster than one `etcdctl` per key, and able to write what etcdctl's arguments
    /// cannot carry.
    pub async fn put_raw(&self, kvs: &[(Vec<u8>, Vec<u8>)]) {
        use base64::Engine as _;
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client");
        let mut batches: Vec<&[(Vec<u8>, Vec<u8>)]> = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, (k, v)) in kvs.iter().enumerate() {
            if i > start && (i - start == 100 || bytes + k.len() + v.len() > 1 << 20) {
                batches.push(&kvs[start..i]);
                (start, bytes) = (i, 0);
            }
            bytes += k.len() + v.len();
        }
        batches.push(&kvs[start..]);
        for chunk in batches {
            let ops: Vec<_> = chunk
                .iter()
                .map(|(k, v)| serde_json::json!({"requestPut": {"key": b64(k), "value": b64(v)}}))
                .collect();
            let r = client
                .post(format!("{}/v3/kv/txn", self.endpoint()))
                .json(&serde_json::json!({ "success": ops }))
                .send()
                .await
                .expect("etcd JSON gateway answers");
            assert!(r.status().is_success(), "txn failed: {:?}", r.text().await);
        }
    }

    /// The last lines of etcd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("etcd.log")) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Path of the data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, Signal::SIGCONT);
            kill_and_reap(&mut c);
        }
    }
}

/// Writes `body` to a file in `dir` and returns its path (for password and token files).
pub fn write_file(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).expect("create file");
    f.write_all(body.as_bytes()).expect("write file");
    p
}
