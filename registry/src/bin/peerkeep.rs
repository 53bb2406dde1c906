//! `peerkeep`: read, watch and administer the peerkeep registry; serve the discovery API.
//!
//! A thin shell over [`peerkeep_registry::cli`]: parse flags (clap exits 2 on usage errors), set up
//! logging and a runtime, run the command, map its error to the documented exit code.

use std::process::ExitCode;

use clap::Parser;
use peerkeep_registry::cli::{self, Cli};
use peerkeep_registry::logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.log.log_format) {
        eprintln!("peerkeep: {e}");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("peerkeep: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerkeep: {e:#}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
