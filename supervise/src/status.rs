//! How a child ended, decoded once from the raw `waitpid` status.
//!
//! The signal is kept as a raw number rather than a `nix` `Signal` because a child can be killed
//! by a real-time signal that `nix` does not model; losing that would lose the exit code.

use std::fmt;

use nix::sys::signal::Signal;

/// How a supervised process ended.
///
/// ```
/// use peerkeep_supervise::ExitStatus;
///
/// assert_eq!(ExitStatus::Code(3).to_exit_code(), 3);
/// assert_eq!(ExitStatus::Signaled(15).to_exit_code(), 143);
/// assert_eq!(ExitStatus::Signaled(15).to_string(), "killed by SIGTERM");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// The process called `exit` with this code (0–255).
    Code(i32),
    /// The process was terminated by this signal number.
    Signaled(i32),
}

impl ExitStatus {
    /// Decodes a raw `waitpid` status. `None` for stop/continue reports, which are not endings.
    pub(crate) fn from_raw(raw: i32) -> Option<Self> {
        if libc::WIFEXITED(raw) {
            Some(Self::Code(libc::WEXITSTATUS(raw)))
        } else if libc::WIFSIGNALED(raw) {
            Some(Self::Signaled(libc::WTERMSIG(raw)))
        } else {
            None
        }
    }

    /// The code a parent should exit with to pass this status on: the exit code itself, or
    /// 128 + the signal number, as shells and container runtimes report it.
    pub fn to_exit_code(self) -> i32 {
        match self {
            Self::Code(code) => code,
            Self::Signaled(signo) => 128 + signo,
        }
    }

    /// True for exit code 0.
    pub fn success(self) -> bool {
        self == Self::Code(0)
    }

    /// The exit code, if the process exited rather than being killed.
    pub fn code(self) -> Option<i32> {
        match self {
            Self::Code(code) => Some(code),
            Self::Signaled(_) => None,
        }
    }

    /// The terminating signal, if it was killed by one `nix` knows by name.
    pub fn signal(self) -> Option<Signal> {
        match self {
            Self::Code(_) => None,
            Self::Signaled(signo) => Signal::try_from(signo).ok(),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.signal()) {
            (Self::Code(code), _) => write!(f, "exit code {code}"),
            (Self::Signaled(_), Some(sig)) => write!(f, "killed by {sig}"),
            (Self::Signaled(signo), None) => write!(f, "killed by signal {signo}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_exit_codes_decode_to_code() {
        for code in [0, 1, 3, 127, 255] {
            assert_eq!(
                ExitStatus::from_raw(code << 8),
                Some(ExitStatus::Code(code))
            );
        }
    }

    #[test]
    fn raw_signal_decodes_to_signaled_with_core_flag_ignored() {
        assert_eq!(ExitStatus::from_raw(9), Some(ExitStatus::Signaled(9)));
        assert_eq!(
            ExitStatus::from_raw(11 | 0x80),
            Some(ExitStatus::Signaled(11))
        );
    }

    #[test]
    fn raw_stopped_status_is_not_an_ending() {
        // WIFSTOPPED: low byte 0x7f, stop signal in the next byte.
        assert_eq!(ExitStatus::from_raw((19 << 8) | 0x7f), None);
    }

    #[test]
    fn exit_code_is_code_or_128_plus_signal() {
        assert_eq!(ExitStatus::Code(0).to_exit_code(), 0);
        assert_eq!(ExitStatus::Code(3).to_exit_code(), 3);
        assert_eq!(ExitStatus::Signaled(15).to_exit_code(), 143);
        assert_eq!(ExitStatus::Signaled(9).to_exit_code(), 137);
        assert_eq!(ExitStatus::Signaled(35).to_exit_code(), 163);
    }

    #[test]
    fn realtime_signal_is_kept_and_displayed_by_number() {
        let status = ExitStatus::Signaled(35);
        assert_eq!(status.signal(), None);
        assert_eq!(status.to_string(), "killed by signal 35");
    }

    #[test]
    fn success_only_for_code_zero() {
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Code(1).success());
        assert!(!ExitStatus::Signaled(15).success());
    }
}
