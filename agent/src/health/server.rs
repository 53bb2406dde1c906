//! The health HTTP server: `/livez`, `/readyz`, `/status`, `/metrics`.
//!
//! Handlers only read the status the lifecycle publishes; they never call etcd or the daemon,
//! so a probe answers in microseconds even while either is hung. The listener is bound before
//! the daemon starts, so a taken port fails the start instead of leaving a node without health
//! checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::metrics::Metrics;
use super::status::{AgentStatus, LivenessParams, liveness, readiness};

#[derive(Clone)]
struct AppState {
    status: watch::Receiver<AgentStatus>,
    metrics: Arc<Metrics>,
    liveness: LivenessParams,
}

/// The health listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for health checks (--health-listen): {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Binds the listener; call before spawning the daemon.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Serves until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    status: watch::Receiver<AgentStatus>,
    metrics: Arc<Metrics>,
    liveness: LivenessParams,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics_text))
        .with_state(AppState {
            status,
            metrics,
            liveness,
        });
    axum::serve(listener, app).await
}

fn verdict(result: Result<(), String>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn livez(State(s): State<AppState>) -> Response {
    let status = s.status.borrow();
    verdict(liveness(&status, &s.liveness, Instant::now()))
}

async fn readyz(State(s): State<AppState>) -> Response {
    let status = s.status.borrow();
    verdict(readiness(&status))
}

async fn status_json(State(s): State<AppState>) -> Response {
    let status = s.status.borrow().clone();
    axum::Json(status).into_response()
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    match s.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}
