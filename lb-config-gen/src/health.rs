//! The health and metrics HTTP server (`--health-listen`).
//!
//! - `/livez`: 200 while the process serves (never depends on etcd or on HAProxy's state).
//! - `/readyz`: 200 when the last apply succeeded and the membership view is fresh; otherwise
//!   503 with the reason, so an orchestrator or operator sees "degraded" and why.
//! - `/metrics`: OpenMetrics text.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// What `/readyz` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// HAProxy runs a configuration produced from a view.
    pub started: bool,
    /// Why the last apply failed, while it stays failed.
    pub apply_error: Option<String>,
    /// The watch is broken and the view is the last one known.
    pub view_stale: bool,
}

/// State shared by the apply loop and the HTTP handlers.
#[derive(Debug, Default)]
pub struct Shared {
    /// Readiness inputs.
    pub status: Mutex<Status>,
    /// Metrics.
    pub metrics: Metrics,
}

impl Shared {
    /// Updates the status under its lock (a poisoned lock still holds a usable status).
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }
    /// A copy of the status.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The router (exposed for tests).
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let s = shared.status();
    let reason = if !s.started {
        Some("haproxy not started yet".to_owned())
    } else if let Some(e) = s.apply_error {
        Some(format!("degraded: last apply failed: {e}"))
    } else if s.view_stale {
        Some("degraded: etcd view is stale (serving the last known membership)".to_owned())
    } else {
        None
    };
    match reason {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(r) => (StatusCode::SERVICE_UNAVAILABLE, format!("{r}\n")),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
}

/// Binds `addr` and serves until the runtime ends.
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(shared)).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    Ok(())
}
