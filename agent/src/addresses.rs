//! Resolving the node's two addresses from the `--advertise` and `--private-addr` lists.
//!
//! The private address is resolved first: with no `--advertise` list the node advertises its
//! private address (one-network setups need no extra flag).

use std::net::IpAddr;

use peerkeep_registry::AddressPolicy;

use crate::cli::AddressArgs;
use crate::health::status::AddressStatus;
use crate::resolve::{DEFAULT_IMDS_ENDPOINT, Resolution, ResolveError, Resolver};

/// Both addresses, with how each was found.
#[derive(Debug)]
pub struct Addresses {
    /// What peers dial; `None` when `--advertise` is empty and the private address is used.
    pub advertise: Option<Resolution>,
    /// What the load balancer dials.
    pub private: Resolution,
}

/// Which address could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// `--advertise` gave nothing usable.
    #[error("cannot find the address to advertise (--advertise): {0}")]
    Advertise(#[source] ResolveError),
    /// `--private-addr` gave nothing usable.
    #[error("cannot find the private address (--private-addr): {0}")]
    Private(#[source] ResolveError),
}

impl Addresses {
    /// Resolves both lists.
    pub async fn resolve(args: &AddressArgs, policy: AddressPolicy) -> Result<Self, AddressError> {
        let resolver = Resolver::new(policy, &imds_endpoint(args));
        let private = resolver
            .resolve(&args.private_addr)
            .await
            .map_err(AddressError::Private)?;
        let advertise = if args.advertise.is_empty() {
            None
        } else {
            Some(
                resolver
                    .resolve(&args.advertise)
                    .await
                    .map_err(AddressError::Advertise)?,
            )
        };
        Ok(Self { advertise, private })
    }

    /// The advertised address.
    pub fn advertise_ip(&self) -> IpAddr {
        self.advertise.as_ref().unwrap_or(&self.private).addr
    }

    /// The private address.
    pub fn private_ip(&self) -> IpAddr {
        self.private.addr
    }

    /// For `/status`.
    pub fn status(&self) -> (AddressStatus, AddressStatus) {
        let private = describe(&self.private);
        let advertise = self.advertise.as_ref().map_or_else(
            || AddressStatus {
                source: "private address (no --advertise)".to_owned(),
                ..private.clone()
            },
            describe,
        );
        (advertise, private)
    }

    /// Logs the choice and its source (once, at start).
    pub fn log(&self) {
        let (adv, prv) = self.status();
        tracing::info!(
            advertise = %adv.addr, advertise_source = %adv.source, skipped = ?adv.skipped,
            "advertised address chosen"
        );
        tracing::info!(
            private = %prv.addr, private_source = %prv.source, skipped = ?prv.skipped,
            "private address chosen"
        );
    }
}

fn describe(r: &Resolution) -> AddressStatus {
    AddressStatus {
        addr: r.addr.to_string(),
        source: r.source.to_string(),
        skipped: r
            .skipped
            .iter()
            .map(|(s, why)| format!("{s}: {why}"))
            .collect(),
    }
}

/// `--imds-endpoint`, else `AWS_EC2_METADATA_SERVICE_ENDPOINT` (the AWS SDKs' variable), else
/// the link-local default.
pub fn imds_endpoint(args: &AddressArgs) -> String {
    args.imds_endpoint
        .clone()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| {
            std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
        .unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_owned())
}

/// `peerkeep-agent resolve-addr`: prints both addresses and why; the error when one fails.
pub async fn print_resolution(
    args: &AddressArgs,
    policy: AddressPolicy,
) -> Result<(), AddressError> {
    let addrs = Addresses::resolve(args, policy).await?;
    let (adv, prv) = addrs.status();
    for (name, a) in [("advertise", adv), ("private", prv)] {
        println!("{name} {} from {}", a.addr, a.source);
        for s in a.skipped {
            println!("  skipped {s}");
        }
    }
    Ok(())
}
