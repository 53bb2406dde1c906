//! The typed model of what HAProxy should serve: pure, built from a config and a snapshot.
//!
//! Only nodes in state `ready` and without an operator drain request are served. A ready node
//! that lacks the service's traffic endpoint (or the `health` endpoint its check needs) is
//! skipped and counted, never half-rendered. Servers are keyed by slot, so a node is `s<slot>`
//! in every backend; two records claiming one slot (only possible through hand-written keys)
//! keep the lowest node id and count the other as skipped, so the result is deterministic.
//!
//! Capacity only grows while the process runs: the builder takes the running capacity and
//! doubles it until every slot fits, because shrinking would need a reload for nothing.

use std::collections::BTreeMap;

use peerkeep_registry::{Endpoint, MembershipSnapshot, NodeId, NodeState, Slot};

use crate::config::{CheckKind, Config, HaproxySettings, MAX_CAPACITY, Service, ServiceName};

/// One occupied slot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Server {
    /// The node's id (rendered only in comments).
    pub node: NodeId,
    /// Where traffic goes.
    pub addr: Endpoint,
    /// Where the check goes, for checks on the record's `health` endpoint.
    pub check_addr: Option<Endpoint>,
}

/// One service's backend: its settings, capacity and occupied slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendModel {
    /// The service as configured.
    pub service: Service,
    /// Pre-allocated servers `s1..=s<capacity>`.
    pub capacity: u32,
    /// Occupied slots.
    pub servers: BTreeMap<Slot, Server>,
}

impl BackendModel {
    /// Slots that get a per-node frontend: all of `1..=capacity` whose port fits.
    pub fn per_node_slots(&self) -> impl Iterator<Item = (u32, u16)> + '_ {
        let pn = self.service.per_node;
        (1..=self.capacity).filter_map(move |n| pn.and_then(|pn| pn.port(n)).map(|port| (n, port)))
    }
}

/// The whole desired HAProxy state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// Global settings.
    pub haproxy: HaproxySettings,
    /// One backend per service, in config order.
    pub backends: Vec<BackendModel>,
}

impl Model {
    /// Everything except which slots are occupied: equal layouts can be switched through the
    /// runtime API.
    pub fn same_layout(&self, other: &Model) -> bool {
        self.haproxy == other.haproxy
            && self.backends.len() == other.backends.len()
            && self
                .backends
                .iter()
                .zip(&other.backends)
                .all(|(a, b)| a.service == b.service && a.capacity == b.capacity)
    }

    /// The capacity of each backend, to carry into the next build.
    pub fn capacities(&self) -> BTreeMap<ServiceName, u32> {
        self.backends
            .iter()
            .map(|b| (b.service.name.clone(), b.capacity))
            .collect()
    }

    /// Number of servers in each backend.
    pub fn server_counts(&self) -> impl Iterator<Item = (&ServiceName, usize)> {
        self.backends
            .iter()
            .map(|b| (&b.service.name, b.servers.len()))
    }
}

/// Why a node was left out of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// No endpoint with the service's name.
    NoEndpoint,
    /// The check needs a `health` endpoint and the record has none.
    NoHealthEndpoint,
    /// Another record (lower node id) holds the same slot.
    SlotTaken,
}

/// What the builder left out, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// `(service, node, reason)`, in deterministic order.
    pub entries: Vec<(ServiceName, NodeId, SkipReason)>,
}

/// Builds the model. `running` holds the capacities in use (empty at start).
pub fn build(
    config: &Config,
    snapshot: &MembershipSnapshot,
    running: &BTreeMap<ServiceName, u32>,
) -> (Model, Skipped) {
    let mut skipped = Skipped::default();
    let backends = config
        .services
        .iter()
        .map(|service| {
            let servers = servers_for(service, snapshot, &mut skipped);
            let start = running
                .get(&service.name)
                .copied()
                .unwrap_or(0)
                .max(service.capacity);
            let highest = servers.keys().next_back().map_or(0, |s| s.get());
            BackendModel {
                service: service.clone(),
                capacity: grow(start, highest),
                servers,
            }
        })
        .collect();
    (
        Model {
            haproxy: config.haproxy.clone(),
            backends,
        },
        skipped,
    )
}

/// Doubles `capacity` until `highest` fits.
pub fn grow(mut capacity: u32, highest: u32) -> u32 {
    capacity = capacity.max(1);
    while capacity < highest {
        capacity = capacity.saturating_mul(2).min(MAX_CAPACITY);
    }
    capacity
}

fn servers_for(
    service: &Service,
    snapshot: &MembershipSnapshot,
    skipped: &mut Skipped,
) -> BTreeMap<Slot, Server> {
    let mut servers: BTreeMap<Slot, Server> = BTreeMap::new();
    // BTreeMap order: lowest node id first, which therefore wins a contested slot.
    for record in snapshot.records.values() {
        if record.state != NodeState::Ready || snapshot.drain_requested.contains(&record.id) {
            continue;
        }
        let mut skip = |reason| {
            skipped
                .entries
                .push((service.name.clone(), record.id.clone(), reason))
        };
        let Some(addr) = record.endpoint(service.endpoint.as_str()) else {
            skip(SkipReason::NoEndpoint);
            continue;
        };
        let check_addr = match &service.check.kind {
            CheckKind::HealthEndpoint(_) => match record.endpoint("health") {
                Some(h) => Some(h),
                None => {
                    skip(SkipReason::NoHealthEndpoint);
                    continue;
                }
            },
            CheckKind::Http(_) | CheckKind::Tcp => None,
        };
        if servers.contains_key(&record.slot) {
            skip(SkipReason::SlotTaken);
            continue;
        }
        servers.insert(
            record.slot,
            Server {
                node: record.id.clone(),
                addr,
                check_addr,
            },
        );
    }
    servers
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use peerkeep_registry::{AddressPolicy, NodeRecord};

    use super::*;

    pub(crate) fn config() -> Config {
        Config::parse(
            Path::new("t.toml"),
            r#"
[haproxy]
config = "/tmp/lb/haproxy.cfg"
master_socket = "/tmp/lb/master.sock"
stats_socket = "/tmp/lb/admin.sock"
state_file = "/tmp/lb/state"

[[services]]
name = "rpc"
bind = "127.0.0.1:8080"
endpoint = "api"
capacity = 4
per_node = { bind_ip = "127.0.0.1", port_base = 9000 }

[[services]]
name = "p2p"
bind = "127.0.0.1:3000"
mode = "tcp"
balance = "leastconn"
endpoint = "p2p"
capacity = 2
check = { type = "tcp" }
"#,
        )
        .expect("valid test config")
    }

    pub(crate) fn record(
        id: &str,
        slot: u32,
        state: &str,
        endpoints: &[(&str, &str)],
    ) -> NodeRecord {
        let eps: serde_json::Map<String, serde_json::Value> = endpoints
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect();
        let json = serde_json::json!({
            "id": id, "state": state, "endpoints": eps, "slot": slot, "instance": "i",
        });
        NodeRecord::parse(id, json.to_string().as_bytes()).expect("valid test record")
    }

    pub(crate) fn node(id: &str, slot: u32) -> NodeRecord {
        let n = 10 + slot;
        record(
            id,
            slot,
            "ready",
            &[
                ("api", &format!("10.0.0.{n}:9000")),
                ("health", &format!("10.0.0.{n}:8080")),
                ("p2p", &format!("10.0.0.{n}:3000")),
            ],
        )
    }

    pub(crate) fn snap(records: Vec<NodeRecord>) -> MembershipSnapshot {
        MembershipSnapshot::from_records(records, 1, AddressPolicy::default())
    }

    #[test]
    fn only_ready_undrained_nodes_with_endpoints_are_served() {
        let mut s = snap(vec![
            node("a", 1),
            record(
                "b",
                2,
                "starting",
                &[("api", "10.0.0.2:1"), ("health", "10.0.0.2:2")],
            ),
            record(
                "c",
                3,
                "draining",
                &[("api", "10.0.0.3:1"), ("health", "10.0.0.3:2")],
            ),
            node("d", 4),
            record("e", 5, "ready", &[("api", "10.0.0.5:1")]),
            record(
                "f",
                6,
                "ready",
                &[("health", "10.0.0.6:1"), ("p2p", "10.0.0.6:2")],
            ),
        ]);
        s.drain_requested.insert("d".parse().expect("valid"));
        let (m, skipped) = build(&config(), &s, &BTreeMap::new());
        let rpc: Vec<_> = m.backends[0]
            .servers
            .values()
            .map(|s| s.node.as_str())
            .collect();
        assert_eq!(rpc, ["a"]);
        let p2p: Vec<_> = m.backends[1]
            .servers
            .values()
            .map(|s| s.node.as_str())
            .collect();
        assert_eq!(p2p, ["a", "f"]);
        let reasons: Vec<_> = skipped
            .entries
            .iter()
            .map(|(svc, n, r)| (svc.as_str(), n.as_str(), *r))
            .collect();
        assert_eq!(
            reasons,
            [
                ("rpc", "e", SkipReason::NoHealthEndpoint),
                ("rpc", "f", SkipReason::NoEndpoint),
                ("p2p", "e", SkipReason::NoEndpoint),
            ]
        );
        let a = &m.backends[0].servers[&Slot::new(1).expect("valid")];
        assert_eq!(a.check_addr.map(|e| e.port()), Some(8080));
    }

    #[test]
    fn contested_slot_goes_to_lowest_id() {
        let (m, skipped) = build(
            &config(),
            &snap(vec![node("b", 1), node("a", 1)]),
            &BTreeMap::new(),
        );
        assert_eq!(m.backends[0].servers.len(), 1);
        assert_eq!(
            m.backends[0]
                .servers
                .values()
                .next()
                .map(|s| s.node.as_str()),
            Some("a")
        );
        assert!(skipped.entries.contains(&(
            ServiceName::new("rpc").expect("valid"),
            "b".parse().expect("valid"),
            SkipReason::SlotTaken
        )));
    }

    #[test]
    fn capacity_doubles_until_the_highest_slot_fits_and_never_shrinks() {
        assert_eq!(grow(4, 0), 4);
        assert_eq!(grow(4, 4), 4);
        assert_eq!(grow(4, 5), 8);
        assert_eq!(grow(4, 17), 32);
        assert_eq!(grow(40_000, 65_535), 65_535);
        let (m, _) = build(&config(), &snap(vec![node("a", 9)]), &BTreeMap::new());
        assert_eq!(m.backends[0].capacity, 16);
        assert_eq!(m.backends[1].capacity, 16);
        let (m2, _) = build(&config(), &snap(vec![]), &m.capacities());
        assert_eq!(m2.backends[0].capacity, 16);
    }
}
