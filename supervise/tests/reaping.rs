//! Orphans: as a subreaper, this process adopts and reaps the children its children leave
//! behind, so no zombie piles up.
// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

mod common;

use common::{KillGroupOnDrop, eventually, proc_state, read_pid, sh, with_supervisor};
use peerkeep_supervise::ExitStatus;

#[test]
fn orphaned_grandchild_is_adopted_and_reaped_without_zombie() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        // The grandchild outlives its parent, then exits on its own once told to.
        let script =
            "(while [ ! -e $D/go ]; do sleep 0.01; done) & echo $! > $D/grandchild; exit 0";
        let child = sup.spawn(&mut sh(dir.path(), script)).unwrap();
        let _guard = KillGroupOnDrop(child.pid());
        assert_eq!(child.wait().await, ExitStatus::Code(0));
        let grandchild = read_pid(&dir.path().join("grandchild")).unwrap();

        let me = std::process::id() as i32;
        let adopted = proc_state(grandchild).map(|(_, ppid)| ppid);
        assert_eq!(
            adopted,
            Some(me),
            "the orphan is re-parented to us, the subreaper"
        );
        std::fs::write(dir.path().join("go"), "").unwrap();

        // Reaped means /proc/<pid> disappears; a zombie would stay there in state Z.
        eventually("the orphan to be reaped", || {
            proc_state(grandchild).is_none().then_some(())
        })
        .await;
        assert!(
            common::our_zombies().is_empty(),
            "{:?}",
            common::our_zombies()
        );
    });
}

#[test]
fn orphan_killed_by_a_realtime_signal_is_reaped() {
    // nix's waitpid fails on signals it does not model; the reaper must still collect these.
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let script = "sleep 30 & echo $! > $D/grandchild; exit 0";
        let child = sup.spawn(&mut sh(dir.path(), script)).unwrap();
        let _guard = KillGroupOnDrop(child.pid());
        child.wait().await;
        let grandchild = read_pid(&dir.path().join("grandchild")).unwrap();
        let sigrtmin_plus_1 = 35;
        // Through the supervisor: std's own wait would race with the reaper.
        let mut kill = std::process::Command::new("kill");
        kill.arg(format!("-{sigrtmin_plus_1}"))
            .arg(grandchild.to_string());
        let killed = sup.run_output(&mut kill, Some(common::DEADLINE)).await;
        assert!(killed.unwrap().status.success());
        eventually("the orphan to be reaped", || {
            proc_state(grandchild).is_none().then_some(())
        })
        .await;
    });
}

#[test]
fn child_killed_by_a_realtime_signal_reports_it() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let child = sup.spawn(&mut sh(dir.path(), "kill -35 $$")).unwrap();
        let _guard = KillGroupOnDrop(child.pid());
        let status = tokio::time::timeout(common::DEADLINE, child.wait())
            .await
            .expect("a child killed by SIGRTMIN+1 is still reported");
        assert_eq!(status, ExitStatus::Signaled(35));
        assert_eq!(status.to_exit_code(), 163);
    });
}

#[test]
fn many_orphans_leave_no_zombies() {
    with_supervisor(|sup| async move {
        let dir = tempfile::tempdir().unwrap();
        let script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.2 & done; exit 0";
        let child = sup.spawn(&mut sh(dir.path(), script)).unwrap();
        let _guard = KillGroupOnDrop(child.pid());
        child.wait().await;
        // The sleeps outlive their parent, then exit; every one must be collected.
        eventually("all orphans reaped, no zombies", || {
            let group_empty = nix::sys::signal::killpg(child.pid(), None).is_err();
            (group_empty && common::our_zombies().is_empty()).then_some(())
        })
        .await;
    });
}
