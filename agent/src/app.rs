//! Subcommand dispatch and the mapping of outcomes to exit codes, so `main.rs` stays a few
//! lines.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (or the daemon exited 0) |
//! | 1 | runtime error (address not found, health port taken, `health`: unhealthy) |
//! | 2 | usage error (bad flags) |
//! | 4 | node id taken by another live instance |
//! | 126/127 | daemon not executable / not found |
//! | other | the daemon's own code, or 128 + the signal that killed it |

use crate::addresses::print_resolution;
use crate::cli::{Cli, Command, probe_target};
use crate::health::probe;
use crate::lifecycle;

/// Runs the parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> i32 {
    match cli.command {
        // No logging, no runtime: a health check runs every few seconds in every container.
        Command::Health(args) => {
            let result = probe::check(&probe_target(&args.addr), args.probe);
            println!("{}", result.line);
            i32::from(!result.healthy)
        }
        Command::ResolveAddr(args) => {
            init_logging(&cli.log);
            let policy = peerkeep_registry::AddressPolicy {
                allow_loopback: args.allow_loopback,
            };
            with_runtime(async move {
                match print_resolution(&args.addresses, policy).await {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("peerkeep-agent: {e}");
                        1
                    }
                }
            })
        }
        Command::Run(args) => {
            init_logging(&cli.log);
            with_runtime(async move {
                match lifecycle::run(*args).await {
                    Ok(code) => code,
                    Err(e) => {
                        tracing::error!(error = %e, "peerkeep-agent run failed");
                        eprintln!("peerkeep-agent: {e}");
                        e.exit_code()
                    }
                }
            })
        }
    }
}

fn init_logging(log: &peerkeep_registry::logging::LogArgs) {
    if let Err(e) = peerkeep_registry::logging::init(log.log_format) {
        eprintln!("peerkeep-agent: {e}");
    }
}

/// One thread is plenty for the agent (every task is I/O-bound), and keeps its footprint small.
fn with_runtime(fut: impl std::future::Future<Output = i32>) -> i32 {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            let code = rt.block_on(fut);
            // Background tasks (health server, watches) hold no state worth waiting for.
            rt.shutdown_timeout(std::time::Duration::from_millis(100));
            code
        }
        Err(e) => {
            eprintln!("peerkeep-agent: cannot start the async runtime: {e}");
            1
        }
    }
}
