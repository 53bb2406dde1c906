//! What the bench reads from a running fleet: every daemon's peers (all nodes at once, so that a
//! sweep is close to one moment), the agents' counters, and their CPU time from `/proc`.
//!
//! Reads never fail the bench: a node that does not answer counts as not converged.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::join_all;
use serde_json::Value;

/// How long one HTTP request of a sweep may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// One node as the observer sees it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Node id.
    pub id: String,
    /// The daemon's API (`/ledger`).
    pub api: SocketAddr,
}

/// An HTTP client for loopback: no proxy, short timeouts.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT)
        .build()
}

async fn get_json(http: &reqwest::Client, url: String) -> Option<Value> {
    let resp = http.get(url).send().await.ok()?.error_for_status().ok()?;
    resp.json().await.ok()
}

/// The ids of a daemon's listed peers, or `None` if it does not answer.
pub async fn peer_ids(http: &reqwest::Client, api: SocketAddr) -> Option<Vec<String>> {
    let v = get_json(http, format!("http://{api}/ledger")).await?;
    Some(
        v["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["id"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// Every target's peer ids, asked concurrently.
pub async fn sweep(http: &reqwest::Client, targets: &[Target]) -> Vec<Option<Vec<String>>> {
    join_all(targets.iter().map(|t| peer_ids(http, t.api))).await
}

/// Degree bounds a sweep must meet.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Least number of live peers every node needs.
    pub min_live: usize,
    /// Most peers (of any kind) a node may list; `None`: no upper bound.
    pub max_total: Option<usize>,
}

/// Whether every node answered and lies within `bounds`, counting as live only peers in `live`.
/// Returns the (least, greatest) number of listed peers when it does.
pub fn within(
    sweep: &[Option<Vec<String>>],
    live: &BTreeSet<String>,
    bounds: Bounds,
) -> Option<(usize, usize)> {
    let mut range: Option<(usize, usize)> = None;
    for peers in sweep {
        let peers = peers.as_ref()?;
        let live_count = peers.iter().filter(|p| live.contains(*p)).count();
        if live_count < bounds.min_live || bounds.max_total.is_some_and(|m| peers.len() > m) {
            return None;
        }
        let (lo, hi) = range.unwrap_or((peers.len(), peers.len()));
        range = Some((lo.min(peers.len()), hi.max(peers.len())));
    }
    range.or(Some((0, 0)))
}

/// How a sweep stands against `bounds`: nodes answering, below the minimum, above the maximum.
pub fn tally(
    sweep: &[Option<Vec<String>>],
    live: &BTreeSet<String>,
    bounds: Bounds,
) -> (usize, usize, usize) {
    let answering: Vec<&Vec<String>> = sweep.iter().flatten().collect();
    let below = answering
        .iter()
        .filter(|ps| ps.iter().filter(|p| live.contains(*p)).count() < bounds.min_live)
        .count();
    let above = answering
        .iter()
        .filter(|ps| bounds.max_total.is_some_and(|m| ps.len() > m))
        .count();
    (answering.len(), below, above)
}

/// Which targets a sweep finds outside `bounds`, for the report of a run that timed out.
pub fn outliers(
    targets: &[Target],
    sweep: &[Option<Vec<String>>],
    live: &BTreeSet<String>,
    bounds: Bounds,
) -> String {
    let out: Vec<String> = targets
        .iter()
        .zip(sweep)
        .filter_map(|(t, peers)| {
            let Some(peers) = peers else {
                return Some(format!("{}: no answer", t.id));
            };
            let live_count = peers.iter().filter(|p| live.contains(*p)).count();
            let over = bounds.max_total.is_some_and(|m| peers.len() > m);
            (live_count < bounds.min_live || over)
                .then(|| format!("{}: {} peers, {live_count} live", t.id, peers.len()))
        })
        .collect();
    out.join("; ")
}

/// One Prometheus sample (exact series name, no labels) from an agent's `/metrics`.
pub async fn metric(http: &reqwest::Client, health: SocketAddr, name: &str) -> Option<f64> {
    let resp = http
        .get(format!("http://{health}/metrics"))
        .send()
        .await
        .ok()?;
    let body = resp.text().await.ok()?;
    parse_sample(&body, name)
}

/// The value of series `name` (no labels) in Prometheus text.
pub fn parse_sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Connects the agent's keeper has in flight (`/status` → `keeper.in_flight`).
pub async fn in_flight(http: &reqwest::Client, health: SocketAddr) -> Option<u64> {
    get_json(http, format!("http://{health}/status")).await?["keeper"]["in_flight"].as_u64()
}

/// utime + stime of `pid` in clock ticks, from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

/// utime + stime from the text of a `/proc/<pid>/stat` file.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses; the fields start after the last ')'.
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, the Linux value, if that fails).
pub fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn within_counts_live_peers_against_the_minimum_and_all_against_the_maximum() {
        let live: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| (*s).to_owned()).collect();
        let b = Bounds {
            min_live: 2,
            max_total: Some(3),
        };
        assert_eq!(
            within(&[ids(&["b", "c"]), ids(&["a", "c", "x"])], &live, b),
            Some((2, 3))
        );
        // A dead peer ("x") does not count toward the minimum.
        assert_eq!(within(&[ids(&["b", "x"])], &live, b), None);
        // Above the maximum.
        assert_eq!(within(&[ids(&["a", "b", "c", "x"])], &live, b), None);
        // A node that does not answer.
        assert_eq!(within(&[ids(&["a", "b"]), None], &live, b), None);
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "42 (peerkeep (a) x) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn samples_match_the_exact_series_name() {
        let body = "# TYPE x counter\npeerkeep_agent_peer_connects_total 7\n\
                    peerkeep_agent_peer_connects_total_x 9\n";
        assert_eq!(
            parse_sample(body, "peerkeep_agent_peer_connects_total"),
            Some(7.0)
        );
        assert_eq!(parse_sample(body, "peerkeep_agent_missing_total"), None);
    }
}
