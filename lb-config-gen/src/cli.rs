//! The command line: `run`, `render`, `check`, and how flags, environment and the TOML file
//! combine (flag > environment > file > built-in default).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand};
use peerkeep_registry::logging::LogArgs;
use peerkeep_registry::{EtcdArgs, MembershipSnapshot, connect, read_once};
use peerkeep_supervise::Supervisor;

use crate::apply::Limits;
use crate::config::Config;
use crate::error::LbError;
use crate::haproxy::files;
use crate::run::{RunOptions, render_for, run};

/// Watches the peerkeep registry in etcd and keeps HAProxy's configuration in step with it.
#[derive(Debug, Parser)]
#[command(name = "lb-config-gen", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Own HAProxy: start it from the registry, apply changes, reload when needed.
    Run(RunArgs),
    /// Print the configuration for the current registry content and exit.
    Render(CommonArgs),
    /// Validate the TOML file and the configuration it renders (with `haproxy -c`).
    Check(CommonArgs),
}

/// Flags every subcommand takes.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// The TOML configuration file.
    #[arg(
        long,
        env = "PEERKEEP_CONFIG",
        default_value = "/etc/peerkeep/lb.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    /// The haproxy executable (overrides `haproxy.bin` in the file).
    #[arg(long, env = "PEERKEEP_HAPROXY_BIN", value_name = "PATH")]
    pub haproxy_bin: Option<PathBuf>,
    /// Registry connection (overrides the file's [etcd] section).
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// Flags of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address of the health and metrics server (/livez, /readyz, /metrics).
    #[arg(long, env = "PEERKEEP_HEALTH_LISTEN", default_value = "0.0.0.0:8404")]
    pub health_listen: SocketAddr,
    /// Quiet period after a change before applying it.
    #[arg(long, env = "PEERKEEP_MIN_WAIT", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub min_wait: Duration,
    /// Longest a change waits while changes keep coming.
    #[arg(long, env = "PEERKEEP_MAX_WAIT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub max_wait: Duration,
    /// At most one reload per this interval (runtime API changes are not limited).
    #[arg(long, env = "PEERKEEP_MIN_RELOAD_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub min_reload_interval: Duration,
    /// How long a reload may take to show a new worker.
    #[arg(long, env = "PEERKEEP_RELOAD_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub reload_timeout: Duration,
    /// Grace period for HAProxy's soft stop on TERM before it is killed; keep it below the
    /// orchestrator's grace period (compose `stop_grace_period`, 10 s in the demo).
    #[arg(long, env = "PEERKEEP_STOP_TIMEOUT", default_value = "8s", value_parser = humantime::parse_duration)]
    pub stop_timeout: Duration,
}

/// Runs the parsed command; `matches` tells flags given from defaults. Returns the exit code.
pub async fn dispatch(cli: Cli, matches: &ArgMatches) -> i32 {
    let sub = matches.subcommand().map(|(_, m)| m);
    let result = match cli.command {
        Cmd::Run(args) => run_cmd(args, sub).await,
        Cmd::Render(args) => render_cmd(args, sub).await,
        Cmd::Check(args) => check_cmd(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "lb-config-gen failed");
            eprintln!("lb-config-gen: {e}");
            e.exit_code()
        }
    }
}

/// Fills etcd flags that were left at their defaults from the file's [etcd] section.
pub fn merge_etcd(args: &mut EtcdArgs, config: &Config, matches: Option<&ArgMatches>) {
    let defaulted = |id: &str| {
        matches.is_none_or(|m| matches!(m.value_source(id), Some(ValueSource::DefaultValue) | None))
    };
    let file = &config.etcd;
    if let Some(v) = &file.endpoints
        && defaulted("etcd_endpoints")
    {
        args.etcd_endpoints = v.clone();
    }
    if let Some(v) = &file.cluster
        && defaulted("cluster")
    {
        args.cluster = v.clone();
    }
    if let Some(v) = &file.prefix
        && defaulted("prefix")
    {
        args.prefix = v.clone();
    }
    if let Some(v) = file.allow_loopback
        && defaulted("allow_loopback")
    {
        args.allow_loopback = v;
    }
}

async fn run_cmd(args: RunArgs, matches: Option<&ArgMatches>) -> Result<i32, LbError> {
    let mut common = args.common;
    let config = Config::load(&common.config)?;
    merge_etcd(&mut common.etcd, &config, matches);
    let etcd = connect(&common.etcd.options()?).await?;
    let opts = RunOptions {
        config_path: common.config,
        config,
        haproxy_bin: common.haproxy_bin,
        keyspace: common.etcd.keyspace()?,
        policy: common.etcd.policy(),
        health_listen: args.health_listen,
        min_wait: args.min_wait,
        max_wait: args.max_wait,
        limits: Limits {
            min_reload_interval: args.min_reload_interval,
            reload_timeout: args.reload_timeout,
        },
        stop_timeout: args.stop_timeout,
    };
    run(opts, etcd).await
}

async fn render_cmd(mut args: CommonArgs, matches: Option<&ArgMatches>) -> Result<i32, LbError> {
    let config = Config::load(&args.config)?;
    merge_etcd(&mut args.etcd, &config, matches);
    let etcd = connect(&args.etcd.options()?).await?;
    let snap = read_once(&etcd, &args.etcd.keyspace()?, args.etcd.policy()).await?;
    print!("{}", render_for(&config, &snap));
    Ok(0)
}

async fn check_cmd(args: CommonArgs) -> Result<i32, LbError> {
    let config = Config::load(&args.config)?;
    let bin = args
        .haproxy_bin
        .unwrap_or_else(|| config.haproxy.bin.clone());
    let text = render_for(&config, &MembershipSnapshot::default());
    let dir = std::env::temp_dir().join(format!("lb-config-gen-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| LbError::Runtime(format!("{}: {e}", dir.display())))?;
    let path = dir.join("haproxy.cfg");
    let result = async {
        std::fs::write(&path, text)
            .map_err(|e| LbError::Runtime(format!("{}: {e}", path.display())))?;
        let sup = Supervisor::new().map_err(|e| LbError::Runtime(e.to_string()))?;
        files::check(&sup, &bin, &path).await?;
        Ok::<(), LbError>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    println!(
        "{}: valid ({} services)",
        args.config.display(),
        config.services.len()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    fn merged(args: &[&str], file: &str) -> EtcdArgs {
        let argv = ["lb-config-gen", "render", "--config", "x.toml"];
        let matches = Cli::command()
            .try_get_matches_from(argv.iter().chain(args))
            .expect("valid flags");
        let cli = Cli::from_arg_matches(&matches).expect("parsed");
        let Cmd::Render(mut common) = cli.command else {
            panic!("render expected");
        };
        let text = format!(
            "{file}\n[[services]]\nname = \"s\"\nbind = \"127.0.0.1:1\"\nendpoint = \"api\"\n"
        );
        let config = Config::parse(Path::new("x.toml"), &text).expect("valid config");
        merge_etcd(
            &mut common.etcd,
            &config,
            matches.subcommand().map(|(_, m)| m),
        );
        common.etcd
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file = "[etcd]\nendpoints = [\"http://file:2379\"]\ncluster = \"from-file\"\nallow_loopback = true";
        let e = merged(&[], file);
        assert_eq!(e.etcd_endpoints, ["http://file:2379"]);
        assert_eq!(e.cluster.as_str(), "from-file");
        assert!(e.allow_loopback);
        let e = merged(
            &[
                "--cluster",
                "from-flag",
                "--etcd-endpoints",
                "http://flag:1",
            ],
            file,
        );
        assert_eq!(e.cluster.as_str(), "from-flag");
        assert_eq!(e.etcd_endpoints, ["http://flag:1"]);
        let e = merged(&[], "");
        assert_eq!(e.cluster.as_str(), "default");
        assert_eq!(e.prefix, "/peerkeep/v1");
    }
}
