//! Turning `run`'s flags into a running [`Agent`]: checks, addresses, health server, daemon,
//! registration setup and the peer keeper task.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use peerkeep_registry::names::MAX_SLOT;
use peerkeep_registry::registration::{MIN_TTL, NodeInfo, RegistrationConfig, new_instance_token};
use peerkeep_registry::{
    AddressPolicy, Endpoint, EndpointName, EtcdOptions, Keyspace, Membership, NodeId, NodeRecord,
    NodeState, RecordError, Slot,
};
use peerkeep_supervise::{ShutdownRequest, Supervisor};
use tokio::sync::watch;

use super::daemon::{self, DaemonProbe};
use super::error::RunError;
use super::{Agent, LifecycleParams, PhaseMachine};
use crate::adapter::{self, AdapterKind, NodeAdapter};
use crate::addresses::Addresses;
use crate::cli::RunArgs;
use crate::daemon_env::DaemonFacts;
use crate::endpoints;
use crate::health::metrics::Metrics;
use crate::health::server;
use crate::health::status::{AgentStatus, LivenessParams};
use crate::keeper::run::DEFAULT_CONNECT_DEADLINE;
use crate::keeper::{
    BackoffPolicy, KeeperConfig, KeeperCounters, Observations, PeerKeeper, PlanParams,
};
use crate::readiness::{Observation, Readiness, ReadinessParams};

/// A loop silent this long fails liveness (the loop wakes at least every `--peer-poll`).
const MIN_HEARTBEAT_LIMIT: Duration = Duration::from_secs(10);

/// Values clap accepts but the agent cannot use, refused before anything starts (durations
/// are bounded by the flag parser, [`crate::cli::parse_duration`]).
fn check_flags(args: &RunArgs) -> Result<(), RunError> {
    if args.lease_ttl < MIN_TTL {
        return Err(RunError::Flag {
            flag: "--lease-ttl",
            reason: format!("{:?} is below the minimum of {MIN_TTL:?}", args.lease_ttl),
        });
    }
    if args.peer_poll.is_zero() {
        return Err(RunError::Flag {
            flag: "--peer-poll",
            reason: "must be above zero (e.g. 1s)".to_owned(),
        });
    }
    if args.min_peers == 0 && args.max_peers.is_none() {
        // The default maximum is 2 × K: 0 would have the keeper disconnect every peer.
        return Err(RunError::Flag {
            flag: "--min-peers",
            reason: "0 needs an explicit --max-peers (the default, 2 × --min-peers, would be 0 \
                     and disconnect every peer)"
                .to_owned(),
        });
    }
    if let Some(max) = args.max_peers
        && max < args.min_peers
    {
        return Err(RunError::Flag {
            flag: "--max-peers",
            reason: format!("{max} is below --min-peers {}", args.min_peers),
        });
    }
    Ok(())
}

fn node_id(flag: Option<NodeId>) -> Result<NodeId, RunError> {
    if let Some(id) = flag {
        return Ok(id);
    }
    let host = nix::unistd::gethostname()
        .map_err(|e| RunError::NodeId(format!("cannot read the host name: {e}")))?;
    let host = host.to_string_lossy();
    host.parse()
        .map_err(|e| RunError::NodeId(format!("host name {host:?} is not a valid id: {e}")))
}

/// Runs the agent: returns the exit code to use (the daemon's status), or the error that
/// ended the run early (map it with [`RunError::exit_code`]).
pub async fn run(args: RunArgs) -> Result<i32, RunError> {
    let sup = Supervisor::new()?;
    let requests = sup.shutdown_requests();

    check_flags(&args)?;
    let id = node_id(args.node_id())?;
    let policy = args.etcd.policy();
    let keyspace = args.etcd.keyspace()?;
    let etcd_options = args.etcd.options()?;
    endpoints::check_unique(&args.endpoints)?;
    let node_adapter = adapter::build(&args.adapter.to_config())?;

    // Resolution can take seconds (EC2 metadata timeouts): a TERM meanwhile ends the start.
    let addrs = tokio::select! {
        r = Addresses::resolve(&args.addresses, policy) => r?,
        req = requests.at_least(1) => return Ok(stopped_before_start(req)),
    };
    addrs.log();
    let record_endpoints = published_endpoints(&args, &addrs, policy)?;
    let facts = DaemonFacts {
        node_id: id.clone(),
        advertise_ip: addrs.advertise_ip(),
        private_ip: addrs.private_ip(),
        endpoints: record_endpoints.clone(),
    };

    let instance = new_instance_token();
    let status = initial_status(
        &id,
        &instance,
        &addrs,
        &record_endpoints,
        &etcd_options,
        node_adapter.kind(),
    );
    let (status_tx, status_rx) = watch::channel(status);
    let metrics = Arc::new(Metrics::new());

    let listener = server::bind(args.health_listen).await?;
    spawn_health_server(
        listener,
        status_rx,
        Arc::clone(&metrics),
        liveness_params(&args),
    );
    tracing::info!(listen = %args.health_listen, "health server listening");

    // Lazy: never fails because etcd is down.
    let etcd = peerkeep_registry::connect(&etcd_options).await?;
    let membership = Membership::start(etcd.clone(), keyspace.clone(), policy);

    let probe = daemon_probe(&node_adapter, &record_endpoints, addrs.private_ip());
    let (reg_config, reg_info) =
        registration_setup(&args, keyspace, id, instance, record_endpoints);
    // The registration would refuse it on the daemon's first answer: refuse it now, before
    // there is a daemon to stop.
    check_record_size(&reg_config, &reg_info)?;

    // A TERM/INT that came in while starting up: do not start a daemon only to stop it.
    if requests.received() > 0 {
        return Ok(stopped_before_start(requests.at_least(1).await));
    }
    let mut cmd = daemon::command(&args.daemon, &facts).ok_or(RunError::NoDaemon)?;
    let child = sup.spawn(&mut cmd)?;
    sup.forward_to(&child);
    tracing::info!(pid = child.pid().as_raw(), program = ?args.daemon.first(), "daemon started");
    status_tx.send_modify(|s| {
        s.daemon.pid = Some(child.pid().as_raw());
        s.daemon.running = true;
    });
    let (peer_observations, observed) = watch::channel(None);
    if node_adapter.kind() != AdapterKind::None {
        let config = keeper_config(&args, &reg_config.id);
        tracing::info!(
            min_peers = config.params.min_peers,
            max_peers = config.params.max_peers,
            strict_peers = config.params.strict_peers,
            "peer keeper starting"
        );
        spawn_keeper(
            node_adapter.clone(),
            observed,
            membership.subscribe(),
            config,
            &metrics,
            &status_tx,
        );
    }
    let agent = Agent {
        params: lifecycle_params(&args),
        sup,
        requests,
        daemon: child,
        probe,
        etcd,
        reg_config,
        reg_info,
        registration: None,
        view: membership.subscribe(),
        status: status_tx,
        metrics,
        phase: PhaseMachine::default(),
        readiness: Readiness::default(),
        observation: Observation {
            reachable: false,
            synced: None,
            lag: None,
            peers: None,
            // Unknown until the membership view has loaded.
            other_live: None,
        },
        last_answer: None,
        failed_probes: 0,
        waiting_logged: std::time::Instant::now(),
        published_state: None,
        peer_observations,
    };
    let result = agent.run().await;
    drop(membership);
    result
}

/// The exit code when a shutdown was requested before the daemon was spawned: 128 + the
/// signal, as if the agent had been killed by it (143 for TERM, 130 for INT).
fn stopped_before_start(req: ShutdownRequest) -> i32 {
    tracing::info!(signal = %req.signal, "shutdown requested while starting up; the daemon is not started");
    128 + req.signal as i32
}

/// The record's endpoints, each passing the address policy (an explicit `--endpoint` host is
/// checked like a resolved address).
fn published_endpoints(
    args: &RunArgs,
    addrs: &Addresses,
    policy: AddressPolicy,
) -> Result<BTreeMap<EndpointName, Endpoint>, RunError> {
    let built = endpoints::build(
        &args.endpoints,
        addrs.advertise_ip(),
        addrs.private_ip(),
        args.health_listen.port(),
    )
    .map_err(|e| RunError::Endpoint(e.to_string()))?;
    for (name, ep) in &built {
        policy
            .check(ep)
            .map_err(|e| RunError::Endpoint(format!("{name}: {e}")))?;
    }
    Ok(built)
}

/// What `/status` shows before anything has happened.
fn initial_status(
    id: &NodeId,
    instance: &str,
    addrs: &Addresses,
    endpoints: &BTreeMap<EndpointName, Endpoint>,
    etcd: &EtcdOptions,
    adapter: AdapterKind,
) -> AgentStatus {
    let mut status = AgentStatus::new(id.to_string(), instance.to_owned());
    let (advertise, private) = addrs.status();
    status.advertise = Some(advertise);
    status.private = Some(private);
    status.endpoints = endpoints
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    status.etcd_endpoints = etcd.endpoints.clone();
    // The user name only: credentials never reach /status.
    status.etcd_user = etcd.auth.as_ref().map(|c| c.user.clone());
    status.adapter = adapter.as_str().to_owned();
    status
}

fn spawn_health_server(
    listener: tokio::net::TcpListener,
    status: watch::Receiver<AgentStatus>,
    metrics: Arc<Metrics>,
    liveness: LivenessParams,
) {
    tokio::spawn(async move {
        if let Err(e) = server::serve(listener, status, metrics, liveness).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
}

/// How "the daemon answers" is decided: the adapter's probe, else a TCP connect to the p2p
/// port on the private address, else (no p2p endpoint) a running process.
fn daemon_probe(
    adapter: &Arc<dyn NodeAdapter>,
    endpoints: &BTreeMap<EndpointName, Endpoint>,
    private_ip: IpAddr,
) -> DaemonProbe {
    match (adapter.kind(), endpoints.get(&EndpointName::p2p())) {
        (AdapterKind::None, Some(p2p)) => DaemonProbe::Tcp(SocketAddr::new(private_ip, p2p.port())),
        (AdapterKind::None, None) => DaemonProbe::Running,
        _ => DaemonProbe::Adapter(Arc::clone(adapter)),
    }
}

/// The registration's fixed configuration and its first record content.
fn registration_setup(
    args: &RunArgs,
    keyspace: Keyspace,
    id: NodeId,
    instance: String,
    endpoints: BTreeMap<EndpointName, Endpoint>,
) -> (RegistrationConfig, NodeInfo) {
    let mut config = RegistrationConfig::new(keyspace, id).with_ttl(args.lease_ttl);
    if let Some(t) = args.claim_timeout {
        config.claim_timeout = t;
    }
    config.instance = instance;
    config.version = format!("peerkeep-agent {}", env!("CARGO_PKG_VERSION"));
    let mut info = NodeInfo::new(endpoints);
    info.labels = args.labels.iter().cloned().collect();
    (config, info)
}

/// Whether a record built from `info` fits the schema's size limit whatever slot is claimed
/// (the same check the registration makes when it starts).
pub(super) fn record_fits(config: &RegistrationConfig, info: &NodeInfo) -> Result<(), RecordError> {
    let widest = Slot::new(MAX_SLOT).map_err(|e| RecordError::Invalid(e.to_string()))?;
    NodeRecord {
        id: config.id.clone(),
        // "starting" and "draining" are the longest state names.
        state: NodeState::Starting,
        endpoints: info.endpoints.clone(),
        slot: widest,
        instance: config.instance.clone(),
        version: config.version.clone(),
        started_at: config.started_at.clone(),
        labels: info.labels.clone(),
    }
    .encode()
    .map(|_| ())
}

/// [`record_fits`] as a flag error naming what made the record too large (exit 2).
fn check_record_size(config: &RegistrationConfig, info: &NodeInfo) -> Result<(), RunError> {
    record_fits(config, info).map_err(|e| {
        let flag = if info.labels.is_empty() {
            "--endpoint"
        } else {
            "--label"
        };
        RunError::Flag {
            flag,
            reason: format!(
                "the node record would be too large ({e}); use fewer or shorter values"
            ),
        }
    })
}

fn keeper_config(args: &RunArgs, id: &NodeId) -> KeeperConfig {
    KeeperConfig {
        params: PlanParams {
            own_id: id.clone(),
            min_peers: args.min_peers,
            max_peers: args.max_peers.unwrap_or(args.min_peers.saturating_mul(2)),
            strict_peers: args.strict_peers,
        },
        connect_deadline: DEFAULT_CONNECT_DEADLINE,
        backoff: BackoffPolicy::default(),
    }
}

/// `/livez`'s limits: the loop wakes at least every `--peer-poll`, so five polls of silence (at
/// least `MIN_HEARTBEAT_LIMIT`) mean it is stuck.
fn liveness_params(args: &RunArgs) -> LivenessParams {
    LivenessParams {
        heartbeat_limit: MIN_HEARTBEAT_LIMIT.max(args.peer_poll.saturating_mul(5)),
        unanswered_limit: args.unready_after,
    }
}

fn lifecycle_params(args: &RunArgs) -> LifecycleParams {
    LifecycleParams {
        readiness: ReadinessParams {
            min_peers: args.min_peers,
            max_lag: args.max_lag,
            unready_after: args.unready_after,
        },
        poll: args.peer_poll,
        drain_delay: args.drain_delay,
        stop_signal: args.stop_signal,
        stop_timeout: args.stop_timeout,
    }
}

/// Runs the peer keeper beside the lifecycle loop until the node leaves the running phase: a
/// draining or stopping node dials nobody. Its status is mirrored into `/status`.
fn spawn_keeper(
    adapter: Arc<dyn NodeAdapter>,
    observed: Observations,
    view: watch::Receiver<Arc<peerkeep_registry::MembershipSnapshot>>,
    config: KeeperConfig,
    metrics: &Metrics,
    status: &watch::Sender<AgentStatus>,
) {
    let counters = KeeperCounters {
        connects: metrics.peer_connects.clone(),
        connect_failures: metrics.peer_connect_failures.clone(),
        disconnects: metrics.peer_disconnects.clone(),
    };
    let (keeper, mut keeper_status) = PeerKeeper::new(adapter, observed, view, config, counters);
    let mut lifecycle = status.subscribe();
    let status = status.clone();
    tokio::spawn(async move {
        let mirror = async {
            while keeper_status.changed().await.is_ok() {
                let k = keeper_status.borrow_and_update().clone();
                status.send_modify(|s| s.keeper = Some(k));
            }
        };
        tokio::select! {
            _ = keeper.run() => {}
            _ = mirror => {}
            _ = lifecycle.wait_for(|s| s.lifecycle != "running") => {
                tracing::info!("peer keeper stopped: node is leaving");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn config() -> RegistrationConfig {
        let keyspace = Keyspace::new(
            peerkeep_registry::DEFAULT_PREFIX,
            "default".parse().expect("valid cluster"),
        )
        .expect("valid keyspace");
        RegistrationConfig::new(keyspace, "n1".parse().expect("valid id"))
    }

    fn info(label_bytes: usize) -> NodeInfo {
        let endpoint: Endpoint = "127.0.0.1:8080".parse().expect("valid endpoint");
        let mut info = NodeInfo::new(BTreeMap::from([(EndpointName::health(), endpoint)]));
        info.labels
            .insert("big".to_owned(), "a".repeat(label_bytes));
        info
    }

    fn run_args(flags: &[&str]) -> RunArgs {
        let argv = ["a", "run"].iter().chain(flags).chain(&["--", "true"]);
        match crate::cli::Cli::try_parse_from(argv)
            .expect("parses")
            .command
        {
            crate::cli::Command::Run(args) => *args,
            other => panic!("not run: {other:?}"),
        }
    }

    /// Regression: `--min-peers 0` made the default maximum 0, and the keeper disconnected
    /// every peer.
    #[test]
    fn min_peers_0_needs_an_explicit_max_peers() {
        let err = check_flags(&run_args(&["--min-peers", "0"])).expect_err("refused");
        assert!(
            matches!(
                err,
                RunError::Flag {
                    flag: "--min-peers",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 2);
        assert!(check_flags(&run_args(&["--min-peers", "0", "--max-peers", "4"])).is_ok());
        assert!(check_flags(&run_args(&["--min-peers", "3"])).is_ok());
    }

    #[test]
    fn huge_peer_counts_and_the_longest_durations_do_not_overflow() {
        let args = run_args(&[
            "--min-peers",
            &usize::MAX.to_string(),
            "--peer-poll",
            "365days",
        ]);
        assert!(check_flags(&args).is_ok());
        let id: NodeId = "n1".parse().expect("valid id");
        assert_eq!(keeper_config(&args, &id).params.max_peers, usize::MAX);
        assert_eq!(liveness_params(&args).heartbeat_limit, args.peer_poll * 5);
    }

    /// Regression: an oversized record used to be refused only after the daemon was spawned.
    #[test]
    fn oversized_labels_are_a_flag_error_before_the_daemon_starts() {
        assert!(check_record_size(&config(), &info(100)).is_ok());
        let err = check_record_size(&config(), &info(5000)).expect_err("too large");
        assert!(
            matches!(
                err,
                RunError::Flag {
                    flag: "--label",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 2);
    }
}
