//! Helper commands (`haproxy -c` and the like) run to completion with their output captured,
//! their exit status coming from the reaper like every other child's.

use std::io;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;
use tracing::warn;

use crate::child::ChildHandle;
use crate::error::RunError;
use crate::status::ExitStatus;
use crate::supervisor::Supervisor;

/// What a finished command printed, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// How the command ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

impl Supervisor {
    /// Runs `cmd` to completion with stdin from `/dev/null` and stdout/stderr captured, like
    /// `Command::output`, but reaped by the supervisor. With a `timeout`, the command's process
    /// group is killed when it has not finished (output read and status known) in time.
    ///
    /// Output is read until both pipes close, so a background process that keeps them open
    /// delays the result until it exits or the timeout kills its group. Dropping the future
    /// before it completes kills the command's process group too.
    pub async fn run_output(
        &self,
        cmd: &mut Command,
        timeout: Option<Duration>,
    ) -> Result<Output, RunError> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let program = cmd.get_program().to_string_lossy().into_owned();
        let (handle, mut child) = self.spawn_std(cmd)?;
        let pipes = child
            .stdout
            .take()
            .map(OwnedFd::from)
            .zip(child.stderr.take().map(OwnedFd::from));
        let Some((stdout, stderr)) = pipes else {
            // Unreachable: both were set to piped above. Fail safely rather than hang.
            return Err(abandon(&handle, program, io::ErrorKind::BrokenPipe.into()).await);
        };
        // Cancelling this future must not leave the command running unobserved.
        let guard = KillOnDrop(&handle);
        let collect = collect(&handle, stdout, stderr);
        let result = match timeout {
            Some(limit) => match tokio::time::timeout(limit, collect).await {
                Ok(result) => result,
                Err(_) => {
                    kill_and_reap(&handle).await;
                    return Err(RunError::Timeout {
                        program,
                        timeout: limit,
                    });
                }
            },
            None => collect.await,
        };
        let result = match result {
            Ok(output) => Ok(output),
            Err(source) => Err(abandon(&handle, program, source).await),
        };
        drop(guard);
        result
    }
}

/// Kills the command's process group if `run_output` is dropped before the command was reaped;
/// the reaper collects it as usual.
struct KillOnDrop<'a>(&'a ChildHandle);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if self.0.try_status().is_none() {
            // ESRCH: already gone, nothing to do.
            let _ = self.0.signal_group(Signal::SIGKILL);
        }
    }
}

async fn collect(handle: &ChildHandle, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<Output> {
    let stdout = pipe::Receiver::from_owned_fd(stdout)?;
    let stderr = pipe::Receiver::from_owned_fd(stderr)?;
    let (stdout, stderr, status) = tokio::join!(read_all(stdout), read_all(stderr), handle.wait());
    Ok(Output {
        status,
        stdout: stdout?,
        stderr: stderr?,
    })
}

async fn read_all(mut from: impl AsyncRead + Unpin) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    from.read_to_end(&mut buf).await?;
    Ok(buf)
}

/// Kills and reaps the command after a read error, and reports the error.
async fn abandon(handle: &ChildHandle, program: String, source: io::Error) -> RunError {
    warn!(program, error = %source, "reading command output failed; killing it");
    kill_and_reap(handle).await;
    RunError::Io { program, source }
}

async fn kill_and_reap(handle: &ChildHandle) {
    // ESRCH: the whole group is already gone; the status is still collected below.
    let _ = handle.signal_group(Signal::SIGKILL);
    handle.wait().await;
}
