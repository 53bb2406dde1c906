//! `peerkeep-agent`: parse flags, run, exit with the code [`peerkeep_agent::app`] documents.

use std::process::ExitCode;

use clap::Parser;
use peerkeep_agent::cli::Cli;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() && is_health_check() => {
            // Docker reserves exit code 2 of a HEALTHCHECK: a mistyped check is "unhealthy".
            let text = e.to_string();
            println!("{}", text.lines().next().unwrap_or("invalid arguments"));
            return ExitCode::from(1);
        }
        // clap exits with 2 on a usage error (0 for --help/--version), as DESIGN.md's table says.
        Err(e) => e.exit(),
    };
    let code = peerkeep_agent::app::main(cli);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Whether the command line asks for the `health` subcommand.
fn is_health_check() -> bool {
    std::env::args()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "health")
}
