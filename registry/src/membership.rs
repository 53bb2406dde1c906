//! `Membership`: the live, validated view of one cluster, kept current by an etcd watch.
//!
//! The loop is the one DESIGN.md prescribes: read the whole cluster prefix at revision R, publish,
//! watch from R+1. A broken stream (etcd restarted, connection cut, a hung etcd detected by the
//! connection's HTTP/2 pings) is resumed from the last applied revision + 1, so no event is lost
//! and nothing is re-read; a watch cancelled because its start revision was compacted is never
//! retried at that revision — the prefix is read again instead. So is a resume that cannot get
//! past its start revision: etcd sends a watcher's backlog (up to 1000 revisions) as one message,
//! and one above the client's 4 MiB limit would fail every resume at that revision; the paged
//! read of the prefix always fits. While etcd cannot be reached the
//! last view stays published, marked stale, and the loop retries forever with jittered, capped
//! backoff: an outage never looks like an empty cluster.
//!
//! Everything read goes through the private `tracker` module (record parsing, address policy,
//! counting invalid entries); this module owns only the I/O and the stale flag.

mod tracker;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::connect::Etcd;
use crate::endpoint::AddressPolicy;
use crate::error::RegistryError;
use crate::keys::Keyspace;
use crate::names::ClusterName;
use crate::view::MembershipSnapshot;
use tracker::{RawKv, Tracker};

/// Longest pause between attempts to reach etcd while it is down.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// First pause after a failure.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Breaks in a row of an established watch that delivered nothing past its start revision,
/// after which the prefix is read again instead of resuming there once more: whatever keeps
/// failing the resume at that revision (a backlog too large for one message is the known
/// case, detected at once) would fail it again.
const MAX_STUCK_BREAKS: u32 = 3;
/// A re-read this long after the previous one starts the re-read backoff over: an occasional
/// compaction re-reads promptly, a watch that is cancelled again and again backs off.
const RELIST_CALM: Duration = Duration::from_secs(30);
/// A watch whose etcd member is this many revisions behind our view means etcd's history went
/// back (a restore or a wipe) without looking twice; a smaller gap may be a lagging follower.
const BACKWARDS_GAP: i64 = 10_000;
/// Wait before looking again whether a smaller gap persists.
const BACKWARDS_RECHECK: Duration = Duration::from_millis(500);

/// A continuously updated view of one cluster. Dropping it stops the watch.
#[derive(Debug)]
pub struct Membership {
    rx: watch::Receiver<Arc<MembershipSnapshot>>,
    task: JoinHandle<()>,
}

impl Membership {
    /// Starts watching `keyspace`'s cluster in a background task and returns at once; the first
    /// snapshot has `initialized == false` until the first read succeeds.
    ///
    /// Must be called within a tokio runtime.
    pub fn start(etcd: Etcd, keyspace: Keyspace, policy: AddressPolicy) -> Self {
        let (tx, rx) = watch::channel(Arc::new(MembershipSnapshot::default()));
        let watcher = Watcher {
            etcd,
            tracker: Tracker::new(keyspace, policy),
            tx,
            stale_since: None,
        };
        let task = tokio::spawn(watcher.run());
        Self { rx, task }
    }

    /// The latest published snapshot.
    pub fn snapshot(&self) -> Arc<MembershipSnapshot> {
        self.rx.borrow().clone()
    }

    /// Waits for the first successful read of the cluster and returns that snapshot (at once if
    /// it already happened). Consumers that must not act on an empty, unloaded view start here.
    pub async fn first_read(&self) -> Arc<MembershipSnapshot> {
        let mut rx = self.rx.clone();
        loop {
            let snap = rx.borrow_and_update().clone();
            if snap.initialized {
                return snap;
            }
            if rx.changed().await.is_err() {
                // The task only ends by panicking; hand back what there is rather than hang.
                return rx.borrow().clone();
            }
        }
    }

    /// A receiver that is notified of every new snapshot. A receiver that lags behind only ever
    /// sees the latest one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MembershipSnapshot>> {
        self.rx.clone()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the cluster once, with the same validation as the watcher.
pub async fn read_once(
    etcd: &Etcd,
    keyspace: &Keyspace,
    policy: AddressPolicy,
) -> Result<MembershipSnapshot, RegistryError> {
    let mut tracker = Tracker::new(keyspace.clone(), policy);
    let (kvs, revision) = list(etcd, &keyspace.cluster_prefix()).await?;
    tracker.replace_all(kvs, revision);
    Ok(tracker.snapshot(None))
}

/// The names of every cluster that has at least one key under the prefix.
pub async fn list_clusters(
    etcd: &Etcd,
    keyspace: &Keyspace,
) -> Result<BTreeSet<ClusterName>, RegistryError> {
    let prefix = keyspace.clusters_prefix();
    let resp = etcd
        .get(
            &prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| keyspace.cluster_of(&String::from_utf8_lossy(kv.key())))
        .collect())
}

/// Keys per page of a prefix read; halved while a page is too large for one gRPC message.
const PAGE_KEYS: i64 = 256;

/// Reads everything under `prefix`, with the revision of the read.
///
/// The read is paged, every page at the revision of the first: one reply is capped at 4 MiB by
/// the gRPC client, and whoever can write under the prefix could otherwise make the whole view
/// unreadable with a few hundred oversized (and invalid anyway) values. A page that is still too
/// large is read again with half as many keys, down to one key per page, which always fits
/// (etcd refuses values above its request size limit, 1.5 MiB by default).
async fn list(etcd: &Etcd, prefix: &str) -> Result<(Vec<RawKv>, i64), RegistryError> {
    let range_end = prefix_end(prefix);
    let mut kvs = Vec::new();
    let mut revision = 0;
    let mut from = prefix.as_bytes().to_vec();
    let mut page = PAGE_KEYS;
    loop {
        let mut opts = GetOptions::new()
            .with_range(range_end.clone())
            .with_limit(page);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let key = String::from_utf8_lossy(&from).into_owned();
        let resp = match etcd.get_bytes(from.clone(), Some(opts), &key).await {
            Ok(r) => r,
            Err(e) if page > 1 && e.is_reply_too_large() => {
                page /= 2;
                continue;
            }
            Err(e) => return Err(e),
        };
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            kvs.push(RawKv {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                mod_revision: kv.mod_revision(),
            });
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
                page = (page * 2).min(PAGE_KEYS);
            }
            _ => return Ok((kvs, revision)),
        }
    }
}

/// The end of the key range of `prefix`: the prefix with its last byte incremented (trailing
/// 0xff bytes dropped first), as etcd's own `--prefix` computes it.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // An empty or all-0xff prefix: "to the end of the key space".
    vec![0]
}

fn retry_delays() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(MIN_RETRY_DELAY)
        .with_max_delay(MAX_RETRY_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

/// What the revision of a newly created watch says about etcd's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum History {
    /// At or past our view: carry on.
    Continues,
    /// Behind our view by a little: a follower that has not caught up yet, or a history that
    /// really went back. Look again with a linearizable read after [`BACKWARDS_RECHECK`].
    Recheck,
    /// Far behind, or still behind on a linearizable read: the history went back; read again.
    WentBack,
}

/// Judges a revision seen by a watch (`current`) against our view, which has everything up to
/// `expected_at_least`. `rechecked` when `current` comes from the linearizable second look,
/// which no lagging member can serve from the past.
fn judge_history(expected_at_least: i64, current: i64, rechecked: bool) -> History {
    if current >= expected_at_least {
        History::Continues
    } else if rechecked || expected_at_least - current > BACKWARDS_GAP {
        History::WentBack
    } else {
        History::Recheck
    }
}

/// Pauses before re-reads after the first, so a watch that etcd keeps cancelling cannot turn
/// into a tight read loop; the backoff starts over after [`RELIST_CALM`] without a re-read.
struct RelistPacer {
    delays: ExponentialBackoff,
    last: Option<Instant>,
}

impl RelistPacer {
    fn new() -> Self {
        Self {
            delays: retry_delays(),
            last: None,
        }
    }

    /// The pause before the next read of the prefix, at `now`.
    fn pause(&mut self, now: Instant) -> Duration {
        let pause = match self.last {
            None => Duration::ZERO,
            Some(last) => {
                if now.saturating_duration_since(last) > RELIST_CALM {
                    self.delays = retry_delays();
                }
                self.delays.next().unwrap_or(MAX_RETRY_DELAY)
            }
        };
        self.last = Some(now + pause);
        pause
    }
}

/// Why a watch stopped being useful.
enum WatchEnd {
    /// The stream broke: resume from `resume_from` after a pause. `established` when etcd had
    /// acknowledged the watch before it broke.
    Broken { resume_from: i64, established: bool },
    /// The watch cannot continue from where it is (compaction, a server-side cancel, a backlog
    /// too large to receive): read again.
    Relist,
}

/// Counts breaks of established watches that made no progress past their start revision, and
/// says when to stop resuming there (after [`MAX_STUCK_BREAKS`] in a row).
#[derive(Debug, Default)]
struct StuckBreaks {
    count: u32,
}

impl StuckBreaks {
    /// Records a break of the watch started at `start`; true when the prefix should be read
    /// again instead of resuming at `resume_from`. A watch that never got established (etcd
    /// unreachable) says nothing about the start revision and is not counted.
    fn relist_after(&mut self, start: i64, resume_from: i64, established: bool) -> bool {
        if resume_from != start {
            self.count = 0;
        } else if established {
            self.count += 1;
        }
        self.count >= MAX_STUCK_BREAKS
    }
}

/// The background task's state.
struct Watcher {
    etcd: Etcd,
    tracker: Tracker,
    tx: watch::Sender<Arc<MembershipSnapshot>>,
    stale_since: Option<SystemTime>,
}

impl Watcher {
    async fn run(mut self) {
        let mut pacer = RelistPacer::new();
        loop {
            let pause = pacer.pause(Instant::now());
            if !pause.is_zero() {
                tracing::debug!(?pause, "pausing before reading the cluster again");
                tokio::time::sleep(pause).await;
            }
            let revision = self.list_until_ok().await;
            let mut next = revision + 1;
            let mut delays = retry_delays();
            let mut stuck = StuckBreaks::default();
            loop {
                match self.watch_from(next, &mut delays).await {
                    WatchEnd::Relist => break,
                    WatchEnd::Broken {
                        resume_from,
                        established,
                    } => {
                        if stuck.relist_after(next, resume_from, established) {
                            tracing::warn!(
                                start = next,
                                breaks = MAX_STUCK_BREAKS,
                                "the watch keeps breaking at the same revision; reading the cluster again"
                            );
                            break;
                        }
                        next = resume_from;
                        let pause = delays.next().unwrap_or(MAX_RETRY_DELAY);
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// Reads the whole cluster prefix, retrying forever, and publishes it. Returns its revision.
    async fn list_until_ok(&mut self) -> i64 {
        let prefix = self.tracker.keyspace().cluster_prefix();
        let mut delays = retry_delays();
        loop {
            match list(&self.etcd, &prefix).await {
                Ok((kvs, revision)) => {
                    if self.tracker.initialized() {
                        tracing::info!(revision, "re-read the cluster; resuming the watch");
                    }
                    self.tracker.replace_all(kvs, revision);
                    self.stale_since = None;
                    self.publish();
                    return revision;
                }
                Err(e) => {
                    self.mark_stale(&e);
                    let pause = delays.next().unwrap_or(MAX_RETRY_DELAY);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Watches from `start` until the stream breaks or is cancelled, applying events as they
    /// come. `delays` is reset once the watch is established.
    async fn watch_from(&mut self, start: i64, delays: &mut ExponentialBackoff) -> WatchEnd {
        let prefix = self.tracker.keyspace().cluster_prefix();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start)
            .with_progress_notify();
        let mut stream = match self.etcd.watch(&prefix, Some(opts)).await {
            Ok(s) => s,
            Err(e) => {
                self.mark_stale(&e);
                return WatchEnd::Broken {
                    resume_from: start,
                    established: false,
                };
            }
        };
        let mut next = start;
        let mut established = false;
        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    self.mark_stale(&"the watch stream ended");
                    return WatchEnd::Broken {
                        resume_from: next,
                        established,
                    };
                }
                Err(e) => {
                    let e = self.etcd.classify("watch", &prefix, e);
                    self.mark_stale(&e);
                    if e.is_reply_too_large() {
                        // Resuming here would get the same oversized backlog again.
                        tracing::warn!(
                            from = next,
                            error = %e,
                            "the watch backlog is too large for one message; reading the cluster again"
                        );
                        return WatchEnd::Relist;
                    }
                    return WatchEnd::Broken {
                        resume_from: next,
                        established,
                    };
                }
            };
            if resp.canceled() {
                let compact_revision = resp.compact_revision();
                if compact_revision > 0 {
                    tracing::info!(
                        start = next,
                        compact_revision,
                        "watch start revision was compacted; reading the cluster again"
                    );
                } else {
                    tracing::warn!(
                        reason = resp.cancel_reason(),
                        "etcd cancelled the watch; reading the cluster again"
                    );
                }
                return WatchEnd::Relist;
            }
            if resp.created() {
                let current = resp.header().map_or(i64::MAX, |h| h.revision());
                match self.check_history(next - 1, current).await {
                    Ok(History::Continues) => {}
                    Ok(History::Recheck | History::WentBack) => return WatchEnd::Relist,
                    Err(e) => {
                        self.mark_stale(&e);
                        return WatchEnd::Broken {
                            resume_from: next,
                            established: false,
                        };
                    }
                }
                established = true;
                *delays = retry_delays();
                if self.stale_since.take().is_some() {
                    tracing::info!(from = next, "watch re-established; the view is current");
                    self.publish();
                }
                continue;
            }
            if resp.events().is_empty() {
                // A progress notification: everything up to its revision has been delivered.
                if let Some(h) = resp.header() {
                    next = next.max(h.revision() + 1);
                    self.tracker.advance(h.revision());
                }
                continue;
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let revision = kv.mod_revision();
                match event.event_type() {
                    EventType::Put => self.tracker.put(RawKv {
                        key,
                        value: kv.value().to_vec(),
                        mod_revision: revision,
                    }),
                    EventType::Delete => self.tracker.delete(&key, revision),
                }
                next = next.max(revision + 1);
            }
            self.publish();
        }
    }

    /// Decides whether etcd's history continues from our view, given the revision a new watch
    /// reported. A small gap is looked at again with a linearizable read, because the watch may
    /// be served by a follower that lags the member our read went to. Never returns `Recheck`.
    async fn check_history(
        &self,
        expected_at_least: i64,
        current: i64,
    ) -> Result<History, RegistryError> {
        let mut verdict = judge_history(expected_at_least, current, false);
        let mut current = current;
        if verdict == History::Recheck {
            tracing::debug!(
                current,
                expected_at_least,
                "the watch's etcd member is behind our view; looking again"
            );
            tokio::time::sleep(BACKWARDS_RECHECK).await;
            let prefix = self.tracker.keyspace().cluster_prefix();
            let resp = self
                .etcd
                .get(
                    &prefix,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await?;
            current = resp.header().map_or(i64::MAX, |h| h.revision());
            verdict = judge_history(expected_at_least, current, true);
        }
        if verdict != History::Continues {
            // etcd came back with an older history (restored or wiped): a watch from our
            // revision would wait for revisions that mean something else. Start over.
            tracing::warn!(
                current,
                expected_at_least,
                "etcd's revision went backwards; reading the cluster again"
            );
            return Ok(History::WentBack);
        }
        Ok(History::Continues)
    }

    fn mark_stale(&mut self, why: &dyn std::fmt::Display) {
        if self.stale_since.is_none() {
            tracing::warn!(
                error = %why,
                "lost the etcd watch; keeping the last view (stale) and retrying"
            );
            self.stale_since = Some(SystemTime::now());
            self.publish();
        } else {
            tracing::debug!(error = %why, "etcd still unreachable");
        }
    }

    fn publish(&self) {
        self.tx
            .send_replace(Arc::new(self.tracker.snapshot(self.stale_since)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn went_backwards_only_when_far_behind_or_still_behind_on_a_second_look() {
        use History::*;
        // (expected at least, seen by the watch, rechecked, verdict)
        let cases = [
            (100, 100, false, Continues),
            (100, 250, false, Continues),
            // A follower a few revisions behind the member the list was read from.
            (100, 97, false, Recheck),
            (100, 100 - BACKWARDS_GAP, false, Recheck),
            (100, 99 - BACKWARDS_GAP, false, WentBack),
            // The linearizable second look is caught up: it was a lagging follower.
            (100, 100, true, Continues),
            (100, 99, true, WentBack),
            // A wiped etcd starts again from revision 1.
            (50_000, 3, false, WentBack),
        ];
        for (expected, current, rechecked, want) in cases {
            assert_eq!(
                judge_history(expected, current, rechecked),
                want,
                "expected {expected}, current {current}, rechecked {rechecked}"
            );
        }
    }

    #[test]
    fn relists_after_the_first_back_off_and_calm_starts_over() {
        let mut p = RelistPacer::new();
        let t0 = Instant::now();
        assert_eq!(p.pause(t0), Duration::ZERO, "the first read is immediate");
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..8 {
            let pause = p.pause(now);
            pauses.push(pause);
            now += pause;
        }
        assert!(pauses.iter().all(|d| *d >= MIN_RETRY_DELAY), "{pauses:?}");
        assert!(pauses[7] > pauses[0], "backs off: {pauses:?}");
        assert!(
            pauses.iter().all(|d| *d <= 2 * MAX_RETRY_DELAY),
            "{pauses:?}"
        );
        let calm = p.pause(now + RELIST_CALM + Duration::from_secs(1));
        assert!(calm < 2 * MIN_RETRY_DELAY + MIN_RETRY_DELAY, "{calm:?}");
    }

    #[test]
    fn resume_stuck_at_one_revision_turns_into_a_relist() {
        let mut s = StuckBreaks::default();
        // Unreachable etcd: never established, never counted, however long it lasts.
        for _ in 0..10 {
            assert!(!s.relist_after(5, 5, false));
        }
        // Established but broken before anything past 5 arrived, in a row.
        assert!(!s.relist_after(5, 5, true));
        assert!(!s.relist_after(5, 5, true));
        // Progress resets the count.
        assert!(!s.relist_after(5, 9, true));
        assert!(!s.relist_after(9, 9, true));
        assert!(!s.relist_after(9, 9, false));
        assert!(!s.relist_after(9, 9, true));
        assert!(s.relist_after(9, 9, true), "third stuck break in a row");
    }
}
