//! Command-line interface of `peerkeep-agent`: every flag, its `PEERKEEP_*` environment
//! fallback, its default and its help text. Parsing only; [`crate::lifecycle::run`] turns a
//! parsed `run` into a checked configuration.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nix::sys::signal::Signal;
use peerkeep_registry::NodeId;
use peerkeep_registry::cli_args::EtcdArgs;
use peerkeep_registry::logging::LogArgs;

use crate::adapter::AdapterArgs;
use crate::endpoints::EndpointSpec;
use crate::resolve::AddrSource;

/// The node container's entrypoint: supervises the node daemon as PID 1, registers it in etcd,
/// keeps it peered, serves health checks, and drains and stops it cleanly on SIGTERM.
///
/// Exit codes: 0 success; 1 runtime error; 2 usage error; 3 node adapter configuration
/// invalid; 4 node id taken by another live instance; 126/127 daemon not executable / not found; otherwise the daemon's own code or
/// 128+signal.
#[derive(Debug, Parser)]
#[command(name = "peerkeep-agent", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[command(flatten)]
    pub log: LogArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: `peerkeep-agent run [OPTIONS] -- <daemon> [args...]` (the container
    /// entrypoint, exec form).
    Run(Box<RunArgs>),
    /// Ask the local agent's health server once; exit 0 (healthy) or 1. For Docker HEALTHCHECK.
    Health(HealthArgs),
    /// Resolve the advertised and private addresses, print them and why, and exit.
    ResolveAddr(ResolveArgs),
}

/// Where the node's addresses come from (shared by `run` and `resolve-addr`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Addresses")]
pub struct AddressArgs {
    /// Address sources for the advertised (p2p, possibly public) address, comma-separated,
    /// tried in order: ip:ADDR, env:VAR, iface:NAME, cidr:NET, ec2:public-ipv4,
    /// ec2:local-ipv4, route, hostname. Unset: the private address is advertised.
    #[arg(
        long,
        env = "PEERKEEP_ADVERTISE",
        value_delimiter = ',',
        value_name = "SOURCES"
    )]
    pub advertise: Vec<AddrSource>,

    /// Address sources for the private address (what the load balancer dials), same syntax as
    /// --advertise.
    #[arg(
        long,
        env = "PEERKEEP_PRIVATE_ADDR",
        value_delimiter = ',',
        default_value = "route",
        value_name = "SOURCES"
    )]
    pub private_addr: Vec<AddrSource>,

    /// EC2 instance metadata endpoint for the ec2: sources. Falls back to
    /// AWS_EC2_METADATA_SERVICE_ENDPOINT, then http://169.254.169.254.
    #[arg(long, env = "PEERKEEP_IMDS_ENDPOINT", value_name = "URL")]
    pub imds_endpoint: Option<String>,
}

/// `peerkeep-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// etcd connection.
    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// Addresses.
    #[command(flatten)]
    pub addresses: AddressArgs,

    /// The daemon's API.
    #[command(flatten)]
    pub adapter: AdapterArgs,

    /// This node's id in the cluster. Default (also when empty): the host name (the container
    /// id under Docker, so scaled replicas differ).
    #[arg(long, env = "PEERKEEP_NODE_ID", value_parser = parse_node_id_or_empty, help_heading = "Node")]
    pub node_id: Option<String>,

    /// A published endpoint, NAME=HOST:PORT or NAME=:PORT, repeatable. An empty host means the advertised
    /// address for p2p and the private address for any other name. The agent adds `health`.
    #[arg(
        long = "endpoint",
        env = "PEERKEEP_ENDPOINT",
        value_delimiter = ',',
        value_name = "NAME=[HOST]:PORT",
        help_heading = "Node"
    )]
    pub endpoints: Vec<EndpointSpec>,

    /// A free-form label KEY=VALUE for the record, repeatable (shown by `peerkeep`, never
    /// rendered into configuration).
    #[arg(
        long = "label",
        env = "PEERKEEP_LABEL",
        value_delimiter = ',',
        value_name = "KEY=VALUE",
        value_parser = parse_label,
        help_heading = "Node"
    )]
    pub labels: Vec<(String, String)>,

    /// Lease time-to-live: a node that dies disappears from the registry within this time.
    #[arg(long, env = "PEERKEEP_LEASE_TTL", default_value = "10s", value_parser = parse_duration, value_name = "DURATION", help_heading = "Registration")]
    pub lease_ttl: Duration,

    /// How long to keep retrying when another live instance holds the node id before exiting
    /// with code 4. Default: 2 × --lease-ttl.
    #[arg(long, env = "PEERKEEP_CLAIM_TIMEOUT", value_parser = parse_duration, value_name = "DURATION", help_heading = "Registration")]
    pub claim_timeout: Option<Duration>,

    /// On shutdown, time between marking the node draining and revoking its registration, so
    /// load balancers stop sending traffic first.
    #[arg(long, env = "PEERKEEP_DRAIN_DELAY", default_value = "2s", value_parser = parse_duration, value_name = "DURATION", help_heading = "Shutdown")]
    pub drain_delay: Duration,

    /// Signal that asks the daemon to stop (TERM, INT, QUIT, HUP, USR1, USR2, or a number).
    #[arg(long, env = "PEERKEEP_STOP_SIGNAL", default_value = "TERM", value_parser = parse_signal, value_name = "SIGNAL", help_heading = "Shutdown")]
    pub stop_signal: Signal,

    /// How long the daemon may take to stop before it is killed (logged as an unclean stop).
    /// Keep drain-delay + stop-timeout below the orchestrator's grace period.
    #[arg(long, env = "PEERKEEP_STOP_TIMEOUT", default_value = "20s", value_parser = parse_duration, value_name = "DURATION", help_heading = "Shutdown")]
    pub stop_timeout: Duration,

    /// Where the health server listens (/livez, /readyz, /status, /metrics).
    #[arg(
        long,
        env = "PEERKEEP_HEALTH_LISTEN",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR:PORT",
        help_heading = "Health"
    )]
    pub health_listen: SocketAddr,

    /// A ready node that stays short of peers this long goes back to `starting`.
    #[arg(long, env = "PEERKEEP_UNREADY_AFTER", default_value = "30s", value_parser = parse_duration, value_name = "DURATION", help_heading = "Health")]
    pub unready_after: Duration,

    /// Oldest acceptable best block (e.g. 2m) for the node to be ready. Unset: the daemon's
    /// own "synced" claim decides (right for chains that can go quiet, like regtest).
    #[arg(
        long,
        env = "PEERKEEP_MAX_LAG",
        value_parser = parse_duration,
        value_name = "DURATION",
        help_heading = "Health"
    )]
    pub max_lag: Option<Duration>,

    /// Target number of peers, K. Readiness needs min(K, other live nodes).
    #[arg(
        long,
        env = "PEERKEEP_MIN_PEERS",
        default_value_t = 3,
        value_name = "K",
        help_heading = "Peers"
    )]
    pub min_peers: usize,

    /// Most peers to keep; above it the keeper trims. Default: 2 × --min-peers.
    #[arg(
        long,
        env = "PEERKEEP_MAX_PEERS",
        value_name = "N",
        help_heading = "Peers"
    )]
    pub max_peers: Option<usize>,

    /// How often the daemon is asked for its peers and sync status.
    #[arg(long, env = "PEERKEEP_PEER_POLL", default_value = "1s", value_parser = parse_duration, value_name = "DURATION", help_heading = "Peers")]
    pub peer_poll: Duration,

    /// Also disconnect peers that match no record (default: unknown peers are left alone).
    #[arg(long, env = "PEERKEEP_STRICT_PEERS", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Peers")]
    pub strict_peers: bool,

    /// The daemon and its arguments, after `--`. `{advertise_ip}`, `{private_ip}` and
    /// `{node_id}` in the arguments are replaced.
    #[arg(last = true, required = true, value_name = "DAEMON")]
    pub daemon: Vec<OsString>,
}

/// Which health probe to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Probe {
    /// /livez: the daemon and the agent are alive (stays healthy while draining).
    Live,
    /// /readyz: the node may receive client traffic.
    Ready,
}

/// `peerkeep-agent health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Which probe to ask.
    #[arg(long, env = "PEERKEEP_PROBE", value_enum, default_value_t = Probe::Live)]
    pub probe: Probe,

    /// The agent's health server. Default: PEERKEEP_HEALTH_LISTEN as `run` uses it, with
    /// the unspecified address (0.0.0.0 or ::) mapped to loopback.
    #[arg(
        long,
        env = "PEERKEEP_HEALTH_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "HOST:PORT"
    )]
    pub addr: String,
}

/// `peerkeep-agent resolve-addr`.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// Addresses.
    #[command(flatten)]
    pub addresses: AddressArgs,

    /// Accept loopback addresses (for tests and single-host demos).
    #[arg(long, env = "PEERKEEP_ALLOW_LOOPBACK", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_loopback: bool,
}

/// A valid node id, or empty (compose files often set `PEERKEEP_NODE_ID: ${VAR:-}`): empty
/// means "use the default", like an unset variable.
fn parse_node_id_or_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Ok(String::new());
    }
    s.parse::<NodeId>()
        .map(|id| id.to_string())
        .map_err(|e| e.to_string())
}

impl RunArgs {
    /// `--node-id`, unless absent or empty.
    pub fn node_id(&self) -> Option<NodeId> {
        self.node_id
            .as_deref()
            .filter(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    if k.is_empty()
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
    {
        return Err(format!("{k:?}: label keys use A-Z a-z 0-9 . _ - /"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// The longest duration any flag accepts. Far beyond any sensible setting, and far enough
/// from `Duration`'s limits that the agent's arithmetic on these values cannot overflow.
pub const MAX_FLAG_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a human duration (`10s`, `500ms`, `2m`) of at most [`MAX_FLAG_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > MAX_FLAG_DURATION {
        return Err(format!(
            "{s:?} is too long: at most {}",
            humantime::format_duration(MAX_FLAG_DURATION)
        ));
    }
    Ok(d)
}

/// Parses `TERM`, `SIGTERM` or `15`.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse()
        .map_err(|_| format!("{s:?} is not a signal name (e.g. TERM, INT, QUIT)"))
}

/// The health server address to ask: 0.0.0.0 and `[::]` (where `run` listens on every interface)
/// become the matching loopback address.
pub fn probe_target(listen: &str) -> String {
    if let Some(port) = listen.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = listen.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        listen.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_and_daemon_after_double_dash() {
        let cli =
            Cli::try_parse_from(["a", "run", "--", "sh", "-c", "echo {node_id}"]).expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("not run");
        };
        assert_eq!(run.daemon, ["sh", "-c", "echo {node_id}"]);
        assert_eq!(run.lease_ttl, Duration::from_secs(10));
        assert_eq!(run.drain_delay, Duration::from_secs(2));
        assert_eq!(run.stop_timeout, Duration::from_secs(20));
        assert_eq!(run.stop_signal, Signal::SIGTERM);
        assert_eq!(run.min_peers, 3);
        assert_eq!(run.addresses.private_addr, [AddrSource::Route]);
        assert!(run.addresses.advertise.is_empty());
        assert_eq!(run.health_listen.to_string(), "0.0.0.0:8080");
    }

    #[test]
    fn run_requires_a_daemon_and_rejects_bad_values() {
        assert!(Cli::try_parse_from(["a", "run"]).is_err());
        for bad in [
            ["--stop-signal", "TERMINATE"],
            ["--advertise", "dns:x"],
            ["--endpoint", "p2p=3000"],
            ["--lease-ttl", "soon"],
            ["--node-id", "bad id"],
        ] {
            let args = ["a", "run", bad[0], bad[1], "--", "true"];
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?} accepted");
        }
    }

    /// Regression: `--peer-poll 200000000000y` panicked ("overflow when multiplying duration
    /// by scalar", exit 101), and `--lease-ttl 300000000000y` after the daemon had started.
    #[test]
    fn huge_durations_are_usage_errors_not_panics() {
        for flag in [
            "--lease-ttl",
            "--claim-timeout",
            "--drain-delay",
            "--stop-timeout",
            "--unready-after",
            "--max-lag",
            "--peer-poll",
        ] {
            for huge in ["200000000000y", "366days"] {
                let err = Cli::try_parse_from(["a", "run", flag, huge, "--", "true"])
                    .expect_err("too long accepted");
                assert_eq!(err.exit_code(), 2, "{flag} {huge}");
                assert!(err.to_string().contains(flag), "{flag}: {err}");
            }
            assert!(
                Cli::try_parse_from(["a", "run", flag, "365days", "--", "true"]).is_ok(),
                "{flag}: the bound itself refused"
            );
        }
    }

    #[test]
    fn signals_and_probe_targets() {
        assert_eq!(parse_signal("QUIT"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("sigint"), Ok(Signal::SIGINT));
        assert_eq!(parse_signal("15"), Ok(Signal::SIGTERM));
        assert_eq!(probe_target("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(probe_target("[::]:8080"), "[::1]:8080");
        assert_eq!(probe_target("10.0.0.1:8080"), "10.0.0.1:8080");
    }
}
