//! The crate's only `unsafe` code: a raw `waitpid` and the choice of std's fork+exec path.
//!
//! **`waitpid(-1, WNOHANG)` returning the pid and raw status.**
//! `nix::sys::wait::waitpid` cannot be used here: it reaps the child first and then converts the
//! status into a `nix` `Signal`, failing with `EINVAL` for signals it does not model (real-time
//! signals). The child is then gone, and so is its pid, so whoever waits for it would wait
//! forever. Decoding the raw status ourselves ([`crate::ExitStatus::from_raw`]) loses nothing.
//!
//! **Resetting the signal mask in the child.** `exec` keeps the signal mask, and std (checked
//! with Rust 1.95) does not clear it: a signal blocked in the spawning thread would stay blocked
//! in the daemon, which then never sees it. A `pre_exec` hook clears it. The hook also makes std
//! fork+exec instead of using glibc's `posix_spawn`, whose helper sets glibc's internal signals
//! (32 and 33) to `SIG_IGN` before `exec`; with fork+exec the child keeps our dispositions, which
//! `exec` resets to default for every caught signal (std itself restores SIGPIPE).
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
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

/// Makes the child of `cmd` start with an empty signal mask (see the module docs).
pub(crate) fn clear_signal_mask_in_child(cmd: &mut Command) {
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
    // functions may be called: it builds an empty set on the stack and calls sigprocmask, which
    // is async-signal-safe. It allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                .map_err(std::io::Error::from)
        });
    }
}
