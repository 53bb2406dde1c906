//! Process helpers shared by the fixtures: free ports, spawning children that die with the test,
//! and finding the workspace's binaries.
#![allow(unsafe_code)]

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A loopback port that was free a moment ago, chosen outside the kernel's ephemeral range.
///
/// Ports handed out by binding port 0 come from the ephemeral range, which is also where every
/// outgoing connection's local port comes from: with dozens of nodes dialing each other, a port
/// picked for a node that has not started yet can be taken by someone's outgoing connection
/// before the node binds it. Picking at random below the ephemeral range avoids that, and the
/// randomness keeps parallel test processes apart.
///
/// A port is never handed out twice by one process: a fleet picks all its ports before its nodes
/// bind them, and with 150 random picks a repeat would otherwise be likely (the birthday
/// problem), failing a node at start with "address already in use".
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let (eph_lo, _) = ephemeral_range();
    let hi = eph_lo.clamp(11_000, 32_768);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = rand::random_range(10_000..hi);
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 must work on a test machine")
}

fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Makes `cmd` kill its child with SIGKILL when the spawning thread exits, so a test process
/// that dies without unwinding leaves nothing behind. The child also gets its own process group,
/// so signals sent to the test's terminal do not reach it twice.
pub fn die_with_test(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    cmd.process_group(0)
}

/// Sends `sig` to the child, ignoring "no such process".
pub fn signal(child: &Child, sig: Signal) {
    let _ = kill(Pid::from_raw(child.id() as i32), sig);
}

/// Kills a child with SIGKILL and reaps it.
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends SIGTERM and waits up to `grace`, then SIGKILL. Returns the exit status.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    signal(child, Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Path of a binary built from this workspace (`peerkeep`, `peerkeep-agent`, `lb-config-gen`,
/// `devnode`), next to the test executable's `deps/` directory.
pub fn workspace_bin(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        return PathBuf::from(p);
    }
    let mut dir = std::env::current_exe().expect("test executable path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}
