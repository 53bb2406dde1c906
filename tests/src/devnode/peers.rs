//! The peer table: who this node is connected to, keyed by the peer's advertised address.
//!
//! It is plain data behind a mutex (never held across an await). It owns the rules that keep
//! the link set consistent on both ends without coordination:
//! - at most one live link per peer; when two nodes dial each other at once, both ends keep the
//!   link dialed by the node with the smaller id (both can compute it from the handshake);
//! - at most `max_peers` live links;
//! - with `--stale-peers`, a closed link's entry stays listed for a while, like Wavelet's
//!   routing table, and disconnecting such an entry fails with "not found".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;

/// Which side dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The peer dialed us.
    Inbound,
    /// We dialed the peer.
    Outbound,
}

/// Identifies one link, so a closing link never removes its replacement.
pub type LinkId = u64;

/// Why a link was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A live link to this peer is kept instead.
    #[error("already connected")]
    Duplicate,
    /// `max_peers` live links.
    #[error("peer limit reached")]
    Full,
}

/// A disconnect for an address with no live link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peer not found")]
pub struct NotFound;

/// A new link asking to be admitted.
#[derive(Debug)]
pub struct NewLink {
    /// The peer's advertised address.
    pub address: SocketAddr,
    /// The peer's node id.
    pub id: String,
    /// Who dialed.
    pub direction: Direction,
    /// The id of the node that dialed (tie-break for simultaneous dials).
    pub dialer: String,
    /// Fired to make the link's task close the connection.
    pub close: oneshot::Sender<()>,
}

/// One peer as `/ledger` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerView {
    /// Advertised p2p address.
    pub address: SocketAddr,
    /// Node id.
    pub id: String,
    /// Who dialed.
    pub direction: Direction,
}

#[derive(Debug)]
enum Link {
    Live {
        link: LinkId,
        dialer: String,
        close: Option<oneshot::Sender<()>>,
    },
    Stale {
        until: Instant,
    },
}

#[derive(Debug)]
struct Entry {
    id: String,
    direction: Direction,
    link: Link,
}

/// The table.
#[derive(Debug)]
pub struct PeerTable {
    entries: HashMap<SocketAddr, Entry>,
    max_peers: usize,
    stale_for: Duration,
    next_link: LinkId,
}

impl PeerTable {
    /// An empty table.
    pub fn new(max_peers: usize, stale_for: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            max_peers,
            stale_for,
            next_link: 1,
        }
    }

    /// Number of live links.
    pub fn live_count(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e.link, Link::Live { .. }))
            .count()
    }

    /// Whether a live link to `address` exists.
    pub fn is_live(&self, address: SocketAddr) -> bool {
        self.entries
            .get(&address)
            .is_some_and(|e| matches!(e.link, Link::Live { .. }))
    }

    /// Whether another live link fits.
    pub fn has_room(&self) -> bool {
        self.live_count() < self.max_peers
    }

    /// Admits a link, possibly replacing a live link that loses the tie-break.
    pub fn admit(&mut self, new: NewLink) -> Result<LinkId, Refused> {
        let existing_dialer = match self.entries.get(&new.address).map(|e| &e.link) {
            Some(Link::Live { dialer, .. }) => Some(dialer.clone()),
            _ => None,
        };
        match existing_dialer {
            Some(d) if new.dialer >= d => return Err(Refused::Duplicate),
            Some(_) => {}
            None if !self.has_room() => return Err(Refused::Full),
            None => {}
        }
        let link = self.next_link;
        self.next_link += 1;
        let old = self.entries.insert(
            new.address,
            Entry {
                id: new.id,
                direction: new.direction,
                link: Link::Live {
                    link,
                    dialer: new.dialer,
                    close: Some(new.close),
                },
            },
        );
        if let Some(Entry {
            link: Link::Live {
                close: Some(close), ..
            },
            ..
        }) = old
        {
            let _ = close.send(());
        }
        Ok(link)
    }

    /// Records that link `link` to `address` closed.
    pub fn closed(&mut self, address: SocketAddr, link: LinkId, now: Instant) {
        let Some(entry) = self.entries.get_mut(&address) else {
            return;
        };
        if !matches!(entry.link, Link::Live { link: l, .. } if l == link) {
            return;
        }
        if self.stale_for.is_zero() {
            self.entries.remove(&address);
        } else {
            entry.link = Link::Stale {
                until: now + self.stale_for,
            };
        }
    }

    /// Closes the live link to `address`. The entry leaves the listing at once (or turns
    /// stale), so a caller that lists right after a disconnect sees its effect.
    pub fn disconnect(&mut self, address: SocketAddr, now: Instant) -> Result<(), NotFound> {
        let link = match self.entries.get_mut(&address).map(|e| &mut e.link) {
            Some(Link::Live { close, link, .. }) => {
                if let Some(close) = close.take() {
                    let _ = close.send(());
                }
                *link
            }
            _ => return Err(NotFound),
        };
        self.closed(address, link, now);
        Ok(())
    }

    /// Closes every live link (shutdown).
    pub fn close_all(&mut self) {
        for e in self.entries.values_mut() {
            if let Link::Live { close, .. } = &mut e.link
                && let Some(close) = close.take()
            {
                let _ = close.send(());
            }
        }
    }

    /// The listed peers (live links and unexpired stale entries), sorted by address.
    pub fn listing(&mut self, now: Instant) -> Vec<PeerView> {
        self.entries
            .retain(|_, e| !matches!(e.link, Link::Stale { until } if until <= now));
        let mut v: Vec<PeerView> = self
            .entries
            .iter()
            .map(|(a, e)| PeerView {
                address: *a,
                id: e.id.clone(),
                direction: e.direction,
            })
            .collect();
        v.sort_by_key(|p| p.address);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(
        addr: &str,
        id: &str,
        dir: Direction,
        dialer: &str,
    ) -> (NewLink, oneshot::Receiver<()>) {
        let (close, rx) = oneshot::channel();
        let n = NewLink {
            address: addr.parse().expect("addr"),
            id: id.into(),
            direction: dir,
            dialer: dialer.into(),
            close,
        };
        (n, rx)
    }

    #[test]
    fn simultaneous_dials_keep_the_smaller_dialers_link() {
        // We are "b"; "a" is the peer.
        let mut t = PeerTable::new(8, Duration::ZERO);
        let (ours, mut ours_rx) = link("127.0.0.1:1", "a", Direction::Outbound, "b");
        t.admit(ours).expect("first link");
        let (theirs, _rx) = link("127.0.0.1:1", "a", Direction::Inbound, "a");
        let kept = t.admit(theirs).expect("smaller dialer wins");
        assert!(ours_rx.try_recv().is_ok(), "replaced link told to close");
        let (again, _rx2) = link("127.0.0.1:1", "a", Direction::Outbound, "b");
        assert_eq!(t.admit(again), Err(Refused::Duplicate));
        assert_eq!(t.live_count(), 1);
        // The replaced link closing later must not remove the kept one.
        t.closed(
            "127.0.0.1:1".parse().expect("addr"),
            kept + 100,
            Instant::now(),
        );
        assert!(t.is_live("127.0.0.1:1".parse().expect("addr")));
    }

    #[test]
    fn full_table_refuses_and_stale_entries_expire() {
        let now = Instant::now();
        let mut t = PeerTable::new(1, Duration::from_secs(5));
        let (a, _ra) = link("127.0.0.1:1", "a", Direction::Inbound, "a");
        let la = t.admit(a).expect("room");
        let (b, _rb) = link("127.0.0.1:2", "b", Direction::Inbound, "b");
        assert_eq!(t.admit(b), Err(Refused::Full));
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        t.closed(addr, la, now);
        assert!(!t.is_live(addr));
        assert_eq!(t.listing(now).len(), 1, "stale entry still listed");
        assert_eq!(t.disconnect(addr, now), Err(NotFound));
        assert!(t.listing(now + Duration::from_secs(6)).is_empty());
    }
}
