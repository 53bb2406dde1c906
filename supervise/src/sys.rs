//! The crate's only `unsafe` code: a raw `waitpid` and the choice of std's fork+exec path.
//!
//! **`waitpid(-1, WNOHANG)` returning the pid and raw status.**
//! `nix::sys::wait::waitpid` cannot be used here: it reaps the child first and then converts the
//! status into a `nix` `Signal`, failing with `EINVAL` for signals it does not model (real-time
//! signals). The child is then gone, and so is its pid, so whoever waits for it would wait
//! forever. Decoding the raw status ourselves ([`crate::ExitStatus::from_raw`]) loses nothing.
//!
//! **Fork+exec instead of `posix_spawn`.** std spawns with glibc's `posix_spawn` when it can, and
//! glibc's spawn helper sets its internal signals (32 and 33) to `SIG_IGN` before `exec`, so the
//! child would start with them ignored. Any `pre_exec` hook makes std fork and exec instead, where
//! exec resets every caught signal to its default, as tini and dumb-init children get.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;
use nix::unistd::Pid;

/// Reaps one terminated child, if any: `Ok(None)` when children exist but none has ended,
/// `Err(ECHILD)` when there are no children at all.
pub(crate) fn reap_one_nohang() -> Result<Option<(Pid, i32)>, Errno> {
    let mut raw_status: libc::c_int = 0;
    // SAFETY: waitpid writes a single c_int through the pointer, which refers to a live local
    // that outlives the call; no other memory is touched.
    let pid = unsafe { libc::waitpid(-1, &mut raw_status, libc::WNOHANG) };
    match pid {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        pid => Ok(Some((Pid::from_raw(pid), raw_status))),
    }
}

/// Makes `cmd` spawn through fork+exec (see the module docs) with an empty `pre_exec` hook.
pub(crate) fn use_fork_exec(cmd: &mut Command) {
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe work
    // is allowed. It does nothing at all.
    unsafe {
        cmd.pre_exec(|| Ok(()));
    }
}
