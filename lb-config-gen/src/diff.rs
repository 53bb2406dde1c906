//! What must change in HAProxy to go from the running model to the desired one. Pure.
//!
//! When only slot occupancy differs (same services, same capacities, same global settings), the
//! change is a list of runtime API commands on the pre-allocated servers and no process is
//! replaced. Anything else — a first start, a config change, a slot beyond capacity (the model
//! grew the capacity) — is a reload of the newly rendered file.

use std::collections::BTreeSet;

use peerkeep_registry::Slot;

use crate::config::ServiceName;
use crate::model::{BackendModel, Model, Server};
use crate::render::{BackendName, RenderedConfig, render};
use crate::runtime_cmd::{AdminState, RuntimeCommand};

/// How to get from the running state to the desired one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Apply {
    /// Already there.
    Nothing,
    /// Send these commands over the runtime API (and rewrite the file, without a reload).
    Runtime(Vec<RuntimeCommand>),
    /// Validate this file, install it and reload.
    Reload(RenderedConfig),
}

/// Compares `running` (`None` before the first apply) with `desired`.
pub fn diff(running: Option<&Model>, desired: &Model) -> Apply {
    let Some(running) = running else {
        return Apply::Reload(render(desired));
    };
    if !running.same_layout(desired) {
        return Apply::Reload(render(desired));
    }
    let mut cmds = Vec::new();
    for (r, d) in running.backends.iter().zip(&desired.backends) {
        backend_commands(r, d, &mut cmds);
    }
    if cmds.is_empty() {
        Apply::Nothing
    } else {
        Apply::Runtime(cmds)
    }
}

fn backend_commands(running: &BackendModel, desired: &BackendModel, out: &mut Vec<RuntimeCommand>) {
    let slots: BTreeSet<Slot> = running
        .servers
        .keys()
        .chain(desired.servers.keys())
        .copied()
        .collect();
    let name = &desired.service.name;
    let per_node: BTreeSet<u32> = desired.per_node_slots().map(|(n, _)| n).collect();
    for slot in slots {
        let (r, d) = (running.servers.get(&slot), desired.servers.get(&slot));
        if r == d {
            continue;
        }
        let mut targets = vec![BackendName::Service(name.clone())];
        if per_node.contains(&slot.get()) {
            targets.push(BackendName::Node(name.clone(), slot.get()));
        }
        for backend in targets {
            slot_commands(backend, slot, r, d, out);
        }
    }
}

fn slot_commands(
    backend: BackendName,
    slot: Slot,
    running: Option<&Server>,
    desired: Option<&Server>,
    out: &mut Vec<RuntimeCommand>,
) {
    let state = |state| RuntimeCommand::SetState {
        backend: backend.clone(),
        slot,
        state,
    };
    let Some(d) = desired else {
        out.push(state(AdminState::Maint));
        return;
    };
    if running.is_some() {
        // A slot taken over by another address leaves the pool before it moves, so no request
        // reaches the new address before its checks pass.
        out.push(state(AdminState::Maint));
    }
    out.push(RuntimeCommand::SetAddr {
        backend: backend.clone(),
        slot,
        addr: d.addr,
    });
    if let Some(addr) = d.check_addr {
        out.push(RuntimeCommand::SetCheckAddr {
            backend: backend.clone(),
            slot,
            addr,
        });
    }
    out.push(state(AdminState::Ready));
    // Leaving maintenance marks a checked server up at once; a joiner must earn it.
    out.push(RuntimeCommand::MarkDown { backend, slot });
}

/// Services whose backend would go from two or more servers to none: the empty-set guard
/// applies such a change only after a second full read confirms it.
pub fn emptied_backends(running: &Model, desired: &Model) -> Vec<ServiceName> {
    desired
        .backends
        .iter()
        .filter(|d| d.servers.is_empty())
        .filter(|d| {
            running
                .backends
                .iter()
                .any(|r| r.service.name == d.service.name && r.servers.len() >= 2)
        })
        .map(|d| d.service.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use peerkeep_registry::NodeRecord;

    use super::*;
    use crate::model::build;
    use crate::model::tests::{config, node, record, snap};

    fn model(records: Vec<NodeRecord>) -> Model {
        build(&config(), &snap(records), &BTreeMap::new()).0
    }

    fn text(apply: &Apply) -> Vec<String> {
        match apply {
            Apply::Runtime(cmds) => cmds.iter().map(ToString::to_string).collect(),
            Apply::Reload(_) => vec!["RELOAD".into()],
            Apply::Nothing => vec![],
        }
    }

    #[test]
    fn table() {
        let moved = record(
            "a",
            1,
            "ready",
            &[
                ("api", "10.9.9.9:9000"),
                ("health", "10.9.9.9:8080"),
                ("p2p", "10.9.9.9:3000"),
            ],
        );
        type Case = (
            &'static str,
            Option<Vec<NodeRecord>>,
            Vec<NodeRecord>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "first apply reloads",
                None,
                vec![node("a", 1)],
                vec!["RELOAD"],
            ),
            (
                "same membership does nothing",
                Some(vec![node("a", 1)]),
                vec![node("a", 1)],
                vec![],
            ),
            (
                "joiner is set, made ready, then marked down until checks pass",
                Some(vec![node("a", 1)]),
                vec![node("a", 1), node("b", 2)],
                vec![
                    "set server rpc/s2 addr 10.0.0.12 port 9000",
                    "set server rpc/s2 check-addr 10.0.0.12 port 8080",
                    "set server rpc/s2 state ready",
                    "set server rpc/s2 health down",
                    "set server rpc:n2/s2 addr 10.0.0.12 port 9000",
                    "set server rpc:n2/s2 check-addr 10.0.0.12 port 8080",
                    "set server rpc:n2/s2 state ready",
                    "set server rpc:n2/s2 health down",
                    "set server p2p/s2 addr 10.0.0.12 port 3000",
                    "set server p2p/s2 state ready",
                    "set server p2p/s2 health down",
                ],
            ),
            (
                "leaver goes to maintenance",
                Some(vec![node("a", 1), node("b", 2)]),
                vec![node("a", 1)],
                vec![
                    "set server rpc/s2 state maint",
                    "set server rpc:n2/s2 state maint",
                    "set server p2p/s2 state maint",
                ],
            ),
            (
                "moved node leaves the pool before it changes address",
                Some(vec![node("a", 1)]),
                vec![moved.clone()],
                vec![
                    "set server rpc/s1 state maint",
                    "set server rpc/s1 addr 10.9.9.9 port 9000",
                    "set server rpc/s1 check-addr 10.9.9.9 port 8080",
                    "set server rpc/s1 state ready",
                    "set server rpc/s1 health down",
                    "set server rpc:n1/s1 state maint",
                    "set server rpc:n1/s1 addr 10.9.9.9 port 9000",
                    "set server rpc:n1/s1 check-addr 10.9.9.9 port 8080",
                    "set server rpc:n1/s1 state ready",
                    "set server rpc:n1/s1 health down",
                    "set server p2p/s1 state maint",
                    "set server p2p/s1 addr 10.9.9.9 port 3000",
                    "set server p2p/s1 state ready",
                    "set server p2p/s1 health down",
                ],
            ),
            (
                "draining node leaves",
                Some(vec![node("a", 1)]),
                vec![record("a", 1, "draining", &[("api", "10.0.0.11:9000")])],
                vec![
                    "set server rpc/s1 state maint",
                    "set server rpc:n1/s1 state maint",
                    "set server p2p/s1 state maint",
                ],
            ),
            (
                "slot beyond capacity reloads",
                Some(vec![node("a", 1)]),
                vec![node("a", 1), node("z", 5)],
                vec!["RELOAD"],
            ),
        ];
        for (name, running, desired, want) in cases {
            let running = running.map(model);
            let got = diff(running.as_ref(), &model(desired));
            assert_eq!(text(&got), want, "case: {name}");
        }
    }

    #[test]
    fn config_change_reloads_even_with_same_membership() {
        let running = model(vec![node("a", 1)]);
        let mut desired = running.clone();
        desired.haproxy.maxconn += 1;
        assert!(matches!(diff(Some(&running), &desired), Apply::Reload(_)));
    }

    #[test]
    fn empty_set_guard_flags_only_drops_from_two_or_more() {
        let two = model(vec![node("a", 1), node("b", 2)]);
        let one = model(vec![node("a", 1)]);
        let none = model(vec![]);
        let names = |v: Vec<ServiceName>| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(names(emptied_backends(&two, &none)), ["rpc", "p2p"]);
        assert!(emptied_backends(&one, &none).is_empty());
        assert!(emptied_backends(&two, &one).is_empty());
    }
}
