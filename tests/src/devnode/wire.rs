//! The devnode peer protocol: one JSON object per line over TCP.
//!
//! A line-based protocol keeps the daemon debuggable with `nc`, and a hard cap on line length
//! ([`MAX_LINE_BYTES`]) means a peer that never sends a newline costs at most that much memory
//! before it is dropped.

use std::io;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest accepted line, newline included.
pub const MAX_LINE_BYTES: usize = 4096;

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// First line from the dialer: who it is, where it can be dialed, and which address it
    /// dialed (the acceptor refuses a dial at any address but the one it advertises).
    Hello {
        /// The dialer's node id.
        id: String,
        /// The dialer's advertised p2p address.
        address: String,
        /// The address the dialer used to reach the acceptor.
        dialed: String,
    },
    /// The acceptor's answer when it keeps the connection.
    Welcome {
        /// The acceptor's node id.
        id: String,
        /// The acceptor's advertised p2p address.
        address: String,
    },
    /// The acceptor's answer when it refuses the connection; the connection is closed after it.
    Reject {
        /// Why, for the dialer's error message.
        reason: RejectReason,
        /// Human detail.
        detail: String,
    },
    /// The sender's chain head; sent after the handshake and whenever the head moves.
    Block {
        /// Block height.
        height: u64,
        /// When the block was made, in milliseconds since the Unix epoch.
        time_ms: u64,
    },
    /// Keeps an idle link observably alive (half-open links are found by its absence).
    Ping,
}

/// Why an acceptor refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The two nodes are already connected.
    Duplicate,
    /// The acceptor has `--max-peers` connections.
    Full,
    /// The dialer used an address other than the one the acceptor advertises.
    WrongAddress,
    /// The hello was malformed (bad id or address) or came from the node itself.
    BadHello,
}

/// A protocol-level read failure.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// A line longer than [`MAX_LINE_BYTES`].
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
    /// Not a protocol message.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads one message. `buf` is scratch space reused between calls.
pub async fn read_message<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Message, ReadError> {
    buf.clear();
    let limit = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX);
    let n = reader.take(limit).read_until(b'\n', buf).await?;
    if n == 0 {
        return Err(ReadError::Closed);
    }
    if buf.last() != Some(&b'\n') {
        // Either the cap was hit or the peer closed mid-line; both end the link.
        return Err(if n >= MAX_LINE_BYTES {
            ReadError::TooLong
        } else {
            ReadError::Closed
        });
    }
    Ok(serde_json::from_slice(buf)?)
}

/// Writes one message followed by a newline.
pub async fn write_message<W: AsyncWrite + Unpin>(writer: &mut W, msg: &Message) -> io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let mut out = Vec::new();
        let msg = Message::Block {
            height: 7,
            time_ms: 1,
        };
        write_message(&mut out, &msg).await.expect("write to vec");
        let mut buf = Vec::new();
        let got = read_message(&mut BufReader::new(&out[..]), &mut buf).await;
        assert_eq!(got.expect("parses"), msg);

        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let got = read_message(&mut BufReader::new(&long[..]), &mut buf).await;
        assert!(matches!(got, Err(ReadError::TooLong)), "{got:?}");

        let junk = b"{\"type\":\"nope\"}\n";
        let got = read_message(&mut BufReader::new(&junk[..]), &mut buf).await;
        assert!(matches!(got, Err(ReadError::Malformed(_))), "{got:?}");

        let got = read_message(&mut BufReader::new(&b""[..]), &mut buf).await;
        assert!(matches!(got, Err(ReadError::Closed)), "{got:?}");
    }
}
