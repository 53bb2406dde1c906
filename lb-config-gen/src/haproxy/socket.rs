//! One request/response exchange on an HAProxy CLI socket (master or runtime API).
//!
//! HAProxy's master socket answers only after the client half-closes its write side, and both
//! sockets close the connection after the last command, so an exchange is: connect, write the
//! whole request, shut down writing, read to end of file, all within one deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest answer accepted; `show servers state` for 10,000 servers is about 1.5 MB.
const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;

/// A CLI socket exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Connecting, writing or reading failed.
    #[error("HAProxy socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No complete answer within the deadline.
    #[error("HAProxy socket {path}: no answer within {timeout:?}")]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The deadline.
        timeout: Duration,
    },
}

/// Sends `request` and returns the whole answer.
pub async fn exchange(
    path: &Path,
    request: &str,
    timeout: Duration,
) -> Result<String, SocketError> {
    let io = |source| SocketError::Io {
        path: path.to_owned(),
        source,
    };
    let work = async {
        let mut stream = UnixStream::connect(path).await.map_err(io)?;
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        stream.shutdown().await.map_err(io)?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut answer)
            .await
            .map_err(io)?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| SocketError::Timeout {
            path: path.to_owned(),
            timeout,
        })?
}
