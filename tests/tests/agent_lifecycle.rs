//! `peerkeep-agent run` as a supervisor: shutdown order, exit codes, crashes, exec failures,
//! signal forwarding, reaping, and what the daemon is told. Real etcd, the real agent binary,
//! `/bin/sh` daemons. Build the binary first: `cargo build -p peerkeep-agent --bins`.

mod agent_support;

use std::time::{Duration, Instant};

use agent_support::{
    AgentProc, DEADLINE, alive, record, record_state, sh, strs, wait_file, zombie_children,
};
use nix::sys::signal::Signal;
use peerkeep_tests::{Etcd, eventually};

/// A daemon with no p2p endpoint counts as answering as soon as it runs, so it registers at once.
fn registered(etcd: &Etcd, agent: &AgentProc) {
    eventually(DEADLINE, "the node registered", || {
        record(etcd, &agent.node_id).map(|_| ())
    });
}

#[test]
fn sigterm_marks_draining_before_the_daemon_is_signalled_and_removes_the_key_before_exit() {
    let etcd = Etcd::start();
    let key = agent_support::node_key("n-drain");
    // At TERM, the daemon records what etcd holds for its key at that moment, then exits 0.
    let daemon = sh(&format!(
        "trap 'ETCDCTL_API=3 etcdctl --endpoints={} get {key} --print-value-only > at_term.txt; \
         touch got_term; exit 0' TERM; while :; do sleep 0.05; done",
        etcd.endpoint()
    ));
    let mut agent = AgentProc::start(
        &etcd.endpoint(),
        "n-drain",
        &["--drain-delay", "1500ms"],
        &strs(&daemon),
    );
    registered(&etcd, &agent);
    wait_file(&agent.path("daemon.pid"), "daemon started");

    agent.signal(Signal::SIGTERM);
    eventually(DEADLINE, "record says draining", || {
        (record_state(&etcd, "n-drain").as_deref() == Some("draining")).then_some(())
    });
    assert!(
        !agent.path("got_term").exists(),
        "the daemon was signalled before the record said draining"
    );
    let status = agent.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    assert!(agent.path("got_term").exists(), "daemon never got TERM");
    let at_term = std::fs::read_to_string(agent.path("at_term.txt")).expect("daemon wrote it");
    assert_eq!(
        at_term.trim(),
        "",
        "the key was still there when the daemon got its stop signal"
    );
    assert!(record(&etcd, "n-drain").is_none(), "key left after exit");
}

#[test]
fn daemon_killed_by_term_gives_exit_code_143() {
    let etcd = Etcd::start();
    let daemon = sh("exec sleep 600");
    let mut agent = AgentProc::start(
        &etcd.endpoint(),
        "n-143",
        &["--drain-delay", "0s"],
        &strs(&daemon),
    );
    registered(&etcd, &agent);
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(143), "log:\n{}", agent.log());
}

#[test]
fn daemon_ignoring_term_past_stop_timeout_is_killed_with_exit_code_137() {
    let etcd = Etcd::start();
    let daemon = sh("trap '' TERM; while :; do sleep 0.05; done");
    let mut agent = AgentProc::start(
        &etcd.endpoint(),
        "n-137",
        &["--drain-delay", "0s", "--stop-timeout", "1s"],
        &strs(&daemon),
    );
    registered(&etcd, &agent);
    let started = Instant::now();
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(137), "log:\n{}", agent.log());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "killed before --stop-timeout"
    );
    assert!(
        agent.log().contains("unclean"),
        "SIGKILL not logged as unclean:\n{}",
        agent.log()
    );
    let daemon_pid = agent.daemon_pid().expect("daemon wrote its pid");
    assert!(!alive(daemon_pid), "daemon survived");
}

#[test]
fn second_term_skips_the_remaining_waits() {
    let etcd = Etcd::start();
    let daemon = sh("trap '' TERM; while :; do sleep 0.05; done");
    let mut agent = AgentProc::start(
        &etcd.endpoint(),
        "n-skip",
        &["--drain-delay", "30s", "--stop-timeout", "30s"],
        &strs(&daemon),
    );
    registered(&etcd, &agent);
    let started = Instant::now();
    agent.signal(Signal::SIGTERM);
    eventually(DEADLINE, "record says draining", || {
        (record_state(&etcd, "n-skip").as_deref() == Some("draining")).then_some(())
    });
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(DEADLINE);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "waits not skipped"
    );
    assert_eq!(status.code(), Some(137), "log:\n{}", agent.log());
    assert!(record(&etcd, "n-skip").is_none(), "key left after exit");
}

#[test]
fn daemon_crash_removes_the_key_at_once_and_passes_its_exit_code() {
    let etcd = Etcd::start();
    let daemon = sh("while [ ! -e crash ]; do sleep 0.02; done; exit 7");
    let mut agent = AgentProc::start(&etcd.endpoint(), "n-crash", &[], &strs(&daemon));
    registered(&etcd, &agent);
    std::fs::write(agent.path("crash"), "").expect("touch crash");
    let crashed = Instant::now();
    let status = agent.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(7), "log:\n{}", agent.log());
    // Revoked, not expired: gone well within one TTL (2 s) of the crash.
    assert!(
        record(&etcd, "n-crash").is_none(),
        "key still there after the agent exited"
    );
    assert!(
        crashed.elapsed() < Duration::from_secs(2),
        "deregistration took {:?}",
        crashed.elapsed()
    );
}

#[test]
fn exec_failure_exits_127_or_126_with_a_clear_message() {
    let etcd = Etcd::start();
    let mut missing = AgentProc::start(&etcd.endpoint(), "n-127", &[], &["/nonexistent/daemon"]);
    let status = missing.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(127), "log:\n{}", missing.log());
    let log = missing.log();
    assert!(
        log.contains("/nonexistent/daemon") && log.contains("not found"),
        "unclear message:\n{log}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let not_exec = dir.path().join("daemon.sh");
    std::fs::write(&not_exec, "#!/bin/sh\nexit 0\n").expect("write script");
    let path = not_exec.to_str().expect("utf-8 path");
    let mut denied = AgentProc::start(&etcd.endpoint(), "n-126", &[], &[path]);
    let status = denied.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(126), "log:\n{}", denied.log());
    assert!(
        denied.log().contains("not executable"),
        "log:\n{}",
        denied.log()
    );
}

#[test]
fn usr1_is_forwarded_to_the_daemon() {
    let etcd = Etcd::start();
    let daemon = sh("trap 'touch got_usr1' USR1; touch trap_set; while :; do sleep 0.05; done");
    let agent = AgentProc::start(&etcd.endpoint(), "n-usr1", &[], &strs(&daemon));
    wait_file(&agent.path("trap_set"), "daemon installed its USR1 trap");
    agent.signal(Signal::SIGUSR1);
    wait_file(&agent.path("got_usr1"), "daemon got USR1");
    assert!(
        alive(agent.daemon_pid().expect("pid")),
        "USR1 stopped the daemon"
    );
}

#[test]
fn no_zombie_is_left_after_the_daemon_abandons_grandchildren() {
    let etcd = Etcd::start();
    // Each subshell backgrounds a grandchild and exits at once: the grandchildren are orphaned,
    // re-parented to the agent (subreaper), and must be reaped when they exit.
    let daemon =
        sh("for i in 1 2 3 4 5; do ( (sleep 0.3; touch done.$i) & ); done; exec sleep 600");
    let agent = AgentProc::start(&etcd.endpoint(), "n-reap", &[], &strs(&daemon));
    for i in 1..=5 {
        wait_file(&agent.path(&format!("done.{i}")), "orphan finished");
    }
    let agent_pid = agent.pid();
    eventually(DEADLINE, "no zombie children of the agent", || {
        zombie_children(agent_pid).is_empty().then_some(())
    });
    assert!(
        alive(agent.daemon_pid().expect("pid")),
        "daemon should still run"
    );
}

#[test]
fn placeholders_and_environment_reach_the_daemon() {
    let etcd = Etcd::start();
    let daemon = [
        "/bin/sh",
        "-c",
        "echo $$ > daemon.pid; \
         echo \"$PEERKEEP_ADVERTISE_IP|$PEERKEEP_PRIVATE_IP|$PEERKEEP_NODE_ID|$PEERKEEP_ENDPOINT_P2P|$PEERKEEP_ENDPOINT_API|$PEERKEEP_ENDPOINT_HEALTH\" > env.tmp; \
         echo \"$1|$2|$3\" > args.tmp; mv env.tmp env.txt; mv args.tmp args.txt; exec sleep 600",
        "sh",
        "--nat=extip:{advertise_ip}",
        "-bind={private_ip}",
        "{node_id}-{unknown}",
    ];
    let agent = AgentProc::start(
        &etcd.endpoint(),
        "n-env",
        &[
            "--advertise",
            "env:PEERKEEP_TEST_NOT_SET,ip:127.0.0.2",
            "--endpoint",
            "p2p=:30303",
            "--endpoint",
            "api=:8545",
        ],
        &daemon,
    );
    wait_file(&agent.path("args.txt"), "daemon wrote its arguments");
    let args = std::fs::read_to_string(agent.path("args.txt")).expect("args");
    assert_eq!(
        args.trim(),
        "--nat=extip:127.0.0.2|-bind=127.0.0.1|n-env-{unknown}"
    );
    let env = std::fs::read_to_string(agent.path("env.txt")).expect("env");
    let health = agent.health.port();
    assert_eq!(
        env.trim(),
        format!("127.0.0.2|127.0.0.1|n-env|127.0.0.2:30303|127.0.0.1:8545|127.0.0.1:{health}")
    );
}

#[test]
fn node_id_held_by_another_live_instance_exits_4_naming_the_holder() {
    let etcd = Etcd::start();
    let first_daemon = sh("exec sleep 600");
    let first = AgentProc::start(&etcd.endpoint(), "n-dup", &[], &strs(&first_daemon));
    let held = eventually(DEADLINE, "first agent registered", || {
        record(&etcd, "n-dup")
    });
    let holder = held["instance"].as_str().expect("instance").to_owned();

    let second_daemon = sh("exec sleep 600");
    let mut second = AgentProc::start(
        &etcd.endpoint(),
        "n-dup",
        &["--claim-timeout", "2s", "--stop-timeout", "2s"],
        &strs(&second_daemon),
    );
    let status = second.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(4), "log:\n{}", second.log());
    assert!(
        second.log().contains(&holder),
        "holder not named:\n{}",
        second.log()
    );
    let second_pid = second.daemon_pid().expect("second daemon started");
    assert!(!alive(second_pid), "second daemon left running");

    let after = record(&etcd, "n-dup").expect("first record kept");
    assert_eq!(after["instance"], holder.as_str());
    assert!(alive(first.daemon_pid().expect("first daemon")));
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let etcd = Etcd::start();
    let daemon = sh("exec sleep 600");
    let mut agent = AgentProc::start(
        &etcd.endpoint(),
        "n-json",
        &["--log-format", "json", "--drain-delay", "0s"],
        &strs(&daemon),
    );
    registered(&etcd, &agent);
    agent.signal(Signal::SIGTERM);
    agent.wait_exit(DEADLINE);
    let log = agent.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
    assert!(lines.len() >= 3, "too few JSON lines:\n{log}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

#[test]
fn every_setting_can_come_from_the_environment() {
    let etcd = Etcd::start();
    let daemon = sh("echo \"$PEERKEEP_ENDPOINT_API\" > api.txt; exec sleep 600");
    let mut agent = AgentProc::start_from_env(
        &etcd.endpoint(),
        "n-envcfg",
        &[
            ("PEERKEEP_ENDPOINT", "api=:9000,rpc=127.0.0.9:3000"),
            ("PEERKEEP_LABEL", "zone=a,rack=r1"),
            ("PEERKEEP_DRAIN_DELAY", "0s"),
            ("PEERKEEP_STOP_SIGNAL", "INT"),
            ("PEERKEEP_LOG_FORMAT", "json"),
        ],
        &strs(&daemon),
    );
    let rec = eventually(DEADLINE, "registered", || record(&etcd, "n-envcfg"));
    assert_eq!(rec["endpoints"]["api"], "127.0.0.1:9000");
    assert_eq!(rec["endpoints"]["rpc"], "127.0.0.9:3000");
    assert_eq!(rec["labels"]["zone"], "a");
    assert_eq!(rec["labels"]["rack"], "r1");
    assert_eq!(agent.health_cmd("live").0, 0);
    agent.signal(Signal::SIGTERM);
    // `sleep` dies of the INT the agent sends as its stop signal: 128 + 2.
    assert_eq!(
        agent.wait_exit(DEADLINE).code(),
        Some(130),
        "log:\n{}",
        agent.log()
    );
    assert!(
        agent.log().lines().any(|l| l.starts_with('{')),
        "not JSON logs"
    );
}

#[test]
fn sigint_starts_the_same_shutdown_as_sigterm() {
    let etcd = Etcd::start();
    let daemon = sh("exec sleep 600");
    let mut agent = AgentProc::start(
        &etcd.endpoint(),
        "n-int",
        &["--drain-delay", "1s"],
        &strs(&daemon),
    );
    registered(&etcd, &agent);
    agent.signal(Signal::SIGINT);
    eventually(DEADLINE, "record says draining", || {
        (record_state(&etcd, "n-int").as_deref() == Some("draining")).then_some(())
    });
    // The daemon gets the stop signal (TERM), not the INT the agent received.
    assert_eq!(
        agent.wait_exit(DEADLINE).code(),
        Some(143),
        "log:\n{}",
        agent.log()
    );
    assert!(record(&etcd, "n-int").is_none());
}

#[test]
fn unusable_flag_values_exit_2_before_the_daemon_starts() {
    let etcd = Etcd::start();
    for (flag, value) in [
        ("--peer-poll", "0s"),
        ("--lease-ttl", "500ms"),
        ("--max-peers", "1"),
        ("--endpoint", "health=:1"),
    ] {
        let daemon = sh("touch started; exec sleep 600");
        let mut agent = AgentProc::start(&etcd.endpoint(), "n-bad", &[flag, value], &strs(&daemon));
        let status = agent.wait_exit(DEADLINE);
        assert_eq!(status.code(), Some(2), "{flag} {value}: {}", agent.log());
        assert!(
            agent.log().contains(flag),
            "{flag} not named: {}",
            agent.log()
        );
        assert!(
            !agent.path("started").exists(),
            "{flag}: daemon started anyway"
        );
    }
}

#[test]
fn a_taken_health_port_fails_the_start_with_exit_1_before_the_daemon_runs() {
    let etcd = Etcd::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let daemon = sh("touch started; exec sleep 600");
    let mut agent = AgentProc::start_from_env(
        &etcd.endpoint(),
        "n-port",
        &[("PEERKEEP_HEALTH_LISTEN", addr.as_str())],
        &strs(&daemon),
    );
    let status = agent.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(1), "log:\n{}", agent.log());
    assert!(
        agent.log().contains("--health-listen"),
        "log:\n{}",
        agent.log()
    );
    assert!(
        !agent.path("started").exists(),
        "daemon started without health checks"
    );
}

#[test]
fn node_id_defaults_to_the_host_name() {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
    let host = host.trim();
    let etcd = Etcd::start();
    let daemon = sh("exec sleep 600");
    // An empty variable counts as unset, so the default applies.
    let agent = AgentProc::start_from_env(
        &etcd.endpoint(),
        host,
        &[("PEERKEEP_NODE_ID", "")],
        &strs(&daemon),
    );
    let rec = eventually(DEADLINE, "registered under the host name", || {
        record(&etcd, host)
    });
    assert_eq!(rec["id"], host);
    assert_eq!(agent.status().expect("/status")["node_id"], host);
}

/// Regression: a record over 4 KiB was refused only at registration, on the daemon's first
/// answer, and the agent exited leaving the daemon running (orphaned).
#[test]
fn oversized_labels_exit_2_naming_the_flag_before_the_daemon_starts() {
    let etcd = Etcd::start();
    let label = format!("big={}", "a".repeat(5000));
    let daemon = sh("touch started; exec sleep 600");
    let mut agent = AgentProc::start(
        &etcd.endpoint(),
        "n-big",
        &["--label", &label],
        &strs(&daemon),
    );
    let status = agent.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(2), "log:\n{}", agent.log());
    assert!(agent.log().contains("--label"), "log:\n{}", agent.log());
    assert!(
        !agent.path("started").exists(),
        "daemon started with a record that cannot be registered"
    );
    assert!(record(&etcd, "n-big").is_none());
}

/// Regression: huge durations panicked (exit 101; `--lease-ttl` only after the daemon had
/// started), and `--min-peers 0` made the default maximum 0, disconnecting every peer.
#[test]
fn huge_durations_and_min_peers_0_exit_2_without_a_panic_or_a_daemon() {
    let etcd = Etcd::start();
    for (flag, value) in [
        ("--peer-poll", "200000000000y"),
        ("--lease-ttl", "300000000000y"),
        ("--stop-timeout", "400days"),
        ("--min-peers", "0"),
    ] {
        let daemon = sh("touch started; exec sleep 600");
        let mut agent =
            AgentProc::start(&etcd.endpoint(), "n-huge", &[flag, value], &strs(&daemon));
        let status = agent.wait_exit(DEADLINE);
        assert_eq!(status.code(), Some(2), "{flag} {value}: {}", agent.log());
        assert!(
            agent.log().contains(flag),
            "{flag} not named: {}",
            agent.log()
        );
        assert!(!agent.log().contains("panicked"), "{}", agent.log());
        assert!(
            !agent.path("started").exists(),
            "{flag}: daemon started anyway"
        );
    }
}

/// Regression: after "id taken", the daemon was stopped without the liveness heartbeat the
/// shutdown keeps, so `/livez` failed ("agent loop silent") during a long `--stop-timeout`.
#[test]
fn liveness_stays_ok_while_the_daemon_is_stopped_after_the_id_was_taken() {
    let etcd = Etcd::start();
    let first_daemon = sh("exec sleep 600");
    let _first = AgentProc::start(&etcd.endpoint(), "n-taken", &[], &strs(&first_daemon));
    eventually(DEADLINE, "first agent registered", || {
        record(&etcd, "n-taken")
    });

    // Ignores TERM, so the stop lasts the whole stop timeout, past the 10 s heartbeat limit.
    let second_daemon = sh("trap '' TERM; while :; do sleep 0.1; done");
    let mut second = AgentProc::start(
        &etcd.endpoint(),
        "n-taken",
        &["--claim-timeout", "1s", "--stop-timeout", "13s"],
        &strs(&second_daemon),
    );
    eventually(DEADLINE, "second agent stopping its daemon", || {
        second
            .status()
            .filter(|s| s["lifecycle"] == "stopping")
            .map(|_| ())
    });
    let stopping = Instant::now();
    while stopping.elapsed() < Duration::from_secs(11) {
        let (code, out) = second.health_cmd("live");
        assert_eq!(
            code,
            0,
            "liveness failed while stopping, after {:?}: {out}; log:\n{}",
            stopping.elapsed(),
            second.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        second.wait_exit(DEADLINE).code(),
        Some(4),
        "log:\n{}",
        second.log()
    );
}

/// Regression: a TERM (or INT) arriving while the agent was still resolving its addresses was
/// acted on only after the daemon had been spawned. Now the daemon is never started, and the
/// agent exits 128 + signal at once.
#[test]
fn a_shutdown_request_during_address_resolution_exits_without_starting_the_daemon() {
    let etcd = Etcd::start();
    for (signal, code) in [(Signal::SIGTERM, 143), (Signal::SIGINT, 130)] {
        // A metadata service that accepts connections and never answers: resolution hangs for
        // its timeouts.
        let imds = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let imds_url = format!("http://{}", imds.local_addr().expect("addr"));
        let (asked, asked_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in imds.incoming().flatten() {
                held.push(conn);
                let _ = asked.send(());
            }
        });
        let daemon = sh("touch started; exec sleep 600");
        let mut agent = AgentProc::start(
            &etcd.endpoint(),
            "n-early-term",
            &[
                "--advertise",
                "ec2:public-ipv4,ip:127.0.0.1",
                "--imds-endpoint",
                &imds_url,
            ],
            &strs(&daemon),
        );
        asked_rx
            .recv_timeout(DEADLINE)
            .expect("the agent asked the metadata service");
        agent.signal(signal);
        let status = agent.wait_exit(DEADLINE);
        assert_eq!(status.code(), Some(code), "{signal}: log:\n{}", agent.log());
        assert!(
            !agent.log().contains("daemon started"),
            "{signal}: daemon spawned after the request; log:\n{}",
            agent.log()
        );
        assert!(!agent.path("started").exists(), "{signal}: daemon ran");
    }
}
