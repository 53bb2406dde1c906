//! Spawning and waiting: exit statuses, exec failures, concurrent waiters, and the state a
//! child starts in.
// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{KillGroupOnDrop, sh, with_supervisor};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use peerkeep_supervise::{ExitStatus, SpawnError, SuperviseError, Supervisor};

async fn status_of(sup: &Supervisor, script: &str) -> ExitStatus {
    let dir = tempfile::tempdir().unwrap();
    let child = sup.spawn(&mut sh(dir.path(), script)).unwrap();
    let _guard = KillGroupOnDrop(child.pid());
    child.wait().await
}

#[test]
fn exit_codes_and_signals_map_to_status_and_exit_code() {
    with_supervisor(|sup| async move {
        let cases = [
            ("exit 0", ExitStatus::Code(0), 0),
            ("exit 3", ExitStatus::Code(3), 3),
            ("kill -TERM $$", ExitStatus::Signaled(15), 143),
            ("kill -KILL $$", ExitStatus::Signaled(9), 137),
        ];
        for (script, status, code) in cases {
            let got = status_of(&sup, script).await;
            assert_eq!(got, status, "{script}");
            assert_eq!(got.to_exit_code(), code, "{script}");
        }
    });
}

#[test]
fn missing_program_fails_with_127_naming_it() {
    with_supervisor(|sup| async move {
        let err = sup
            .spawn(&mut Command::new("/nonexistent/daemon"))
            .unwrap_err();
        assert!(matches!(err, SpawnError::NotFound { .. }), "{err:?}");
        assert_eq!(err.exit_code(), 127);
        assert!(err.to_string().contains("/nonexistent/daemon"), "{err}");
        assert_eq!(err.program(), "/nonexistent/daemon");
    });
}

#[test]
fn program_not_on_path_fails_with_127() {
    with_supervisor(|sup| async move {
        let err = sup
            .spawn(&mut Command::new("peerkeep-no-such-program-on-path"))
            .unwrap_err();
        assert_eq!(err.exit_code(), 127, "{err}");
    });
}

#[test]
fn script_with_missing_interpreter_fails_with_127() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = sup.spawn(&mut Command::new(&script)).unwrap_err();
        assert_eq!(err.exit_code(), 127, "{err}");
    });
}

#[test]
fn non_executable_file_fails_with_126_naming_it() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-executable");
        std::fs::write(&file, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = sup.spawn(&mut Command::new(&file)).unwrap_err();
        assert!(matches!(err, SpawnError::NotExecutable { .. }), "{err:?}");
        assert_eq!(err.exit_code(), 126);
        assert!(err.to_string().contains("not-executable"), "{err}");
    });
}

#[test]
fn directory_as_program_fails_with_126() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let err = sup.spawn(&mut Command::new(dir.path())).unwrap_err();
        assert_eq!(err.exit_code(), 126, "{err}");
    });
}

#[test]
fn children_exiting_at_once_are_never_lost() {
    // Exercises the spawn/reap race: `true` may exit before spawn() has registered its pid.
    with_supervisor(|sup| async move {
        let children: Vec<_> = (0..200)
            .map(|_| sup.spawn(&mut Command::new("true")).unwrap())
            .collect();
        let wait_all = async {
            let mut statuses = Vec::new();
            for child in &children {
                statuses.push(child.wait().await);
            }
            statuses
        };
        let statuses = tokio::time::timeout(common::DEADLINE, wait_all)
            .await
            .expect("every quick child is reaped and reported");
        assert!(
            statuses.iter().all(|s| *s == ExitStatus::Code(0)),
            "{statuses:?}"
        );
        common::eventually("no zombie children", || {
            common::our_zombies().is_empty().then_some(())
        })
        .await;
    });
}

#[test]
fn every_clone_of_a_handle_sees_the_same_status() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let child = sup.spawn(&mut sh(dir.path(), "exit 7")).unwrap();
        let (a, b) = (child.clone(), child.clone());
        let (sa, sb, sc) = tokio::join!(a.wait(), b.wait(), child.wait());
        assert_eq!([sa, sb, sc], [ExitStatus::Code(7); 3]);
        // And later waits return at once with the stored status.
        assert_eq!(child.try_status(), Some(ExitStatus::Code(7)));
        assert_eq!(child.wait().await, ExitStatus::Code(7));
    });
}

#[test]
fn signal_after_the_child_was_reaped_is_esrch() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let child = sup.spawn(&mut sh(dir.path(), "exit 0")).unwrap();
        child.wait().await;
        assert_eq!(child.signal(Signal::SIGTERM), Err(Errno::ESRCH));
    });
}

#[test]
fn child_leads_its_own_process_group() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let child = sup
            .spawn(&mut sh(dir.path(), "touch $D/ready; exec sleep 30"))
            .unwrap();
        let _guard = KillGroupOnDrop(child.pid());
        common::file_appears(&dir.path().join("ready")).await;
        assert_eq!(nix::unistd::getpgid(Some(child.pid())), Ok(child.pid()));
        child.signal_group(Signal::SIGKILL).unwrap();
        assert_eq!(child.wait().await, ExitStatus::Signaled(9));
    });
}

fn status_field(status: &str, name: &str) -> u64 {
    let line = status
        .lines()
        .find(|line| line.starts_with(name))
        .unwrap_or_else(|| panic!("{name} missing from /proc/self/status"));
    u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
}

fn bit(sig: Signal) -> u64 {
    1 << (sig as i32 - 1)
}

#[test]
fn child_starts_with_empty_mask_and_default_dispositions() {
    with_supervisor(|sup| async move {
        // Block a signal in the spawning thread, as signal libraries do; std leaves the mask
        // as it is, so the supervisor must clear it.
        let mut usr2 = SigSet::empty();
        usr2.add(Signal::SIGUSR2);
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&usr2), None).unwrap();
        let output = sup
            .run_output(
                Command::new("cat").arg("/proc/self/status"),
                Some(common::DEADLINE),
            )
            .await;
        pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&usr2), None).unwrap();
        let child = String::from_utf8(output.unwrap().stdout).unwrap();
        let ours = std::fs::read_to_string("/proc/self/status").unwrap();

        assert_eq!(status_field(&child, "SigBlk:"), 0, "{child}");
        // Nothing caught: exec reset our handlers, the supervisor's included.
        assert_eq!(status_field(&child, "SigCgt:"), 0, "{child}");
        // Rust ignores SIGPIPE in this process; the child must not inherit that. Signals
        // ignored by whoever started the test process are passed on, as with any exec.
        let our_ignored = status_field(&ours, "SigIgn:");
        assert_ne!(
            our_ignored & bit(Signal::SIGPIPE),
            0,
            "precondition: {ours}"
        );
        assert_eq!(
            status_field(&child, "SigIgn:"),
            our_ignored & !bit(Signal::SIGPIPE),
            "{child}"
        );
    });
}

#[test]
fn supervisor_catches_every_signal_pid1_must_handle() {
    with_supervisor(|_sup| async move {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let caught = status_field(&status, "SigCgt:");
        for sig in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGQUIT,
            Signal::SIGWINCH,
            Signal::SIGCHLD,
        ] {
            assert!(caught & bit(sig) != 0, "{sig} has no handler");
        }
    });
}

#[test]
fn second_supervisor_in_one_process_is_refused() {
    with_supervisor(|_sup| async move {
        assert!(matches!(
            Supervisor::new(),
            Err(SuperviseError::AlreadyRunning)
        ));
    });
}

#[test]
fn supervisor_outside_a_runtime_is_refused() {
    assert!(matches!(Supervisor::new(), Err(SuperviseError::NoRuntime)));
}
