//! Address resolution: which IP this node advertises to peers and which it gives the load
//! balancer.
//!
//! An address comes from an ordered list of [`AddrSource`]s; the first source that yields an
//! address accepted by the [`AddressPolicy`] wins. The result keeps the winning source and why
//! each earlier one failed, because "why did my node advertise 172.17.0.2" is the question this
//! module exists to answer (it is logged at start, shown in `/status` and printed by
//! `peerkeep-agent resolve-addr`). Resolution happens once, before the daemon is spawned, since
//! the daemon is told its addresses on its command line.

mod imds;
mod local;
mod source;

use std::fmt;
use std::net::IpAddr;

use peerkeep_registry::AddressPolicy;

pub use imds::{DEFAULT_ENDPOINT as DEFAULT_IMDS_ENDPOINT, ImdsClient, ImdsError};
pub use local::LocalError;
pub use source::{AddrSource, Ec2Field, SourceSyntaxError};

/// Why one source gave no usable address.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `env:VAR` with the variable unset or empty.
    #[error("${0} is not set")]
    EnvUnset(String),
    /// `env:VAR` holding something else than an IP address.
    #[error("${var} = {shown:?} is not an IP address")]
    EnvNotIp {
        /// The variable.
        var: String,
        /// Its value, truncated.
        shown: String,
    },
    /// An interface, network, route or host name lookup failed.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The metadata service gave no address.
    #[error(transparent)]
    Imds(#[from] ImdsError),
    /// Every address the source produced was refused by the policy (the first refusal shown).
    #[error("{0}")]
    Refused(peerkeep_registry::AddressRejected),
    /// A blocking lookup thread died.
    #[error("lookup task failed: {0}")]
    Task(String),
}

/// The outcome of resolving one address.
#[derive(Debug)]
pub struct Resolution {
    /// The chosen address.
    pub addr: IpAddr,
    /// The source that gave it.
    pub source: AddrSource,
    /// Earlier sources that gave nothing usable, with the reason, in order.
    pub skipped: Vec<(AddrSource, SourceError)>,
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (from {})", self.addr, self.source)?;
        for (src, why) in &self.skipped {
            write!(f, "; skipped {src}: {why}")?;
        }
        Ok(())
    }
}

/// No source gave a usable address.
#[derive(Debug, thiserror::Error)]
#[error("no address source answered: {}", list_failures(.failures))]
pub struct ResolveError {
    /// Every source tried, with the reason it failed.
    pub failures: Vec<(AddrSource, SourceError)>,
}

fn list_failures(failures: &[(AddrSource, SourceError)]) -> String {
    if failures.is_empty() {
        return "the source list is empty".to_owned();
    }
    failures
        .iter()
        .map(|(s, e)| format!("{s}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Resolves source lists. One resolver serves both the advertised and the private address so
/// that the IMDSv2 token is fetched once.
#[derive(Debug)]
pub struct Resolver {
    policy: AddressPolicy,
    imds: ImdsClient,
}

impl Resolver {
    /// A resolver applying `policy`, reading EC2 metadata from `imds_endpoint`.
    pub fn new(policy: AddressPolicy, imds_endpoint: &str) -> Self {
        Self {
            policy,
            imds: ImdsClient::new(imds_endpoint),
        }
    }

    /// Tries `sources` in order and returns the first accepted address.
    pub async fn resolve(&self, sources: &[AddrSource]) -> Result<Resolution, ResolveError> {
        let mut failures = Vec::new();
        for src in sources {
            match self.try_source(src).await {
                Ok(addr) => {
                    return Ok(Resolution {
                        addr,
                        source: src.clone(),
                        skipped: failures,
                    });
                }
                Err(e) => {
                    tracing::debug!(source = %src, error = %e, "address source gave nothing usable");
                    failures.push((src.clone(), e));
                }
            }
        }
        Err(ResolveError { failures })
    }

    async fn try_source(&self, src: &AddrSource) -> Result<IpAddr, SourceError> {
        let candidates = self.candidates(src).await?;
        let mut first_refusal = None;
        for ip in candidates {
            match self.policy.check_ip(ip) {
                Ok(()) => return Ok(ip.to_canonical()),
                Err(e) => {
                    first_refusal.get_or_insert(e);
                }
            }
        }
        // Local lookups never return an empty list without an error, so a refusal exists.
        Err(first_refusal.map_or_else(
            || SourceError::Task("source returned no candidates".to_owned()),
            SourceError::Refused,
        ))
    }

    async fn candidates(&self, src: &AddrSource) -> Result<Vec<IpAddr>, SourceError> {
        match src {
            AddrSource::Ip(ip) => Ok(vec![*ip]),
            AddrSource::Env(var) => env_addr(var).map(|ip| vec![ip]),
            AddrSource::Iface(name) => Ok(local::iface(name)?),
            AddrSource::Cidr(net) => Ok(local::cidr(*net)?),
            AddrSource::Route => Ok(local::route()?),
            AddrSource::Hostname => tokio::task::spawn_blocking(local::hostname)
                .await
                .map_err(|e| SourceError::Task(e.to_string()))?
                .map_err(SourceError::from),
            AddrSource::Ec2(field) => Ok(vec![self.imds.address(*field).await?]),
        }
    }
}

fn env_addr(var: &str) -> Result<IpAddr, SourceError> {
    let value = std::env::var(var).unwrap_or_default();
    let value = value.trim();
    if value.is_empty() {
        return Err(SourceError::EnvUnset(var.to_owned()));
    }
    value.parse().map_err(|_| SourceError::EnvNotIp {
        var: var.to_owned(),
        shown: value.chars().take(60).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srcs(list: &[&str]) -> Vec<AddrSource> {
        list.iter()
            .map(|s| s.parse().expect("valid source"))
            .collect()
    }

    #[tokio::test]
    async fn first_accepted_source_wins_and_earlier_failures_are_kept() {
        let r = Resolver::new(AddressPolicy::default(), "http://127.0.0.1:1");
        let res = r
            .resolve(&srcs(&[
                "env:PEERKEEP_TEST_SURELY_UNSET",
                "ip:127.0.0.1",
                "ip:0.0.0.0",
                "ip:203.0.113.7",
                "ip:198.51.100.1",
            ]))
            .await
            .expect("a literal public address resolves");
        assert_eq!(res.addr, "203.0.113.7".parse::<IpAddr>().expect("valid"));
        assert_eq!(res.source.to_string(), "ip:203.0.113.7");
        assert_eq!(res.skipped.len(), 3);
        assert!(matches!(res.skipped[0].1, SourceError::EnvUnset(_)));
        assert!(matches!(res.skipped[1].1, SourceError::Refused(_)));
        assert!(res.to_string().contains("loopback"), "{res}");
    }

    #[tokio::test]
    async fn loopback_only_with_permission() {
        let strict = Resolver::new(AddressPolicy::default(), "http://127.0.0.1:1");
        let err = strict
            .resolve(&srcs(&["iface:lo"]))
            .await
            .expect_err("lo is loopback");
        assert!(err.to_string().contains("--allow-loopback"), "{err}");
        let lax = Resolver::new(
            AddressPolicy {
                allow_loopback: true,
            },
            "http://127.0.0.1:1",
        );
        let ok = lax.resolve(&srcs(&["iface:lo"])).await.expect("allowed");
        assert!(ok.addr.is_loopback());
    }

    #[tokio::test]
    async fn empty_list_says_so() {
        let r = Resolver::new(AddressPolicy::default(), "http://127.0.0.1:1");
        let err = r.resolve(&[]).await.expect_err("nothing to try");
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
