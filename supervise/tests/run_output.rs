//! Helper commands run through the supervisor: output captured, status from the reaper.
// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{KillGroupOnDrop, proc_state, read_pid, sh, with_supervisor};
use peerkeep_supervise::{ExitStatus, RunError};

#[test]
fn captures_stdout_stderr_and_exit_code() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let output = sup
            .run_output(
                &mut sh(dir.path(), "echo out; echo err >&2; exit 2"),
                Some(common::DEADLINE),
            )
            .await
            .unwrap();
        assert_eq!(output.status, ExitStatus::Code(2));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
    });
}

#[test]
fn captures_output_larger_than_a_pipe_buffer() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        // 1 MiB on each stream: both pipes must be drained concurrently or the child blocks.
        let script = "head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2";
        let output = sup
            .run_output(&mut sh(dir.path(), script), Some(common::DEADLINE))
            .await
            .unwrap();
        assert!(output.status.success());
        assert_eq!(output.stdout.len(), 1 << 20);
        assert_eq!(output.stderr.len(), 1 << 20);
    });
}

#[test]
fn stdin_is_empty() {
    with_supervisor(|sup| async move {
        let output = sup
            .run_output(&mut Command::new("cat"), Some(common::DEADLINE))
            .await
            .unwrap();
        assert!(output.status.success());
        assert!(output.stdout.is_empty());
    });
}

#[test]
fn runs_while_a_long_lived_child_is_supervised() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let daemon = sup.spawn(&mut sh(dir.path(), "exec sleep 30")).unwrap();
        let _guard = KillGroupOnDrop(daemon.pid());
        for round in 0..20 {
            let output = sup
                .run_output(
                    &mut sh(dir.path(), &format!("echo {round}")),
                    Some(common::DEADLINE),
                )
                .await
                .unwrap();
            assert_eq!(output.stdout, format!("{round}\n").as_bytes());
        }
        assert_eq!(daemon.try_status(), None);
    });
}

#[test]
fn timeout_kills_the_command_and_its_group() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let script = "sleep 30 & echo $! > $D/grandchild; exec sleep 30";
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let err = sup
            .run_output(&mut sh(dir.path(), script), Some(timeout))
            .await
            .unwrap_err();
        assert!(started.elapsed() >= timeout);
        assert!(matches!(err, RunError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("/bin/sh"), "{err}");
        let grandchild = common::eventually("the grandchild pid", || {
            read_pid(&dir.path().join("grandchild"))
        })
        .await;
        common::eventually("the grandchild to be killed and reaped", || {
            proc_state(grandchild).is_none().then_some(())
        })
        .await;
    });
}

#[test]
fn missing_program_is_a_spawn_error_with_127() {
    with_supervisor(|sup| async move {
        let err = sup
            .run_output(&mut Command::new("/nonexistent/haproxy"), None)
            .await
            .unwrap_err();
        match err {
            RunError::Spawn(spawn) => assert_eq!(spawn.exit_code(), 127),
            other => panic!("expected a spawn error, got {other:?}"),
        }
    });
}

#[test]
fn concurrent_commands_each_get_their_own_output_and_status() {
    with_supervisor(|sup| async move {
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..4 {
            let sup = sup.clone();
            tasks.spawn(async move {
                for round in 0..25 {
                    let code = (task * 25 + round) % 256;
                    let script = format!("echo {task}-{round}; exit {code}");
                    let mut cmd = Command::new("/bin/sh");
                    cmd.arg("-c").arg(script);
                    let output = sup
                        .run_output(&mut cmd, Some(common::DEADLINE))
                        .await
                        .unwrap();
                    assert_eq!(output.stdout, format!("{task}-{round}\n").as_bytes());
                    assert_eq!(output.status, ExitStatus::Code(code));
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    });
}

#[test]
fn cancelled_run_kills_the_command() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut cmd = sh(dir.path(), "echo $$ > $D/pid; exec sleep 30");
        // Leaving the select drops run_output's future while the command still runs.
        let pid = tokio::select! {
            result = sup.run_output(&mut cmd, None) => panic!("sleep 30 finished: {result:?}"),
            pid = common::eventually("the command's pid", || read_pid(&pidfile)) => pid,
        };
        // Cleanup only: dropped after the check below.
        let _guard = KillGroupOnDrop(pid);
        common::eventually("the cancelled command to be killed and reaped", || {
            proc_state(pid).is_none().then_some(())
        })
        .await;
    });
}
