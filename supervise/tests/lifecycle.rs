//! The supervisor's own lifetime: one per process while its runtime lives, and a new one once
//! that runtime is gone (as with one `#[tokio::test]` runtime after another).
//!
//! A single test in its own binary, so no shared supervisor is running in this process.
// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use peerkeep_supervise::{ExitStatus, SuperviseError, Supervisor};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_new_supervisor_can_start_once_the_previous_runtime_is_gone() {
    let first = runtime();
    let status = first.block_on(async {
        let sup = Supervisor::new().unwrap();
        assert!(matches!(
            Supervisor::new(),
            Err(SuperviseError::AlreadyRunning)
        ));
        let child = sup
            .spawn(Command::new("/bin/sh").args(["-c", "exit 1"]))
            .unwrap();
        child.wait().await
    });
    assert_eq!(status, ExitStatus::Code(1));
    drop(first);

    let second = runtime();
    let status = second.block_on(async {
        let sup = Supervisor::new().unwrap();
        let child = sup
            .spawn(Command::new("/bin/sh").args(["-c", "exit 2"]))
            .unwrap();
        child.wait().await
    });
    assert_eq!(status, ExitStatus::Code(2));
}
