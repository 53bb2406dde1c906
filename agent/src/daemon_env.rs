//! What the daemon is told about itself before it starts: environment variables and
//! `{placeholder}` substitution in its arguments.
//!
//! Daemons must know their own public address (geth `--nat extip:IP`, bitcoind
//! `-externalip=IP`, nodeos `p2p-server-address`), and in a container nothing else can tell
//! them: the agent resolves the addresses first and hands them over here. Substitution is plain
//! text replacement of three known placeholders; other braces are left alone, and values are
//! IP literals and validated node ids, so nothing can inject shell syntax (no shell is involved
//! anyway: the daemon is exec'd directly).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::net::IpAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use peerkeep_registry::{Endpoint, EndpointName, NodeId};

/// The facts handed to the daemon.
#[derive(Debug, Clone)]
pub struct DaemonFacts {
    /// The node id.
    pub node_id: NodeId,
    /// The advertised address.
    pub advertise_ip: IpAddr,
    /// The private address.
    pub private_ip: IpAddr,
    /// The record's endpoints (the agent's `health` included).
    pub endpoints: BTreeMap<EndpointName, Endpoint>,
}

/// The environment variable naming an endpoint: `PEERKEEP_ENDPOINT_` + the name upper-cased,
/// with `.` and `-` turned into `_` (so `p2p` → `PEERKEEP_ENDPOINT_P2P`).
pub fn endpoint_var(name: &EndpointName) -> String {
    let suffix: String = name
        .as_str()
        .chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("PEERKEEP_ENDPOINT_{suffix}")
}

impl DaemonFacts {
    /// The variables to add to the daemon's environment.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            (
                "PEERKEEP_ADVERTISE_IP".to_owned(),
                self.advertise_ip.to_string(),
            ),
            (
                "PEERKEEP_PRIVATE_IP".to_owned(),
                self.private_ip.to_string(),
            ),
            ("PEERKEEP_NODE_ID".to_owned(), self.node_id.to_string()),
        ];
        vars.extend(
            self.endpoints
                .iter()
                .map(|(name, ep)| (endpoint_var(name), ep.to_string())),
        );
        vars
    }

    /// `arg` with `{advertise_ip}`, `{private_ip}` and `{node_id}` replaced. Arguments that are
    /// not UTF-8 pass through unchanged (placeholders are ASCII, so none can hide in them
    /// without the argument being otherwise readable).
    pub fn substitute(&self, arg: &OsStr) -> OsString {
        let Some(text) = arg.to_str() else {
            return OsString::from_vec(arg.as_bytes().to_vec());
        };
        OsString::from(
            text.replace("{advertise_ip}", &self.advertise_ip.to_string())
                .replace("{private_ip}", &self.private_ip.to_string())
                .replace("{node_id}", self.node_id.as_str()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> DaemonFacts {
        let mut endpoints = BTreeMap::new();
        endpoints.insert(
            "p2p".parse().expect("name"),
            "203.0.113.7:3000".parse().expect("endpoint"),
        );
        endpoints.insert(
            "json-rpc".parse().expect("name"),
            "10.0.1.5:8545".parse().expect("endpoint"),
        );
        DaemonFacts {
            node_id: "node-3".parse().expect("id"),
            advertise_ip: "203.0.113.7".parse().expect("ip"),
            private_ip: "10.0.1.5".parse().expect("ip"),
            endpoints,
        }
    }

    #[test]
    fn placeholders_are_replaced_and_other_braces_kept() {
        let f = facts();
        let out = f.substitute(OsStr::new(
            "--nat=extip:{advertise_ip} --bind={private_ip} --name={node_id} {other} {}",
        ));
        assert_eq!(
            out,
            "--nat=extip:203.0.113.7 --bind=10.0.1.5 --name=node-3 {other} {}"
        );
    }

    #[test]
    fn environment_names_every_fact() {
        let env: BTreeMap<String, String> = facts().env().into_iter().collect();
        assert_eq!(env["PEERKEEP_ADVERTISE_IP"], "203.0.113.7");
        assert_eq!(env["PEERKEEP_PRIVATE_IP"], "10.0.1.5");
        assert_eq!(env["PEERKEEP_NODE_ID"], "node-3");
        assert_eq!(env["PEERKEEP_ENDPOINT_P2P"], "203.0.113.7:3000");
        assert_eq!(env["PEERKEEP_ENDPOINT_JSON_RPC"], "10.0.1.5:8545");
    }
}
