//! `peerkeep serve`: the discovery API over a watched view of `--cluster`.

use anyhow::Context;

use crate::connect::Etcd;
use crate::discovery::{self, DiscoveryConfig};
use crate::membership::Membership;

use super::ServeArgs;

/// Serves until Ctrl-C or SIGTERM. etcd outages after the start only make the view stale.
pub(super) async fn serve(etcd: Etcd, args: ServeArgs) -> anyhow::Result<()> {
    let membership = Membership::start(etcd, args.etcd.keyspace()?, args.etcd.policy());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let config = DiscoveryConfig {
        cluster: args.etcd.cluster.clone(),
        expose_endpoints: args.expose_endpoints.into_iter().collect(),
    };
    let router = discovery::router(membership.subscribe(), config);
    tracing::info!(
        listen = %args.listen,
        cluster = %args.etcd.cluster,
        "serving the discovery API"
    );
    discovery::serve(listener, router, super::shutdown_signal())
        .await
        .context("discovery server failed")?;
    drop(membership);
    Ok(())
}
