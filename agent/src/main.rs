//! `peerkeep-agent`: parse flags, run, exit with the code [`peerkeep_agent::app`] documents.

use std::process::ExitCode;

use clap::Parser;
use peerkeep_agent::cli::Cli;

fn main() -> ExitCode {
    // clap exits with 2 on a usage error, as DESIGN.md's table says.
    let code = peerkeep_agent::app::main(Cli::parse());
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
