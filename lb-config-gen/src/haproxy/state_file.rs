//! Filtering a `show servers state` dump into the `server-state-file` loaded by the next worker.
//!
//! The state file carries health and administrative state across a reload. HAProxy does not
//! restore IP-literal addresses from it but does apply its ports, and it would restore a slot's
//! old maintenance state onto a node that has since joined. So only lines for servers that stay
//! exactly as they are — same slot, same node, same address — are kept; every other server
//! starts from the new file (joiners down until their checks pass, empty slots disabled).

use std::collections::BTreeMap;

use peerkeep_registry::Slot;

use crate::model::{Model, Server};
use crate::render::BackendName;

/// Keeps the lines of `dump` whose server is unchanged between `running` and `desired`.
pub fn filter(dump: &str, running: &Model, desired: &Model) -> String {
    let unchanged = unchanged_servers(running, desired);
    let mut out = String::new();
    let mut columns: Option<Vec<&str>> = None;
    for line in dump.lines() {
        let line = line.trim_end();
        if let Some(header) = line.strip_prefix("# ") {
            columns = Some(header.split_whitespace().collect());
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let Some(cols) = &columns else {
            // The format version line precedes the header.
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let get = |name: &str| {
            cols.iter()
                .position(|c| *c == name)
                .and_then(|i| fields.get(i))
        };
        let (Some(be), Some(srv), Some(addr), Some(port)) = (
            get("be_name"),
            get("srv_name"),
            get("srv_addr"),
            get("srv_port"),
        ) else {
            continue;
        };
        let keep = unchanged
            .get(&(be.to_string(), srv.to_string()))
            .is_some_and(|s| {
                s.addr.ip().to_string() == **addr && s.addr.port().to_string() == **port
            });
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `(backend name, server name)` of every occupied slot that is identical in both models.
fn unchanged_servers<'m>(
    running: &Model,
    desired: &'m Model,
) -> BTreeMap<(String, String), &'m Server> {
    let mut map = BTreeMap::new();
    for d in &desired.backends {
        let Some(r) = running.backends.iter().find(|r| r.service == d.service) else {
            continue;
        };
        let per_node: Vec<u32> = d.per_node_slots().map(|(n, _)| n).collect();
        for (slot, server) in &d.servers {
            if r.servers.get(slot) != Some(server) {
                continue;
            }
            let srv = format!("s{slot}");
            map.insert(
                (
                    BackendName::Service(d.service.name.clone()).to_string(),
                    srv.clone(),
                ),
                server,
            );
            if per_node.contains(&slot.get()) {
                let be = BackendName::Node(d.service.name.clone(), Slot::get(*slot));
                map.insert((be.to_string(), srv), server);
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::build;
    use crate::model::tests::{config, node, snap};

    #[test]
    fn keeps_only_unchanged_servers() {
        let c = config();
        let running = build(
            &c,
            &snap(vec![node("a", 1), node("b", 2)]),
            &BTreeMap::new(),
        )
        .0;
        let mut moved = node("b", 2);
        moved.endpoints.insert(
            "api".parse().expect("valid"),
            "10.5.5.5:9000".parse().expect("valid"),
        );
        let desired = build(&c, &snap(vec![node("a", 1), moved]), &BTreeMap::new()).0;
        let dump = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_port\n\
2 rpc 1 s1 10.0.0.11 2 9000\n\
2 rpc 2 s2 10.0.0.12 2 9000\n\
3 rpc:n1 1 s1 10.0.0.11 2 9000\n\
4 p2p 3 s3 127.0.0.1 0 1\n\n";
        let out = filter(dump, &running, &desired);
        assert_eq!(
            out,
            "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_port\n\
2 rpc 1 s1 10.0.0.11 2 9000\n\
3 rpc:n1 1 s1 10.0.0.11 2 9000\n"
        );
    }
}
