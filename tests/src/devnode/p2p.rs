//! Peer links over TCP: accepting, dialing, the handshake, gossip and liveness.
//!
//! Every read and write has a deadline, so a peer that stops talking (killed, partitioned,
//! half-open) is dropped within [`PEER_TIMEOUT`]; a kill -9'd peer on the same host is
//! dropped at once because its kernel closes the socket. Pending handshakes are bounded by a
//! semaphore and live links by `--max-peers`, so a flood of connections costs a bounded amount.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerkeep_registry::{Endpoint, NodeId};
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{MissedTickBehavior, timeout};

use super::Node;
use super::chain::Head;
use super::peers::{Direction, LinkId, NewLink, Refused};
use super::wire::{Message, ReadError, RejectReason, read_message, write_message};

/// Deadline for the TCP connect and for each handshake step.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle link sends a ping.
pub const PING_INTERVAL: Duration = Duration::from_millis(200);
/// A link with nothing received for this long is dead.
pub const PEER_TIMEOUT: Duration = Duration::from_millis(800);
/// Handshakes in progress at once; further connections are closed unanswered.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// What a successful dial achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialOutcome {
    /// A new link is up.
    Connected,
    /// A link to that peer already existed and is kept.
    AlreadyConnected,
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The target is this node's own advertised address.
    #[error("{0} is this node's own address")]
    SelfDial(SocketAddr),
    /// `--max-peers` live links already.
    #[error("peer limit reached ({0} peers)")]
    Full(usize),
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Target.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Connect or handshake took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("handshake with {0} timed out")]
    Timeout(SocketAddr),
    /// The handshake broke off.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// Target.
        addr: SocketAddr,
        /// Cause.
        source: ReadError,
    },
    /// The peer refused the link.
    #[error("{addr} refused the connection ({reason:?}): {detail}")]
    Rejected {
        /// Target.
        addr: SocketAddr,
        /// Its reason.
        reason: RejectReason,
        /// Its explanation.
        detail: String,
    },
    /// The peer answered something that is not a handshake.
    #[error("{addr} answered the handshake with {what}")]
    Protocol {
        /// Target.
        addr: SocketAddr,
        /// What came instead.
        what: String,
    },
}

/// Accepts peer connections until the listener fails.
pub async fn accept_loop(node: Arc<Node>, listener: TcpListener) {
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "p2p accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(%from, "too many pending handshakes, dropping connection");
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let accepted = timeout(HANDSHAKE_TIMEOUT, accept_handshake(&node, stream)).await;
            drop(permit);
            match accepted {
                Ok(Ok(Some(link))) => link.run(node).await,
                Ok(Ok(None)) => {}
                Ok(Err(error)) => tracing::debug!(%from, %error, "inbound handshake failed"),
                Err(_) => tracing::debug!(%from, "inbound handshake timed out"),
            }
        });
    }
}

/// A handshaken link, ready to run.
struct Link {
    peer: SocketAddr,
    peer_id: String,
    link: LinkId,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    close: oneshot::Receiver<()>,
}

async fn accept_handshake(node: &Node, stream: TcpStream) -> Result<Option<Link>, ReadError> {
    let _ = stream.set_nodelay(true);
    let (rd, mut writer) = stream.into_split();
    let mut reader = BufReader::new(rd);
    let mut buf = Vec::new();
    let Message::Hello {
        id,
        address,
        dialed,
    } = read_message(&mut reader, &mut buf).await?
    else {
        return Ok(None);
    };
    let reject = |reason, detail: String| Message::Reject { reason, detail };
    let verdict = (|| {
        let peer_id: NodeId = id
            .parse()
            .map_err(|e| reject(RejectReason::BadHello, format!("bad node id: {e}")))?;
        let peer: Endpoint = address
            .parse()
            .map_err(|e| reject(RejectReason::BadHello, format!("bad address: {e}")))?;
        if dialed != node.advertised.to_string() {
            return Err(reject(
                RejectReason::WrongAddress,
                format!(
                    "dialed at {dialed:?}, but this node must be dialed at {}",
                    node.advertised
                ),
            ));
        }
        if peer_id == node.id {
            return Err(reject(RejectReason::BadHello, "that is my own id".into()));
        }
        Ok((peer_id, peer.addr()))
    })();
    let (peer_id, peer) = match verdict {
        Ok(v) => v,
        Err(msg) => {
            let _ = write_message(&mut writer, &msg).await;
            return Ok(None);
        }
    };
    let (close_tx, close) = oneshot::channel();
    let admitted = node.lock_peers().admit(NewLink {
        address: peer,
        id: peer_id.to_string(),
        direction: Direction::Inbound,
        dialer: peer_id.to_string(),
        close: close_tx,
    });
    let link = match admitted {
        Ok(link) => link,
        Err(refused) => {
            let reason = match refused {
                Refused::Duplicate => RejectReason::Duplicate,
                Refused::Full => RejectReason::Full,
            };
            let _ = write_message(&mut writer, &reject(reason, refused.to_string())).await;
            return Ok(None);
        }
    };
    let welcome = Message::Welcome {
        id: node.id.to_string(),
        address: node.advertised.to_string(),
    };
    if let Err(error) = write_message(&mut writer, &welcome).await {
        node.lock_peers().closed(peer, link, Instant::now());
        return Err(ReadError::Io(error));
    }
    tracing::info!(peer = %peer, peer_id = %peer_id, "inbound peer connected");
    Ok(Some(Link {
        peer,
        peer_id: peer_id.to_string(),
        link,
        reader,
        writer,
        close,
    }))
}

/// Dials `target`, handshakes, and on success leaves the link running in its own task.
pub async fn dial(node: &Arc<Node>, target: SocketAddr) -> Result<DialOutcome, DialError> {
    if target == node.advertised {
        return Err(DialError::SelfDial(target));
    }
    {
        let peers = node.lock_peers();
        if peers.is_live(target) {
            return Ok(DialOutcome::AlreadyConnected);
        }
        if !peers.has_room() {
            return Err(DialError::Full(node.max_peers));
        }
    }
    let link = match timeout(HANDSHAKE_TIMEOUT, dial_handshake(node, target)).await {
        Ok(r) => r?,
        Err(_) => return Err(DialError::Timeout(target)),
    };
    let Some(link) = link else {
        return Ok(DialOutcome::AlreadyConnected);
    };
    tracing::info!(peer = %target, peer_id = %link.peer_id, "outbound peer connected");
    tokio::spawn(link.run(node.clone()));
    Ok(DialOutcome::Connected)
}

async fn dial_handshake(node: &Node, target: SocketAddr) -> Result<Option<Link>, DialError> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|source| DialError::Connect {
            addr: target,
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (rd, mut writer) = stream.into_split();
    let mut reader = BufReader::new(rd);
    let hello = Message::Hello {
        id: node.id.to_string(),
        address: node.advertised.to_string(),
        dialed: target.to_string(),
    };
    let handshake_err = |source| DialError::Handshake {
        addr: target,
        source,
    };
    write_message(&mut writer, &hello)
        .await
        .map_err(|e| handshake_err(ReadError::Io(e)))?;
    let mut buf = Vec::new();
    let answer = read_message(&mut reader, &mut buf)
        .await
        .map_err(handshake_err)?;
    let peer_id = match answer {
        Message::Welcome { id, .. } => id,
        Message::Reject {
            reason: RejectReason::Duplicate,
            ..
        } => return Ok(None),
        Message::Reject { reason, detail } => {
            return Err(DialError::Rejected {
                addr: target,
                reason,
                detail,
            });
        }
        other => {
            return Err(DialError::Protocol {
                addr: target,
                what: format!("{other:?}"),
            });
        }
    };
    let (close_tx, close) = oneshot::channel();
    let admitted = node.lock_peers().admit(NewLink {
        address: target,
        id: peer_id.clone(),
        direction: Direction::Outbound,
        dialer: node.id.to_string(),
        close: close_tx,
    });
    match admitted {
        Ok(link) => Ok(Some(Link {
            peer: target,
            peer_id,
            link,
            reader,
            writer,
            close,
        })),
        Err(Refused::Duplicate) => Ok(None),
        Err(Refused::Full) => Err(DialError::Full(node.max_peers)),
    }
}

impl Link {
    /// Gossips until the link dies or is asked to close, then updates the peer table.
    async fn run(self, node: Arc<Node>) {
        let Link {
            peer,
            peer_id,
            link,
            mut reader,
            mut writer,
            close,
        } = self;
        let why = tokio::select! {
            why = read_loop(&node, &mut reader) => why,
            why = write_loop(&node, &mut writer) => why,
            _ = close => "closed by request".to_string(),
        };
        node.lock_peers().closed(peer, link, Instant::now());
        tracing::info!(peer = %peer, %peer_id, reason = %why, "peer disconnected");
    }
}

async fn read_loop(node: &Node, reader: &mut BufReader<OwnedReadHalf>) -> String {
    let mut buf = Vec::new();
    loop {
        match timeout(PEER_TIMEOUT, read_message(reader, &mut buf)).await {
            Err(_) => return format!("nothing received for {PEER_TIMEOUT:?}"),
            Ok(Err(e)) => return e.to_string(),
            Ok(Ok(Message::Block { height, time_ms })) => {
                if node.chain.observe(Head { height, time_ms }) {
                    tracing::debug!(height, "followed a peer's head");
                }
            }
            Ok(Ok(Message::Ping)) => {}
            Ok(Ok(other)) => return format!("unexpected message {other:?}"),
        }
    }
}

async fn write_loop(node: &Node, writer: &mut OwnedWriteHalf) -> String {
    let mut head = node.chain.subscribe();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut send_head = true;
    loop {
        let msg = if send_head {
            send_head = false;
            let h = *head.borrow_and_update();
            Message::Block {
                height: h.height,
                time_ms: h.time_ms,
            }
        } else {
            tokio::select! {
                changed = head.changed() => {
                    if changed.is_err() {
                        return "node shutting down".into();
                    }
                    send_head = true;
                    continue;
                }
                _ = ping.tick() => Message::Ping,
            }
        };
        match timeout(PEER_TIMEOUT, write_message(writer, &msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return format!("write failed: {e}"),
            Err(_) => return format!("write blocked for {PEER_TIMEOUT:?}"),
        }
    }
}
