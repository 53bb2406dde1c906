//! A fake EC2 instance metadata service (IMDS) on a free loopback port.
//!
//! It answers the two calls the agent makes — `PUT /latest/api/token` and
//! `GET /latest/meta-data/{public-ipv4,local-ipv4}` — and can be told to misbehave the ways real
//! ones do: refuse tokens (IMDSv2 disabled behind a proxy: 403), never answer the token call
//! (hop limit 1 from a bridged container), or have no public address (404). It counts the calls
//! it gets so tests can tell v1 from v2. Like [`crate::TcpProxy`] it runs on its own thread and
//! runtime and stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};

/// How the token call behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// IMDSv2 works: a token is issued and required.
    Issue,
    /// The token call answers 403 (IMDSv2 not available); v1 GETs work.
    Forbidden,
    /// The token call never answers; v1 GETs work.
    Hang,
}

/// What the fake service answers.
#[derive(Debug, Clone)]
pub struct ImdsBehaviour {
    /// Token call behaviour.
    pub token: TokenMode,
    /// `public-ipv4`; `None` answers 404.
    pub public_ipv4: Option<String>,
    /// `local-ipv4`; `None` answers 404.
    pub local_ipv4: Option<String>,
}

/// The token the fake service issues.
pub const FAKE_TOKEN: &str = "fake-imds-token-AQAEA";

/// Calls seen so far.
#[derive(Debug, Default)]
pub struct ImdsCounts {
    /// `PUT /latest/api/token`.
    pub token_calls: AtomicU64,
    /// GETs carrying the issued token.
    pub v2_gets: AtomicU64,
    /// GETs without a token.
    pub v1_gets: AtomicU64,
}

#[derive(Clone)]
struct Shared {
    behaviour: Arc<Mutex<ImdsBehaviour>>,
    counts: Arc<ImdsCounts>,
    /// Becomes true on drop, releasing hanging handlers so the server can stop.
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// A running fake metadata service.
pub struct FakeImds {
    addr: SocketAddr,
    shared: Shared,
    stopping: tokio::sync::watch::Sender<bool>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeImds {
    /// Starts the service with `behaviour`.
    pub fn start(behaviour: ImdsBehaviour) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake IMDS");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
        let shared = Shared {
            behaviour: Arc::new(Mutex::new(behaviour)),
            counts: Arc::new(ImdsCounts::default()),
            stopping: stopping_rx,
        };
        let app = Router::new()
            .route("/latest/api/token", put(token))
            .route("/latest/meta-data/{field}", get(meta))
            .with_state(shared.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake IMDS runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        Self {
            addr,
            shared,
            stopping,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`, for `--imds-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The calls seen so far.
    pub fn counts(&self) -> &ImdsCounts {
        &self.shared.counts
    }

    /// `(token calls, v2 GETs, v1 GETs)`.
    pub fn calls(&self) -> (u64, u64, u64) {
        let c = &self.shared.counts;
        (
            c.token_calls.load(Ordering::SeqCst),
            c.v2_gets.load(Ordering::SeqCst),
            c.v1_gets.load(Ordering::SeqCst),
        )
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        let _ = self.stopping.send(true);
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn token(State(s): State<Shared>, headers: HeaderMap) -> (StatusCode, String) {
    s.counts.token_calls.fetch_add(1, Ordering::SeqCst);
    let mode = s
        .behaviour
        .lock()
        .map(|b| b.token)
        .unwrap_or(TokenMode::Issue);
    match mode {
        TokenMode::Issue => {
            if headers
                .get("x-aws-ec2-metadata-token-ttl-seconds")
                .is_none()
            {
                return (StatusCode::BAD_REQUEST, "missing ttl header".into());
            }
            (StatusCode::OK, FAKE_TOKEN.into())
        }
        TokenMode::Forbidden => (StatusCode::FORBIDDEN, "forbidden".into()),
        TokenMode::Hang => {
            let mut stopping = s.stopping.clone();
            let _ = stopping.wait_for(|stop| *stop).await;
            (StatusCode::SERVICE_UNAVAILABLE, String::new())
        }
    }
}

async fn meta(
    State(s): State<Shared>,
    Path(field): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let Ok(b) = s.behaviour.lock().map(|b| b.clone()) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, String::new());
    };
    match headers.get("x-aws-ec2-metadata-token") {
        Some(t) if t.as_bytes() == FAKE_TOKEN.as_bytes() => {
            s.counts.v2_gets.fetch_add(1, Ordering::SeqCst);
        }
        Some(_) => return (StatusCode::UNAUTHORIZED, String::new()),
        None if b.token == TokenMode::Issue => {
            // A v2-only instance (HttpTokens=required) refuses tokenless requests.
            return (StatusCode::UNAUTHORIZED, String::new());
        }
        None => {
            s.counts.v1_gets.fetch_add(1, Ordering::SeqCst);
        }
    }
    let value = match field.as_str() {
        "public-ipv4" => b.public_ipv4,
        "local-ipv4" => b.local_ipv4,
        _ => None,
    };
    match value {
        Some(v) => (StatusCode::OK, v),
        None => (StatusCode::NOT_FOUND, "Not Found".into()),
    }
}
