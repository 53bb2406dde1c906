//! Stopping a child with a deadline: cooperative exit, SIGKILL after the timeout, `skip`, and
//! the process group.
// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    KillGroupOnDrop, eventually, file_appears, proc_state, read_pid, sh, with_supervisor,
};
use nix::sys::signal::Signal;
use peerkeep_supervise::{ExitStatus, StopOutcome, SweepOutcome};

/// A child that ignores TERM (and so does the `sleep` it becomes).
const IGNORES_TERM: &str = "trap '' TERM; touch $D/ready; exec sleep 30";

#[test]
fn cooperative_child_stops_on_term_without_kill() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let child = sup
            .spawn(&mut sh(dir.path(), "touch $D/ready; exec sleep 30"))
            .unwrap();
        let _guard = KillGroupOnDrop(child.pid());
        file_appears(&dir.path().join("ready")).await;
        let outcome = sup
            .stop(
                &child,
                Signal::SIGTERM,
                common::DEADLINE,
                std::future::pending::<()>(),
            )
            .await;
        assert_eq!(
            outcome,
            StopOutcome {
                status: ExitStatus::Signaled(15),
                killed: false
            }
        );
        assert_eq!(outcome.status.to_exit_code(), 143);
    });
}

#[test]
fn child_ignoring_term_is_killed_after_the_timeout() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let child = sup.spawn(&mut sh(dir.path(), IGNORES_TERM)).unwrap();
        let _guard = KillGroupOnDrop(child.pid());
        file_appears(&dir.path().join("ready")).await;
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let outcome = sup
            .stop(
                &child,
                Signal::SIGTERM,
                timeout,
                std::future::pending::<()>(),
            )
            .await;
        assert!(started.elapsed() >= timeout, "killed before the deadline");
        assert_eq!(
            outcome,
            StopOutcome {
                status: ExitStatus::Signaled(9),
                killed: true
            }
        );
        assert_eq!(outcome.status.to_exit_code(), 137);
    });
}

#[test]
fn skip_cuts_the_stop_timeout_short() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let child = sup.spawn(&mut sh(dir.path(), IGNORES_TERM)).unwrap();
        let _guard = KillGroupOnDrop(child.pid());
        file_appears(&dir.path().join("ready")).await;
        let (skip_tx, skip_rx) = tokio::sync::oneshot::channel::<()>();
        let long = Duration::from_secs(60);
        let stop = sup.stop(&child, Signal::SIGTERM, long, skip_rx);
        let started = Instant::now();
        let (outcome, ()) = tokio::join!(stop, async {
            // Skip only once the TERM has been sent and ignored, as a second TERM would be.
            tokio::task::yield_now().await;
            skip_tx.send(()).unwrap();
        });
        assert!(
            started.elapsed() < common::DEADLINE,
            "skip did not cut the wait short"
        );
        assert!(outcome.killed);
        assert_eq!(outcome.status, ExitStatus::Signaled(9));
    });
}

#[test]
fn stop_resumes_a_stopped_child_so_it_can_exit() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let child = sup
            .spawn(&mut sh(dir.path(), "touch $D/ready; exec sleep 30"))
            .unwrap();
        let _guard = KillGroupOnDrop(child.pid());
        file_appears(&dir.path().join("ready")).await;
        child.signal(Signal::SIGSTOP).unwrap();
        eventually("the child to be stopped", || {
            matches!(proc_state(child.pid()), Some(('T', _))).then_some(())
        })
        .await;
        let outcome = sup
            .stop(
                &child,
                Signal::SIGTERM,
                common::DEADLINE,
                std::future::pending::<()>(),
            )
            .await;
        assert_eq!(outcome.status, ExitStatus::Signaled(15));
        assert!(!outcome.killed);
    });
}

#[test]
fn kill_after_timeout_reaches_the_whole_process_group() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let script = "trap '' TERM; sleep 30 & echo $! > $D/grandchild; wait";
        let child = sup.spawn(&mut sh(dir.path(), script)).unwrap();
        let _guard = KillGroupOnDrop(child.pid());
        file_appears(&dir.path().join("grandchild")).await;
        let grandchild = eventually("the grandchild pid", || {
            read_pid(&dir.path().join("grandchild"))
        })
        .await;
        let outcome = sup
            .stop(
                &child,
                Signal::SIGTERM,
                Duration::from_millis(200),
                std::future::pending::<()>(),
            )
            .await;
        assert!(outcome.killed);
        // The grandchild got SIGKILL with the group; orphaned, it is reaped by us.
        eventually("the grandchild to be gone", || {
            proc_state(grandchild).is_none().then_some(())
        })
        .await;
    });
}

#[test]
fn stopping_an_exited_child_returns_its_status() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let child = sup.spawn(&mut sh(dir.path(), "exit 4")).unwrap();
        child.wait().await;
        let outcome = sup
            .stop(
                &child,
                Signal::SIGTERM,
                common::DEADLINE,
                std::future::pending::<()>(),
            )
            .await;
        assert_eq!(
            outcome,
            StopOutcome {
                status: ExitStatus::Code(4),
                killed: false
            }
        );
    });
}

#[test]
fn sweep_does_nothing_unless_pid1() {
    with_supervisor(|sup| async move {
        assert!(!peerkeep_supervise::is_pid1());
        let dir = tempfile::tempdir().unwrap();
        let child = sup
            .spawn(&mut sh(dir.path(), "touch $D/ready; exec sleep 30"))
            .unwrap();
        let _guard = KillGroupOnDrop(child.pid());
        file_appears(&dir.path().join("ready")).await;
        assert_eq!(
            sup.sweep(Duration::from_millis(100)).await,
            SweepOutcome::Skipped
        );
        assert_eq!(child.try_status(), None, "sweep signalled a process");
        assert!(nix::sys::signal::kill(child.pid(), None).is_ok());
    });
}

/// Regression: stop() returned as soon as the child was reaped, leaving members of its process
/// group that outlived it running (here a background job that ignores TERM). Outside PID 1
/// nothing swept them, and they were orphaned when the agent exited.
#[test]
fn group_members_that_outlive_the_stopped_child_are_ended_before_stop_returns() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        // The grandchild stays in the child's group (no setsid) and ignores TERM; the child
        // itself exits cleanly on TERM.
        let script = "(trap '' TERM; touch $D/gc-ready; exec sleep 30) & \
                      echo $! > $D/grandchild; trap 'exit 0' TERM; touch $D/ready; wait";
        let child = sup.spawn(&mut sh(dir.path(), script)).unwrap();
        let _guard = KillGroupOnDrop(child.pid());
        file_appears(&dir.path().join("ready")).await;
        file_appears(&dir.path().join("gc-ready")).await;
        let grandchild = eventually("the grandchild pid", || {
            read_pid(&dir.path().join("grandchild"))
        })
        .await;
        let outcome = sup
            .stop(
                &child,
                Signal::SIGTERM,
                common::DEADLINE,
                std::future::pending::<()>(),
            )
            .await;
        assert_eq!(
            outcome,
            StopOutcome {
                status: ExitStatus::Code(0),
                killed: false
            },
            "the outcome is the child's own"
        );
        assert_eq!(
            proc_state(grandchild),
            None,
            "a member of the child's group outlived stop()"
        );
    });
}
