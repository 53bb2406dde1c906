//! The `peerkeep` command line: flags, subcommands and their exit codes.
//!
//! `src/bin/peerkeep.rs` only parses flags, sets up logging and a runtime, and maps the result of
//! [`run`] to an exit code with [`exit_code`]; everything else lives here, where tests reach it.
//!
//! Exit codes (DESIGN.md): 0 success; 1 runtime error (including "no such node"); 2 usage error;
//! 5 etcd unreachable. A stdout closed by its reader (`peerkeep ls | head -1`) is a normal end,
//! exit 0. Commands that need etcd probe it first, so an unreachable etcd is reported
//! within the connect timeout with the endpoints named, instead of hanging in a retry loop.

mod admin;
mod ls;
mod out;
mod serve;
mod watch;

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

use crate::cli_args::EtcdArgs;
use crate::connect::{Etcd, connect};
use crate::error::{EXIT_RUNTIME, RegistryError};
use crate::logging::LogArgs;
use crate::names::{EndpointName, NodeId};

/// Read, watch and administer the peerkeep registry in etcd.
#[derive(Debug, Parser)]
#[command(name = "peerkeep", version)]
pub struct Cli {
    /// Logging flags.
    #[command(flatten)]
    pub log: LogArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the cluster's nodes (id, state, slot, p2p, other endpoints, age).
    Ls(LsArgs),
    /// Print one node's record as JSON (exit 1 if there is none).
    Get(NodeArgs),
    /// Print one line per change to the cluster's records until interrupted.
    Watch(WatchArgs),
    /// Ask a node's agent to hold it in `draining` (out of the load balancer, not peered with).
    Drain(NodeArgs),
    /// Withdraw a drain request.
    Undrain(NodeArgs),
    /// Delete a node's record and slot claim (for nodes that died without deregistering).
    Rm(NodeArgs),
    /// Serve the read-only HTTP discovery API for --cluster, from a watched view.
    ///
    /// Routes: GET /v1/clusters, /v1/clusters/{cluster}/nodes[?state=ready],
    /// /v1/clusters/{cluster}/seeds[?n=K], /healthz, /metrics. Only the cluster named by
    /// --cluster is served. Nodes show id, state, slot and their p2p endpoint, plus endpoints
    /// named by --expose-endpoint; labels and instance tokens are never exposed.
    Serve(ServeArgs),
}

/// Flags of `ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print one JSON object (nodes, drain requests, skipped entries) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Registry flags.
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// Flags of commands that act on one node.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node id.
    pub id: NodeId,
    /// Registry flags.
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// Flags of `watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Print one JSON object per change instead of a text line.
    #[arg(long)]
    pub json: bool,
    /// Registry flags.
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve HTTP on.
    #[arg(
        long,
        env = "PEERKEEP_DISCOVERY_LISTEN",
        default_value = "127.0.0.1:8380",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,
    /// Also show this endpoint of each node (repeatable); only p2p is shown by default.
    #[arg(long = "expose-endpoint", value_name = "NAME")]
    pub expose_endpoints: Vec<EndpointName>,
    /// Registry flags.
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// Runs one command to completion. A stdout closed by its reader ends the command normally.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match run_command(cli.command).await {
        Err(e) if out::is_stdout_closed(&e) => Ok(()),
        other => other,
    }
}

async fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ls(a) => ls::ls(&reachable(&a.etcd).await?, &a.etcd, a.json).await,
        Command::Get(a) => ls::get(&reachable(&a.etcd).await?, &a.etcd, &a.id).await,
        Command::Watch(a) => watch::watch(reachable(&a.etcd).await?, &a.etcd, a.json).await,
        Command::Drain(a) => admin::drain(&reachable(&a.etcd).await?, &a.etcd, &a.id).await,
        Command::Undrain(a) => admin::undrain(&reachable(&a.etcd).await?, &a.etcd, &a.id).await,
        Command::Rm(a) => admin::rm(&reachable(&a.etcd).await?, &a.etcd, &a.id).await,
        Command::Serve(a) => serve::serve(reachable(&a.etcd).await?, a).await,
    }
}

/// The exit code for an error returned by [`run`]: the registry's code when the cause is a
/// [`RegistryError`] (5 for unreachable, 2 for bad options), otherwise 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<RegistryError>())
        .map_or(EXIT_RUNTIME, RegistryError::exit_code)
}

/// Connects and checks that etcd answers, so that an outage is reported at once (exit 5).
async fn reachable(args: &EtcdArgs) -> Result<Etcd, RegistryError> {
    args.keyspace()?;
    let etcd = connect(&args.options()?).await?;
    etcd.probe().await?;
    Ok(etcd)
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler the default action still ends the process.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
