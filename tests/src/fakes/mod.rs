//! Fake node daemon APIs for adapter contract tests.
//!
//! [`FakeServer`] is a loopback HTTP server that records every request and answers through a
//! closure; the daemon fakes on top of it ([`wavelet`], [`nodeos`], [`geth`], [`cometbft`]) keep
//! a little state and answer with the shapes the real daemons document (status codes, error
//! bodies, the quirks listed in issue 5), so each adapter can be tested against them without
//! the daemon installed. Like [`crate::TcpProxy`], the server runs on its own thread and runtime
//! and works from sync and async tests alike; it stops when dropped.

pub mod cometbft;
pub mod geth;
pub mod nodeos;
pub mod wavelet;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path and query, as sent (still percent-encoded).
    pub path_and_query: String,
    /// The path alone.
    pub path: String,
    /// `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The body as text.
    pub body: String,
}

impl Recorded {
    /// The body parsed as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// What the fake answers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Reply {
    /// 200 with a JSON body.
    pub fn json(v: Value) -> Self {
        Self::json_status(200, v)
    }
    /// A JSON body with a status.
    pub fn json_status(status: u16, v: Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: v.to_string(),
        }
    }
    /// A plain-text body with a status.
    pub fn text(status: u16, s: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: s.to_string(),
        }
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A recording HTTP server on a free loopback port.
pub struct FakeServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    /// Starts a server answering every request with `handler`.
    pub fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake server listener");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let log = requests.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake server runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
                let app = axum::Router::new().fallback(
                    move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                        let handler = handler.clone();
                        let log = log.clone();
                        async move {
                            let rec = Recorded {
                                method: method.to_string(),
                                path_and_query: uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                path: uri.path().to_string(),
                                authorization: headers
                                    .get(header::AUTHORIZATION)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned),
                                body: String::from_utf8_lossy(&body).into_owned(),
                            };
                            let reply = handler(&rec);
                            log.lock().unwrap_or_else(|p| p.into_inner()).push(rec);
                            into_response(reply)
                        }
                    },
                );
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        Self {
            addr,
            requests,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn into_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, reply.content_type)],
        reply.body,
    )
        .into_response()
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Locks a fake's state, ignoring poisoning (a panicking test already failed).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
