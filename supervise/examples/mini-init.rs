//! A minimal init built on peerkeep-supervise, in the spirit of tini: supervise one command,
//! forward HUP/USR1/USR2/QUIT/WINCH to it, stop it on TERM/INT with a deadline (a second
//! TERM/INT kills at once), sweep leftovers when PID 1, and exit with the command's status.
//!
//! ```text
//! mini-init [--stop-timeout-ms <ms>] [--sweep-grace-ms <ms>] [--] <program> [args...]
//! ```
//!
//! Exit codes: the command's code or 128 + signal; 127/126 when it cannot be executed; 2 for
//! usage errors; 1 when the supervisor cannot start.

use std::ffi::OsString;
use std::process::{Command, ExitCode};
use std::time::Duration;

use peerkeep_supervise::{Signal, Supervisor, SweepOutcome};

const USAGE: &str =
    "usage: mini-init [--stop-timeout-ms <ms>] [--sweep-grace-ms <ms>] [--] <program> [args...]";

struct Args {
    /// How long the command gets to exit after SIGTERM before SIGKILL.
    stop_timeout: Duration,
    /// How long leftover processes get after SIGTERM, when PID 1, before SIGKILL.
    sweep_grace: Duration,
    argv: Vec<OsString>,
}

fn millis(flag: &str, value: Option<OsString>) -> Result<Duration, String> {
    value
        .and_then(|v| v.to_str().and_then(|v| v.parse::<u64>().ok()))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{flag} needs a number of milliseconds\n{USAGE}"))
}

fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Args, String> {
    let mut stop_timeout = Duration::from_secs(10);
    let mut sweep_grace = Duration::from_secs(2);
    let mut argv = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--stop-timeout-ms" {
            stop_timeout = millis("--stop-timeout-ms", args.next())?;
        } else if arg == "--sweep-grace-ms" {
            sweep_grace = millis("--sweep-grace-ms", args.next())?;
        } else {
            if arg != "--" {
                argv.push(arg);
            }
            argv.extend(args.by_ref());
        }
    }
    if argv.is_empty() {
        return Err(USAGE.into());
    }
    Ok(Args {
        stop_timeout,
        sweep_grace,
        argv,
    })
}

async fn run(args: Args) -> i32 {
    let sup = match Supervisor::new() {
        Ok(sup) => sup,
        Err(error) => {
            eprintln!("mini-init: {error}");
            return 1;
        }
    };
    let requests = sup.shutdown_requests();
    let mut cmd = Command::new(&args.argv[0]);
    cmd.args(&args.argv[1..]);
    let child = match sup.spawn(&mut cmd) {
        Ok(child) => child,
        Err(error) => {
            eprintln!("mini-init: {error}");
            return error.exit_code();
        }
    };
    sup.forward_to(&child);

    let status = tokio::select! {
        status = child.wait() => status,
        _ = requests.at_least(1) => {
            let skip = requests.at_least(2);
            let outcome = sup.stop(&child, Signal::SIGTERM, args.stop_timeout, skip).await;
            if outcome.killed {
                eprintln!("mini-init: child did not stop in time and was killed");
            }
            outcome.status
        }
    };
    if let SweepOutcome::Killed { .. } = sup.sweep(args.sweep_grace).await {
        let grace = args.sweep_grace;
        eprintln!("mini-init: processes left after {grace:?} were killed");
    }
    status.to_exit_code()
}

fn main() -> ExitCode {
    let args = match parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(usage) => {
            eprintln!("mini-init: {usage}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mini-init: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(run(args));
    // Exit codes are 0–255 on Unix; anything else would be truncated by the kernel anyway.
    ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}
