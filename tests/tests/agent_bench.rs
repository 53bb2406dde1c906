//! Benchmarks of the agent (issue 4), printed as a Markdown table, and the PID 1 basics
//! compared side by side with Debian's `tini`.
//!
//! The timing benchmarks are ignored in the normal suite (numbers on a shared CI machine mean
//! little); run them with
//!
//! ```text
//! cargo build --release -p peerkeep-agent -p peerkeep-tests --bins
//! PEERKEEP_BENCH_RELEASE=1 cargo nextest run -p peerkeep-tests --test agent_bench \
//!     --run-ignored ignored-only --no-capture
//! ```
//!
//! `PEERKEEP_BENCH_RELEASE=1` measures the release binaries (the numbers that matter); without
//! it the debug ones. The behaviour comparison with tini always runs.

mod agent_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::{AgentProc, DEADLINE, record, sh, strs, wait_file};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use peerkeep_tests::proc::{die_with_test, free_port, workspace_bin};
use peerkeep_tests::{Etcd, eventually};

/// The release binary when asked for (and built), else the one the suite uses.
fn bin(name: &str) -> PathBuf {
    let debug = workspace_bin(name);
    if std::env::var_os("PEERKEEP_BENCH_RELEASE").is_some() {
        let release = debug
            .parent()
            .and_then(|d| d.parent())
            .map(|t| t.join("release").join(name));
        if let Some(r) = release.filter(|r| r.exists()) {
            return r;
        }
        panic!("PEERKEEP_BENCH_RELEASE set but target/release/{name} is missing");
    }
    debug
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).expect("stat format");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the state field (index 0): utime is field 14 of the full line, index 11 here.
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[test]
#[ignore = "benchmark: see the module docs for how to run it"]
fn bench_agent() {
    let agent_bin = bin("peerkeep-agent");
    let etcd = Etcd::start();
    println!("\n| measure | value | target |\n|---|---|---|");

    // Steady state: one idle daemon, registered, 10 s of idling.
    let daemon = sh("exec sleep 600");
    let agent =
        AgentProc::start_with_bin(&agent_bin, &etcd.endpoint(), "b-idle", &[], &strs(&daemon));
    eventually(DEADLINE, "registered", || record(&etcd, "b-idle"));
    std::thread::sleep(Duration::from_secs(2));
    let pid = agent.pid();
    let t0 = cpu_ticks(pid);
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let ticks = cpu_ticks(pid) - t0;
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    let hz = 100.0;
    let cpu_pct = ticks as f64 / hz / window.as_secs_f64() * 100.0;
    let rss = rss_kib(pid);
    println!(
        "| steady-state RSS | {:.1} MiB | < 10 MiB |",
        rss as f64 / 1024.0
    );
    println!("| idle CPU | {cpu_pct:.2} % of a core | < 0.5 % |");

    // `peerkeep-agent health` wall time.
    let mut times = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        let st = Command::new(&agent_bin)
            .args(["health", "--addr", &agent.health.to_string()])
            .stdout(Stdio::null())
            .status()
            .expect("health");
        times.push(start.elapsed());
        assert!(st.success());
    }
    times.sort();
    println!(
        "| `health` wall time | median {:.1} ms, p95 {:.1} ms | < 20 ms |",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.95).as_secs_f64() * 1e3
    );
    drop(agent);

    // Daemon API answering → record visible in etcd.
    let mut lat = Vec::new();
    for i in 0..5 {
        lat.push(answer_to_record(&agent_bin, &etcd, &format!("b-reg-{i}")));
    }
    lat.sort();
    println!(
        "| daemon answers → record in etcd | median {:.0} ms, max {:.0} ms | < 200 ms |",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 1.0).as_secs_f64() * 1e3
    );

    // SIGTERM → exit, daemon that stops at once, 500 ms drain delay.
    let drain = Duration::from_millis(500);
    let mut stops = Vec::new();
    for i in 0..5 {
        let daemon = sh("exec sleep 600");
        let mut a = AgentProc::start_with_bin(
            &agent_bin,
            &etcd.endpoint(),
            &format!("b-stop-{i}"),
            &["--drain-delay", "500ms"],
            &strs(&daemon),
        );
        eventually(DEADLINE, "registered", || {
            record(&etcd, &format!("b-stop-{i}"))
        });
        let start = Instant::now();
        a.signal(Signal::SIGTERM);
        a.wait_exit(DEADLINE);
        stops.push(start.elapsed().saturating_sub(drain));
    }
    stops.sort();
    println!(
        "| SIGTERM → exit, beyond drain-delay | median {:.0} ms, max {:.0} ms | < 100 ms |",
        percentile(&stops, 0.5).as_secs_f64() * 1e3,
        percentile(&stops, 1.0).as_secs_f64() * 1e3
    );
}

/// Starts an agent whose devnode begins listening when `go` appears; returns the time from the
/// p2p port accepting to the record's first put seen by an etcd watch.
fn answer_to_record(agent_bin: &Path, etcd: &Etcd, id: &str) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("token"), "t\n").expect("token");
    let p2p = free_port();
    let api = free_port();
    let daemon = sh(&format!(
        "while [ ! -e go ]; do sleep 0.001; done; exec {} --id {id} --p2p-listen 127.0.0.1:{p2p} \
         --api-listen 127.0.0.1:{api} --api-token-file token",
        bin("devnode").display()
    ));
    let p2p_flag = format!("p2p=:{p2p}");
    let agent = AgentProc::start_in_with_bin(
        agent_bin,
        dir,
        &etcd.endpoint(),
        id,
        &["--endpoint", &p2p_flag],
        &strs(&daemon),
    );
    let mut watch = Command::new("etcdctl");
    watch
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.endpoint()))
        .args(["watch", &agent_support::node_key(id)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    die_with_test(&mut watch);
    let mut watch = watch.spawn().expect("etcdctl watch");
    let out = watch.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(_)) = lines.next() {
            let _ = tx.send(Instant::now());
        }
    });
    wait_file(&agent.path("daemon.pid"), "daemon started");
    std::thread::sleep(Duration::from_millis(300)); // the watch is established
    std::fs::write(agent.path("go"), "").expect("go");
    let answered = eventually(DEADLINE, "p2p port accepts", || {
        std::net::TcpStream::connect(("127.0.0.1", p2p))
            .ok()
            .map(|_| Instant::now())
    });
    let seen = rx.recv_timeout(DEADLINE).expect("record put seen");
    let _ = kill(Pid::from_raw(watch.id() as i32), Signal::SIGKILL);
    let _ = watch.wait();
    seen.saturating_duration_since(answered)
}

/// One PID 1 behaviour under `tini` and under the agent: `(tini, agent)` exit codes and
/// whether a marker file appeared.
fn under_both(etcd: &Etcd, script: &str, signal: Option<Signal>) -> [(Option<i32>, bool); 2] {
    let tini = {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new("tini");
        cmd.args(["-s", "--", "/bin/sh", "-c", script])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_test(&mut cmd);
        let mut child = cmd.spawn().expect("tini (Debian package tini)");
        if let Some(sig) = signal {
            wait_file(&dir.path().join("ready"), "script ready under tini");
            let _ = kill(Pid::from_raw(child.id() as i32), sig);
        }
        let status = child.wait().expect("wait tini");
        (status.code(), dir.path().join("marker").exists())
    };
    let agent = {
        let mut a = AgentProc::start(
            &etcd.endpoint(),
            "pid1-cmp",
            &["--drain-delay", "0s", "--stop-timeout", "2s"],
            &["/bin/sh", "-c", script],
        );
        if let Some(sig) = signal {
            wait_file(&a.path("ready"), "script ready under the agent");
            a.signal(sig);
        }
        let status = a.wait_exit(DEADLINE);
        (status.code(), a.path("marker").exists())
    };
    [tini, agent]
}

#[test]
fn pid1_basics_match_tini() {
    let etcd = Etcd::start();
    let cases: &[(&str, &str, Option<Signal>)] = &[
        ("exit code passed through", "exit 3", None),
        (
            "killed by a signal: 128+n",
            "touch ready; kill -KILL $$",
            None,
        ),
        (
            "TERM reaches the child",
            "trap 'touch marker; exit 0' TERM; touch ready; while :; do sleep 0.05; done",
            Some(Signal::SIGTERM),
        ),
        (
            "USR1 forwarded",
            "trap 'touch marker; exit 0' USR1; touch ready; while :; do sleep 0.05; done",
            Some(Signal::SIGUSR1),
        ),
    ];
    println!("\n| behaviour | tini | peerkeep-agent |\n|---|---|---|");
    for (name, script, sig) in cases {
        let [tini, agent] = under_both(&etcd, script, *sig);
        println!("| {name} | {tini:?} | {agent:?} |");
        assert_eq!(tini, agent, "{name}: tini {tini:?}, agent {agent:?}");
    }
}
