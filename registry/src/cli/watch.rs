//! `peerkeep watch`: one line per record change, from a [`Membership`] view.
//!
//! Changes are computed by comparing consecutive snapshots, so a subscriber that falls behind
//! (or a re-read after compaction) still prints a correct, if coarser, sequence of changes.

use std::sync::Arc;

use serde_json::json;

use super::out::emit;
use crate::cli_args::EtcdArgs;
use crate::connect::Etcd;
use crate::membership::Membership;
use crate::names::NodeId;
use crate::record::NodeRecord;
use crate::view::MembershipSnapshot;

/// What happened to one record between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Changed,
    Removed,
}

impl ChangeKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Changed => "changed",
            Self::Removed => "removed",
        }
    }
}

/// One record's change; `record` is the new value (absent when removed).
#[derive(Debug)]
struct Change<'a> {
    kind: ChangeKind,
    id: &'a NodeId,
    record: Option<&'a NodeRecord>,
}

/// The record changes from `prev` to `cur`, by node id.
fn diff<'a>(prev: &'a MembershipSnapshot, cur: &'a MembershipSnapshot) -> Vec<Change<'a>> {
    let mut out = Vec::new();
    for (id, r) in &cur.records {
        match prev.records.get(id) {
            None => out.push(Change {
                kind: ChangeKind::Added,
                id,
                record: Some(r),
            }),
            Some(old) if old != r => out.push(Change {
                kind: ChangeKind::Changed,
                id,
                record: Some(r),
            }),
            Some(_) => {}
        }
    }
    for id in prev.records.keys() {
        if !cur.records.contains_key(id) {
            out.push(Change {
                kind: ChangeKind::Removed,
                id,
                record: None,
            });
        }
    }
    out
}

fn line(change: &Change<'_>, revision: i64, as_json: bool) -> String {
    if as_json {
        return json!({
            "revision": revision,
            "change": change.kind.as_str(),
            "id": change.id,
            "record": change.record,
        })
        .to_string();
    }
    let mut s = format!("rev={revision} {} {}", change.kind.as_str(), change.id);
    if let Some(r) = change.record {
        s.push_str(&format!(" state={} slot={}", r.state, r.slot));
        for (name, ep) in &r.endpoints {
            s.push_str(&format!(" {name}={ep}"));
        }
    }
    s
}

/// Prints the current records as `added`, then every change, until Ctrl-C or SIGTERM.
pub(super) async fn watch(etcd: Etcd, args: &EtcdArgs, as_json: bool) -> anyhow::Result<()> {
    let membership = Membership::start(etcd, args.keyspace()?, args.policy());
    let mut rx = membership.subscribe();
    let mut prev = Arc::new(MembershipSnapshot::default());
    let stop = super::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let cur = rx.borrow_and_update().clone();
        if cur.initialized {
            for change in diff(&prev, &cur) {
                emit(&format!("{}\n", line(&change, cur.revision, as_json)))?;
            }
            prev = cur;
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the membership watcher stopped");
                }
            }
            () = &mut stop => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::AddressPolicy;

    fn rec(id: &str, state: &str) -> NodeRecord {
        let json = format!(
            r#"{{"id":"{id}","state":"{state}","endpoints":{{"p2p":"10.0.0.1:1"}},"slot":1,"instance":"i"}}"#
        );
        NodeRecord::parse(id, json.as_bytes()).expect("valid test record")
    }

    #[test]
    fn diff_reports_added_changed_removed() {
        let p = AddressPolicy::default();
        let a = MembershipSnapshot::from_records([rec("a", "ready"), rec("b", "ready")], 1, p);
        let b = MembershipSnapshot::from_records([rec("b", "draining"), rec("c", "ready")], 2, p);
        let kinds: Vec<(ChangeKind, String)> = diff(&a, &b)
            .iter()
            .map(|c| (c.kind, c.id.to_string()))
            .collect();
        assert_eq!(
            kinds,
            [
                (ChangeKind::Changed, "b".to_owned()),
                (ChangeKind::Added, "c".to_owned()),
                (ChangeKind::Removed, "a".to_owned()),
            ]
        );
        let changes = diff(&a, &b);
        assert_eq!(
            line(&changes[0], 2, false),
            "rev=2 changed b state=draining slot=1 p2p=10.0.0.1:1"
        );
        let v: serde_json::Value =
            serde_json::from_str(&line(&changes[2], 2, true)).expect("json line");
        assert_eq!(v["change"], "removed");
        assert!(v["record"].is_null());
    }
}
