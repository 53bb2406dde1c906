//! The devnode "chain": just a head (height and block time) that the producer advances and
//! everybody else adopts from gossip when it is higher.
//!
//! The block time travels with the height so a follower's lag (now − head time) means the same
//! thing as on a real chain, and a frozen head (`--frozen-head`) shows up as growing lag while
//! the node keeps claiming to be synced, like a stalled geth.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A chain head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Block height, 0 at genesis.
    pub height: u64,
    /// Block time in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The node's head, shared by the producer, the peer links and the API.
#[derive(Debug)]
pub struct Chain {
    head: watch::Sender<Head>,
    frozen: bool,
}

impl Chain {
    /// A chain at genesis (height 0, made now). A frozen chain never moves.
    pub fn new(frozen: bool) -> Self {
        let (head, _) = watch::channel(Head {
            height: 0,
            time_ms: now_ms(),
        });
        Self { head, frozen }
    }

    /// The current head.
    pub fn head(&self) -> Head {
        *self.head.borrow()
    }

    /// A receiver that wakes on every head change.
    pub fn subscribe(&self) -> watch::Receiver<Head> {
        self.head.subscribe()
    }

    /// Makes a new block on top of the head.
    pub fn produce(&self) {
        if self.frozen {
            return;
        }
        self.head.send_modify(|h| {
            h.height += 1;
            h.time_ms = now_ms();
        });
    }

    /// Adopts `seen` if it is higher than the head; returns whether it did.
    pub fn observe(&self, seen: Head) -> bool {
        if self.frozen {
            return false;
        }
        self.head.send_if_modified(|h| {
            if seen.height > h.height {
                *h = seen;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_only_higher_heads_unless_frozen() {
        let c = Chain::new(false);
        c.produce();
        assert_eq!(c.head().height, 1);
        assert!(!c.observe(Head {
            height: 1,
            time_ms: 5
        }));
        assert!(c.observe(Head {
            height: 9,
            time_ms: 5
        }));
        assert_eq!(
            c.head(),
            Head {
                height: 9,
                time_ms: 5
            }
        );

        let f = Chain::new(true);
        f.produce();
        assert!(!f.observe(Head {
            height: 9,
            time_ms: 5
        }));
        assert_eq!(f.head().height, 0);
    }
}
