//! The Wavelet-compatible HTTP API of devnode.
//!
//! Shapes follow Wavelet's gateway: `/ledger` without auth, `peers: null` when there are none;
//! `/node/connect` and `/node/disconnect` take `{"address":"ip:port"}` with a bearer token,
//! answer 401 in plain text without it, and report failures as `{"status":…,"error":…}` with
//! 400 (bad request) or 500 (everything else). devnode adds `id`, peer `id`/`direction` and the
//! block's `timestamp_ms` so that identity and lag can be tested.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::Node;
use super::p2p::{DialOutcome, dial};

/// With `--async-connect`, how long after answering the node starts dialing. Long enough that a
/// caller polling right after the answer sees the peer missing, like nodeos and geth.
pub const ASYNC_CONNECT_DELAY: Duration = Duration::from_secs(1);

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The node.
    pub node: Arc<Node>,
    /// The bearer token.
    pub token: Arc<str>,
    /// `--async-connect`.
    pub async_connect: bool,
    /// `--connect-failure-rate`.
    pub connect_failure_rate: f64,
}

/// The API routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/ledger", get(ledger))
        .route("/node/connect", post(connect))
        .route("/node/disconnect", post(disconnect))
        .with_state(state)
}

async fn ledger(State(s): State<ApiState>) -> Json<Value> {
    let head = s.node.chain.head();
    let peers = s.node.lock_peers().listing(Instant::now());
    let peers = if peers.is_empty() {
        Value::Null
    } else {
        json!(peers)
    };
    Json(json!({
        "id": s.node.id.as_str(),
        "public_key": "",
        "address": s.node.advertised.to_string(),
        "num_accounts": 0,
        "preferred_votes": 0,
        "sync_status": "Node is fully synced",
        "block": {
            "height": head.height,
            "id": format!("{:064x}", head.height),
            "merkle_root": "",
            "transactions": 0,
            "timestamp_ms": head.time_ms,
        },
        "preferred": null,
        "num_tx": 0,
        "num_tx_in_store": 0,
        "num_accounts_in_store": 0,
        "peers": peers,
    }))
}

/// An API failure, rendered the way Wavelet renders it.
#[derive(Debug)]
enum ApiError {
    /// Missing or wrong bearer token: 401, plain text.
    Unauthorized,
    /// 400 with a JSON error body.
    BadRequest(String),
    /// 500 with a JSON error body.
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ApiError::Unauthorized => {
                return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
            }
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        let body = json!({
            "status": status.canonical_reason().unwrap_or("Error"),
            "error": msg,
        });
        (status, Json(body)).into_response()
    }
}

fn ok(msg: String) -> Response {
    Json(json!({ "msg": msg })).into_response()
}

/// Checks the bearer token and extracts the address from the body.
fn authorize_and_parse(
    s: &ApiState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<SocketAddr, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented != Some(&*s.token) {
        return Err(ApiError::Unauthorized);
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error parsing request body: {e}")))?;
    let Some(addr) = v.get("address") else {
        return Err(ApiError::BadRequest("address is missing".into()));
    };
    let Some(addr) = addr.as_str() else {
        return Err(ApiError::Internal(
            "error extracting address from payload: not a string".into(),
        ));
    };
    addr.parse().map_err(|_| {
        let shown: String = addr.chars().take(80).collect();
        ApiError::BadRequest(format!("address {shown:?} is not ip:port"))
    })
}

async fn connect(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let target = match authorize_and_parse(&s, &headers, &body) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if s.connect_failure_rate > 0.0 && rand::random::<f64>() < s.connect_failure_rate {
        return ApiError::Internal(format!(
            "error connecting to peer: simulated failure dialing {target} (--connect-failure-rate)"
        ))
        .into_response();
    }
    if s.async_connect {
        let node = s.node.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ASYNC_CONNECT_DELAY).await;
            if let Err(error) = dial(&node, target).await {
                tracing::warn!(peer = %target, %error, "background connect failed");
            }
        });
        return ok(format!("Connecting to {target}"));
    }
    match dial(&s.node, target).await {
        Ok(DialOutcome::Connected) => ok(format!("Successfully connected to {target}")),
        Ok(DialOutcome::AlreadyConnected) => ok(format!("Already connected to {target}")),
        Err(e) => ApiError::Internal(format!("error connecting to peer: {e}")).into_response(),
    }
}

async fn disconnect(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let target = match authorize_and_parse(&s, &headers, &body) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    match s.node.lock_peers().disconnect(target, Instant::now()) {
        Ok(()) => ok(format!("Successfully disconnected from {target}")),
        Err(e) => ApiError::Internal(format!("error disconnecting from peer {target}: {e}"))
            .into_response(),
    }
}
