//! `peerkeep ls` and `peerkeep get`: one read of the cluster, rendered as a table or JSON.

use std::time::Duration;

use anyhow::bail;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::out::emit;
use crate::cli_args::EtcdArgs;
use crate::connect::Etcd;
use crate::membership::read_once;
use crate::names::NodeId;
use crate::record::NodeRecord;
use crate::view::MembershipSnapshot;

/// `ls`: prints the cluster's valid records; skipped entries are summarised on stderr.
pub(super) async fn ls(etcd: &Etcd, args: &EtcdArgs, as_json: bool) -> anyhow::Result<()> {
    let keyspace = args.keyspace()?;
    let snap = read_once(etcd, &keyspace, args.policy()).await?;
    if as_json {
        emit(&format!("{}\n", ls_json(&snap, args.cluster.as_str())))?;
    } else {
        emit(&table(&snap, OffsetDateTime::now_utc()))?;
    }
    if !snap.skipped.is_empty() && !as_json {
        eprintln!(
            "{} invalid entries skipped (see `peerkeep ls --json` for the reasons)",
            snap.skipped.len()
        );
    }
    Ok(())
}

/// `get`: prints one record as pretty JSON, or fails (exit 1) saying why there is none.
pub(super) async fn get(etcd: &Etcd, args: &EtcdArgs, id: &NodeId) -> anyhow::Result<()> {
    let keyspace = args.keyspace()?;
    let snap = read_once(etcd, &keyspace, args.policy()).await?;
    if let Some(record) = snap.records.get(id) {
        emit(&format!("{}\n", serde_json::to_string_pretty(record)?))?;
        return Ok(());
    }
    let key = format!("{:?}", keyspace.node_key(id));
    if let Some(s) = snap.skipped.iter().find(|s| s.key == key) {
        bail!("node {id} has an invalid record, skipped: {}", s.reason);
    }
    bail!("no node {id} in cluster {}", args.cluster);
}

/// The `ls --json` document.
fn ls_json(snap: &MembershipSnapshot, cluster: &str) -> serde_json::Value {
    json!({
        "cluster": cluster,
        "revision": snap.revision,
        "nodes": snap.records.values().collect::<Vec<_>>(),
        "drain_requested": snap.drain_requested,
        "skipped": snap
            .skipped
            .iter()
            .map(|s| json!({ "key": s.key, "reason": s.reason }))
            .collect::<Vec<_>>(),
    })
}

/// The `ls` table, one line per valid record, columns padded to their widest cell.
fn table(snap: &MembershipSnapshot, now: OffsetDateTime) -> String {
    let header = ["ID", "STATE", "SLOT", "P2P", "ENDPOINTS", "AGE"].map(str::to_owned);
    let rows: Vec<[String; 6]> = std::iter::once(header)
        .chain(snap.records.values().map(|r| row(r, snap, now)))
        .collect();
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn row(r: &NodeRecord, snap: &MembershipSnapshot, now: OffsetDateTime) -> [String; 6] {
    let mut state = r.state.to_string();
    if snap.drain_requested.contains(&r.id) {
        state.push_str(" (drain requested)");
    }
    let p2p = r.p2p().map_or_else(|| "-".to_owned(), |e| e.to_string());
    let others: Vec<String> = r
        .endpoints
        .iter()
        .filter(|(name, _)| name.as_str() != "p2p")
        .map(|(name, ep)| format!("{name}={ep}"))
        .collect();
    let others = if others.is_empty() {
        "-".to_owned()
    } else {
        others.join(",")
    };
    [
        r.id.to_string(),
        state,
        r.slot.to_string(),
        p2p,
        others,
        age(&r.started_at, now),
    ]
}

/// How long ago `started_at` (RFC 3339) was, in at most two units; `-` if unknown.
fn age(started_at: &str, now: OffsetDateTime) -> String {
    let Ok(start) = OffsetDateTime::parse(started_at, &Rfc3339) else {
        return "-".to_owned();
    };
    let secs = u64::try_from((now - start).whole_seconds()).unwrap_or(0);
    compact_duration(Duration::from_secs(secs))
}

fn compact_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins}m")
    } else if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::AddressPolicy;

    fn rec(id: &str, endpoints: &str, started_at: &str) -> NodeRecord {
        let json = format!(
            r#"{{"id":"{id}","state":"ready","endpoints":{{{endpoints}}},"slot":2,"instance":"i","started_at":"{started_at}"}}"#
        );
        NodeRecord::parse(id, json.as_bytes()).expect("valid test record")
    }

    #[test]
    fn table_shows_columns_and_drain_requests() {
        let now = OffsetDateTime::parse("2026-11-26T10:05:12Z", &Rfc3339).expect("time");
        let mut snap = MembershipSnapshot::from_records(
            [
                rec(
                    "a",
                    r#""p2p":"10.0.0.1:3000","api":"10.0.0.1:9000","health":"10.0.0.1:8080""#,
                    "2026-11-26T10:00:00Z",
                ),
                rec("b", r#""api":"10.0.0.2:9000""#, "garbage"),
            ],
            7,
            AddressPolicy::default(),
        );
        snap.drain_requested.insert("a".parse().expect("id"));
        let t = table(&snap, now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("ID  STATE"), "{t}");
        assert!(
            lines[1].contains("ready (drain requested)")
                && lines[1].contains("10.0.0.1:3000")
                && lines[1].contains("api=10.0.0.1:9000,health=10.0.0.1:8080")
                && lines[1].ends_with("5m12s"),
            "{t}"
        );
        assert!(lines[2].ends_with("-"), "{t}");
        let doc = ls_json(&snap, "c");
        assert_eq!(doc["nodes"][0]["id"], "a");
        assert_eq!(doc["drain_requested"][0], "a");
    }

    #[test]
    fn durations_are_compact() {
        assert_eq!(compact_duration(Duration::from_secs(42)), "42s");
        assert_eq!(compact_duration(Duration::from_secs(3 * 3600 + 60)), "3h1m");
        assert_eq!(
            compact_duration(Duration::from_secs(2 * 86_400 + 7200)),
            "2d2h"
        );
    }
}
