//! Logging set-up shared by all binaries, so that every peerkeep process logs the same way.
//!
//! Logs go to stderr (stdout is for command output). `RUST_LOG` selects levels (default
//! `info`); `--log-format json` switches to one JSON object per line for log collectors.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `--log-format` flag, for `#[command(flatten)]`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: text for people, json for log collectors. Levels come from RUST_LOG.
    #[arg(
        long,
        env = "PEERKEEP_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
}

/// Logging could not be set up (a global subscriber was already installed).
#[derive(Debug, thiserror::Error)]
#[error("cannot install the log subscriber: {0}")]
pub struct LogInitError(String);

/// Installs the global subscriber. Call once, at the start of `main`.
pub fn init(format: LogFormat) -> Result<(), LogInitError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
    result.map_err(|e| LogInitError(e.to_string()))
}
