//! `devnode`: a small reference P2P daemon that speaks Wavelet's HTTP API.
//!
//! It exists so tests and the demo can run many real peer-to-peer nodes cheaply: real TCP peer
//! links with a handshake (node id + advertised address), gossip of a block height from a
//! producer, and Wavelet's `/ledger`, `/node/connect` and `/node/disconnect`. Switches reproduce
//! the awkward behaviours of real daemons that the agent must cope with (asynchronous connects,
//! stale peer entries, failing connects, a frozen chain head).
//!
//! - [`wire`]: the line-delimited JSON peer protocol.
//! - [`chain`]: the head (height and block time).
//! - [`peers`]: the peer table and its consistency rules.
//! - [`p2p`]: accepting, dialing and running links.
//! - [`api`]: the HTTP API.
//! - [`fixture`]: starting devnode processes from tests.

pub mod api;
pub mod chain;
pub mod fixture;
pub mod p2p;
pub mod peers;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use peerkeep_registry::NodeId;

pub use fixture::DevNode;

/// After SIGTERM/SIGINT, how long requests in flight may take before the process exits.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Command-line flags of `devnode`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "devnode",
    version,
    about = "Reference P2P daemon with Wavelet's HTTP API, for tests and demos"
)]
pub struct Args {
    /// Node id, sent in the handshake and shown in /ledger.
    #[arg(long)]
    pub id: NodeId,
    /// Address to accept peer connections on.
    #[arg(long, value_name = "ADDR")]
    pub p2p_listen: SocketAddr,
    /// Address peers must dial (default: --p2p-listen, which then must be a concrete address).
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<SocketAddr>,
    /// Address of the HTTP API.
    #[arg(long, value_name = "ADDR")]
    pub api_listen: SocketAddr,
    /// File holding the bearer token for /node/connect and /node/disconnect.
    #[arg(long, value_name = "PATH")]
    pub api_token_file: PathBuf,
    /// Make a block this often (this node is a producer); without it the node only follows.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub produce_every: Option<Duration>,
    /// Most live peer links (inbound and outbound together).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..), value_name = "N")]
    pub max_peers: u16,
    /// /node/connect answers at once and dials in the background (like nodeos and geth).
    #[arg(long)]
    pub async_connect: bool,
    /// Keep a closed link's entry in /ledger for this long (like Wavelet's routing table).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s", value_name = "DURATION")]
    pub stale_peers: Duration,
    /// Fraction of /node/connect calls that fail without dialing (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, value_name = "FRACTION")]
    pub connect_failure_rate: f64,
    /// Never advance the head (neither produce nor follow), while still claiming to be synced.
    #[arg(long)]
    pub frozen_head: bool,
    /// Once listening, write `{"p2p":…,"advertised":…,"api":…}` to this file (atomically), so
    /// a caller that passed port 0 learns the ports.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("{r} is outside 0.0..=1.0"))
    }
}

/// State shared by the p2p side and the API.
#[derive(Debug)]
pub struct Node {
    /// This node's id.
    pub id: NodeId,
    /// The address peers dial.
    pub advertised: SocketAddr,
    /// `--max-peers`.
    pub max_peers: usize,
    /// The head.
    pub chain: chain::Chain,
    peers: Mutex<peers::PeerTable>,
}

impl Node {
    /// The peer table. A panic while holding the lock cannot leave it half-updated (every
    /// method is a single map operation), so a poisoned lock is used as is.
    pub fn lock_peers(&self) -> MutexGuard<'_, peers::PeerTable> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs devnode until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::register()?;
    let token = std::fs::read_to_string(&args.api_token_file)
        .with_context(|| format!("reading --api-token-file {}", args.api_token_file.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!(
            "--api-token-file {} is empty; the API refuses to run without a secret",
            args.api_token_file.display()
        );
    }
    let p2p = tokio::net::TcpListener::bind(args.p2p_listen)
        .await
        .with_context(|| format!("binding --p2p-listen {}", args.p2p_listen))?;
    let p2p_bound = p2p.local_addr().context("p2p listener address")?;
    let advertised = args.advertise.unwrap_or(p2p_bound);
    if advertised.ip().is_unspecified() || advertised.port() == 0 {
        bail!("cannot advertise {advertised}: pass --advertise with a concrete ip:port");
    }
    let api_listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("binding --api-listen {}", args.api_listen))?;
    let api_bound = api_listener.local_addr().context("API listener address")?;
    if let Some(path) = &args.ready_file {
        write_ready_file(path, p2p_bound, advertised, api_bound)?;
    }

    let node = Arc::new(Node {
        id: args.id.clone(),
        advertised,
        max_peers: usize::from(args.max_peers),
        chain: chain::Chain::new(args.frozen_head),
        peers: Mutex::new(peers::PeerTable::new(
            usize::from(args.max_peers),
            args.stale_peers,
        )),
    });
    tracing::info!(
        id = %node.id,
        p2p = %p2p_bound,
        advertised = %advertised,
        api = %api_bound,
        "devnode started"
    );

    tokio::spawn(p2p::accept_loop(node.clone(), p2p));
    if let Some(every) = args.produce_every {
        let node = node.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                node.chain.produce();
            }
        });
    }
    let app = api::router(api::ApiState {
        node: node.clone(),
        token: Arc::from(token),
        async_connect: args.async_connect,
        connect_failure_rate: args.connect_failure_rate,
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(api_listener, app).with_graceful_shutdown(async {
        let _ = stop_rx.await;
    });
    // Graceful shutdown lets requests in flight finish, but a slow client must not hold the
    // process: after a signal, at most SHUTDOWN_GRACE more.
    let deadline = async {
        signals.recv().await;
        tracing::info!(id = %node.id, "signal received, shutting down");
        let _ = stop_tx.send(());
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.context("HTTP API server failed")?,
        () = deadline => tracing::warn!("API requests still open after {SHUTDOWN_GRACE:?}; exiting anyway"),
    }
    node.lock_peers().close_all();
    tracing::info!(id = %node.id, "devnode stopped");
    Ok(())
}

fn write_ready_file(
    path: &std::path::Path,
    p2p: SocketAddr,
    advertised: SocketAddr,
    api: SocketAddr,
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "p2p": p2p.to_string(),
        "advertised": advertised.to_string(),
        "api": api.to_string(),
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing --ready-file {}", path.display()))
}

/// SIGTERM and SIGINT, registered as soon as devnode starts so that a signal sent while it is
/// still binding its sockets is not lost (or fatal).
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn register() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}
