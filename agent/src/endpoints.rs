//! `--endpoint NAME=[HOST]:PORT` specs, and turning them into the record's endpoints once the
//! addresses are known.
//!
//! A spec without a host takes the advertised address for `p2p` (what peers dial, possibly
//! public) and the private address for everything else (what the load balancer dials). Hosts
//! are IP literals only: a host name would be resolved differently by every consumer.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use peerkeep_registry::{Endpoint, EndpointName};

/// One `--endpoint` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The endpoint's name.
    pub name: EndpointName,
    /// An explicit host, or `None` for "the advertised/private address".
    pub host: Option<IpAddr>,
    /// The port, 1–65535.
    pub port: u16,
}

/// Why an `--endpoint` value is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointSpecError {
    /// Not `NAME=[HOST]:PORT`.
    #[error("{0:?}: expected NAME=[HOST]:PORT, e.g. p2p=:3000 or api=10.0.0.5:9000")]
    Syntax(String),
    /// The name breaks the name rules.
    #[error("{0}")]
    Name(#[from] peerkeep_registry::NameError),
    /// `health` is published by the agent itself.
    #[error("the health endpoint is published by the agent itself (set --health-listen)")]
    Reserved,
    /// Port 0 or out of range.
    #[error("{0:?}: port must be 1-65535")]
    Port(String),
    /// The same name given twice.
    #[error("endpoint {0} given more than once")]
    Duplicate(EndpointName),
}

impl FromStr for EndpointSpec {
    type Err = EndpointSpecError;

    fn from_str(s: &str) -> Result<Self, EndpointSpecError> {
        let (name, addr) = s
            .split_once('=')
            .ok_or_else(|| EndpointSpecError::Syntax(s.to_owned()))?;
        let name: EndpointName = name.parse()?;
        if name == EndpointName::health() {
            return Err(EndpointSpecError::Reserved);
        }
        let bad_port = || EndpointSpecError::Port(s.to_owned());
        let (host, port) = if let Some(port) = addr.strip_prefix(':') {
            (None, port.parse::<u16>().map_err(|_| bad_port())?)
        } else {
            let sa: SocketAddr = addr
                .parse()
                .map_err(|_| EndpointSpecError::Syntax(s.to_owned()))?;
            (Some(sa.ip()), sa.port())
        };
        if port == 0 {
            return Err(bad_port());
        }
        Ok(Self { name, host, port })
    }
}

impl fmt::Display for EndpointSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            Some(h) => write!(f, "{}={}", self.name, SocketAddr::new(h, self.port)),
            None => write!(f, "{}=:{}", self.name, self.port),
        }
    }
}

/// Refuses duplicate names.
pub fn check_unique(specs: &[EndpointSpec]) -> Result<(), EndpointSpecError> {
    let mut seen = std::collections::BTreeSet::new();
    for s in specs {
        if !seen.insert(&s.name) {
            return Err(EndpointSpecError::Duplicate(s.name.clone()));
        }
    }
    Ok(())
}

/// The record's endpoints: every spec with its host filled in, plus `health` on the private
/// address and the health server's port.
pub fn build(
    specs: &[EndpointSpec],
    advertise: IpAddr,
    private: IpAddr,
    health_port: u16,
) -> Result<BTreeMap<EndpointName, Endpoint>, peerkeep_registry::EndpointError> {
    let mut out = BTreeMap::new();
    for s in specs {
        let host = s.host.unwrap_or(if s.name == EndpointName::p2p() {
            advertise
        } else {
            private
        });
        out.insert(
            s.name.clone(),
            Endpoint::new(SocketAddr::new(host, s.port))?,
        );
    }
    out.insert(
        EndpointName::health(),
        Endpoint::new(SocketAddr::new(private, health_port))?,
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_and_without_host() {
        let p: EndpointSpec = "p2p=:3000".parse().expect("valid");
        assert_eq!((p.host, p.port), (None, 3000));
        let a: EndpointSpec = "api=10.0.0.5:9000".parse().expect("valid");
        assert_eq!(a.host, Some("10.0.0.5".parse().expect("ip")));
        let v6: EndpointSpec = "rpc=[2001:db8::1]:8545".parse().expect("valid");
        assert_eq!(v6.to_string(), "rpc=[2001:db8::1]:8545");
        for bad in [
            "p2p",
            "p2p=3000",
            "p2p=:0",
            "p2p=:70000",
            "=:1",
            "p 2p=:1",
            "api=host:80",
            "health=:8080",
        ] {
            assert!(bad.parse::<EndpointSpec>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn empty_host_means_advertised_for_p2p_and_private_otherwise() {
        let specs: Vec<EndpointSpec> = ["p2p=:3000", "api=:9000", "rpc=10.9.9.9:1"]
            .iter()
            .map(|s| s.parse().expect("valid"))
            .collect();
        let adv: IpAddr = "203.0.113.7".parse().expect("ip");
        let prv: IpAddr = "10.0.1.5".parse().expect("ip");
        let eps = build(&specs, adv, prv, 8080).expect("valid");
        let get = |n: &str| eps[&n.parse::<EndpointName>().expect("name")].to_string();
        assert_eq!(get("p2p"), "203.0.113.7:3000");
        assert_eq!(get("api"), "10.0.1.5:9000");
        assert_eq!(get("rpc"), "10.9.9.9:1");
        assert_eq!(get("health"), "10.0.1.5:8080");
        assert!(check_unique(&specs).is_ok());
        let dup = [specs[0].clone(), specs[0].clone()];
        assert!(check_unique(&dup).is_err());
    }
}
