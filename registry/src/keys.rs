//! The etcd key layout (schema v1). Only this module builds or parses keys.
//!
//! ```text
//! {prefix}/clusters/{cluster}/nodes/{node_id}    NodeRecord JSON, bound to the agent's lease
//! {prefix}/clusters/{cluster}/slots/{n}          {node_id}, bound to the same lease
//! {prefix}/clusters/{cluster}/control/{node_id}  {"drain":true}, written by operators
//! ```

use crate::names::{ClusterName, NodeId, Slot};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/peerkeep/v1";

/// A prefix that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("prefix {0:?} must start with '/', not end with '/', and contain no whitespace")]
pub struct PrefixError(pub String);

/// The keys of one cluster under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: String,
    cluster: ClusterName,
}

impl Keyspace {
    /// Makes a keyspace; the prefix must start with `/` and not end with one.
    pub fn new(prefix: &str, cluster: ClusterName) -> Result<Self, PrefixError> {
        let ok = prefix.starts_with('/')
            && (prefix.len() == 1 || !prefix.ends_with('/'))
            && !prefix.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(PrefixError(prefix.chars().take(80).collect()));
        }
        let prefix = if prefix == "/" {
            String::new()
        } else {
            prefix.to_owned()
        };
        Ok(Self { prefix, cluster })
    }
    /// The cluster this keyspace addresses.
    pub fn cluster(&self) -> &ClusterName {
        &self.cluster
    }
    /// The prefix under which all clusters live.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// `{prefix}/clusters/`: lists every cluster.
    pub fn clusters_prefix(&self) -> String {
        format!("{}/clusters/", self.prefix)
    }
    /// `{prefix}/clusters/{cluster}/`: everything of this cluster.
    pub fn cluster_prefix(&self) -> String {
        format!("{}{}/", self.clusters_prefix(), self.cluster)
    }
    /// `.../nodes/`: all node records.
    pub fn nodes_prefix(&self) -> String {
        format!("{}nodes/", self.cluster_prefix())
    }
    /// `.../slots/`: all slot claims.
    pub fn slots_prefix(&self) -> String {
        format!("{}slots/", self.cluster_prefix())
    }
    /// `.../control/`: all operator control keys.
    pub fn control_prefix(&self) -> String {
        format!("{}control/", self.cluster_prefix())
    }
    /// The record key of `id`.
    pub fn node_key(&self, id: &NodeId) -> String {
        format!("{}{}", self.nodes_prefix(), id)
    }
    /// The claim key of slot `n`.
    pub fn slot_key(&self, slot: Slot) -> String {
        format!("{}{}", self.slots_prefix(), slot)
    }
    /// The control key of `id`.
    pub fn control_key(&self, id: &NodeId) -> String {
        format!("{}{}", self.control_prefix(), id)
    }
    /// The raw last segment of a key under `nodes/` (not yet validated), or `None` for keys
    /// elsewhere or nested deeper.
    pub fn node_segment<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.strip_prefix(&self.nodes_prefix())?;
        (!rest.contains('/')).then_some(rest)
    }
    /// The cluster name in a key under `{prefix}/clusters/`, if it is a valid name.
    pub fn cluster_of(&self, key: &str) -> Option<ClusterName> {
        let rest = key.strip_prefix(&self.clusters_prefix())?;
        rest.split('/').next()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let ks = Keyspace::new(DEFAULT_PREFIX, "c1".parse().expect("valid")).expect("valid");
        let id: NodeId = "n1".parse().expect("valid");
        assert_eq!(ks.node_key(&id), "/peerkeep/v1/clusters/c1/nodes/n1");
        assert_eq!(
            ks.slot_key(Slot::new(2).expect("valid")),
            "/peerkeep/v1/clusters/c1/slots/2"
        );
        assert_eq!(ks.control_key(&id), "/peerkeep/v1/clusters/c1/control/n1");
        assert_eq!(
            ks.node_segment("/peerkeep/v1/clusters/c1/nodes/n1"),
            Some("n1")
        );
        assert_eq!(ks.node_segment("/peerkeep/v1/clusters/c1/nodes/a/b"), None);
        assert_eq!(
            ks.cluster_of("/peerkeep/v1/clusters/c2/nodes/x")
                .map(|c| c.to_string()),
            Some("c2".into())
        );
        assert!(Keyspace::new("peerkeep", ClusterName::default()).is_err());
        assert!(Keyspace::new("/p/", ClusterName::default()).is_err());
    }
}
