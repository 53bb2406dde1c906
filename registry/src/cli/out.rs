//! Command output on stdout, without panicking when the reader has gone away.
//!
//! Rust ignores SIGPIPE, so writing to a closed pipe (`peerkeep ls --json | true`, `peerkeep
//! watch | head -1`) fails with `BrokenPipe`, and `println!` turns that failure into a panic
//! (exit 101). Commands write through [`emit`] instead, which reports a closed stdout as
//! [`StdoutClosed`]; [`super::run`] ends such a command normally (exit 0), as a Unix filter
//! does when its reader has what it wanted.

use std::io::{ErrorKind, Write};

/// The reader of stdout has gone away; not a failure of the command.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub(super) struct StdoutClosed;

/// Writes `text` to stdout (locked, flushed) as is; add the newline yourself.
pub(super) fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            ErrorKind::BrokenPipe => anyhow::Error::new(StdoutClosed),
            _ => anyhow::Error::new(e).context("cannot write to stdout"),
        })
}

/// Whether `err` is (caused by) a closed stdout.
pub(super) fn is_stdout_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<StdoutClosed>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_stdout_is_recognised_through_context() {
        let err = anyhow::Error::new(StdoutClosed).context("printing the table");
        assert!(is_stdout_closed(&err));
        assert!(!is_stdout_closed(&anyhow::anyhow!("etcd is down")));
    }
}
