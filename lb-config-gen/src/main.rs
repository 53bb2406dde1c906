//! `lb-config-gen`: parse flags, set up logging, run the command, exit with its code.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use lb_config_gen::cli::{Cli, dispatch};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Err(e) = peerkeep_registry::logging::init(cli.log.log_format) {
        eprintln!("lb-config-gen: {e}");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lb-config-gen: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(dispatch(cli, &matches));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
