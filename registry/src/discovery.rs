//! The read-only HTTP discovery API behind `peerkeep serve`.
//!
//! It answers from a watched [`MembershipSnapshot`] — never from an etcd read per request — so a
//! burst of clients costs etcd nothing and an etcd outage keeps serving the last known view
//! (flagged `"stale": true`, and `/healthz` answers 503). It serves one cluster, the one its view
//! watches.
//!
//! Only what a client needs to dial is exposed: node id, state, slot and the `p2p` endpoint, plus
//! endpoints the operator names with `--expose-endpoint`. Labels and the instance token never
//! leave the registry. Seed lists rotate between calls, like a round-robin DNS seed, so clients
//! spread their first connections over the fleet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::endpoint::Endpoint;
use crate::names::{ClusterName, EndpointName, NodeId, Slot};
use crate::record::{NodeRecord, NodeState};
use crate::view::MembershipSnapshot;

/// Seeds returned when the request does not say how many.
pub const DEFAULT_SEEDS: usize = 5;
/// Most seeds one request may ask for.
pub const MAX_SEEDS: usize = 100;

/// What the API serves and exposes.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// The cluster whose view is served.
    pub cluster: ClusterName,
    /// Endpoint names shown in node listings besides `p2p`.
    pub expose_endpoints: BTreeSet<EndpointName>,
}

/// Builds the API's router over a view of `config.cluster`.
pub fn router(view: watch::Receiver<Arc<MembershipSnapshot>>, config: DiscoveryConfig) -> Router {
    let mut expose = config.expose_endpoints;
    expose.insert(EndpointName::p2p());
    let requests = Family::<RouteLabel, Counter>::default();
    let mut registry = Registry::default();
    registry.register(
        "peerkeep_discovery_requests",
        "HTTP requests served, by route",
        requests.clone(),
    );
    registry.register_collector(Box::new(ViewCollector { view: view.clone() }));
    let state = Api(Arc::new(Inner {
        view,
        cluster: config.cluster,
        expose,
        rotation: AtomicUsize::new(0),
        requests,
        registry,
    }));
    Router::new()
        .route("/v1/clusters", get(clusters))
        .route("/v1/clusters/{cluster}/nodes", get(nodes))
        .route("/v1/clusters/{cluster}/seeds", get(seeds))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[derive(Clone)]
struct Api(Arc<Inner>);

struct Inner {
    view: watch::Receiver<Arc<MembershipSnapshot>>,
    cluster: ClusterName,
    expose: BTreeSet<EndpointName>,
    rotation: AtomicUsize,
    requests: Family<RouteLabel, Counter>,
    registry: Registry,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

impl Inner {
    fn count(&self, route: &'static str) {
        self.requests.get_or_create(&RouteLabel { route }).inc();
    }

    /// The current view of `cluster`, or the error response to send instead.
    fn view_of(&self, cluster: &str) -> Result<Arc<MembershipSnapshot>, ApiError> {
        if cluster != self.cluster.as_str() {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown cluster {cluster:?}; this server answers for {}",
                    self.cluster
                ),
            ));
        }
        let snap = self.view.borrow().clone();
        if !snap.initialized {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the registry has not been read yet".to_owned(),
            ));
        }
        Ok(snap)
    }
}

/// An error answer: a status and a message, sent as `{"error": message}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

/// One node as the API shows it.
#[derive(Serialize)]
struct NodeView<'a> {
    id: &'a NodeId,
    state: NodeState,
    slot: Slot,
    endpoints: BTreeMap<&'a EndpointName, Endpoint>,
}

impl<'a> NodeView<'a> {
    fn new(record: &'a NodeRecord, expose: &BTreeSet<EndpointName>) -> Self {
        Self {
            id: &record.id,
            state: record.state,
            slot: record.slot,
            endpoints: record
                .endpoints
                .iter()
                .filter(|(name, _)| expose.contains(*name))
                .map(|(name, ep)| (name, *ep))
                .collect(),
        }
    }
}

async fn clusters(State(api): State<Api>) -> Response {
    api.0.count("clusters");
    axum::Json(json!({ "clusters": [api.0.cluster] })).into_response()
}

#[derive(Deserialize)]
struct NodesQuery {
    state: Option<String>,
}

async fn nodes(
    State(api): State<Api>,
    Path(cluster): Path<String>,
    Query(q): Query<NodesQuery>,
) -> Result<Response, ApiError> {
    api.0.count("nodes");
    let state = q
        .state
        .as_deref()
        .map(str::parse::<NodeState>)
        .transpose()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let snap = api.0.view_of(&cluster)?;
    let nodes: Vec<NodeView<'_>> = snap
        .records
        .values()
        .filter(|r| state.is_none_or(|s| r.state == s))
        .map(|r| NodeView::new(r, &api.0.expose))
        .collect();
    Ok(axum::Json(json!({
        "cluster": api.0.cluster,
        "revision": snap.revision,
        "stale": snap.is_stale(),
        "nodes": nodes,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct SeedsQuery {
    n: Option<usize>,
}

async fn seeds(
    State(api): State<Api>,
    Path(cluster): Path<String>,
    Query(q): Query<SeedsQuery>,
) -> Result<Response, ApiError> {
    api.0.count("seeds");
    let n = q.n.unwrap_or(DEFAULT_SEEDS);
    if !(1..=MAX_SEEDS).contains(&n) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("n must be between 1 and {MAX_SEEDS}"),
        ));
    }
    let snap = api.0.view_of(&cluster)?;
    let all: Vec<Endpoint> = snap
        .in_state(NodeState::Ready)
        .filter_map(NodeRecord::p2p)
        .collect();
    let start = api.0.rotation.fetch_add(1, Ordering::Relaxed);
    let picked = rotate(&all, start, n);
    Ok(axum::Json(json!({
        "cluster": api.0.cluster,
        "revision": snap.revision,
        "stale": snap.is_stale(),
        "seeds": picked,
    }))
    .into_response())
}

/// Up to `n` items of `all`, starting at `start` (modulo its length) and wrapping around.
fn rotate<T: Copy>(all: &[T], start: usize, n: usize) -> Vec<T> {
    if all.is_empty() {
        return Vec::new();
    }
    let start = start % all.len();
    all.iter()
        .cycle()
        .skip(start)
        .take(n.min(all.len()))
        .copied()
        .collect()
}

async fn healthz(State(api): State<Api>) -> Response {
    api.0.count("healthz");
    let snap = api.0.view.borrow().clone();
    if !snap.initialized {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "registry not read yet\n".to_owned(),
        )
            .into_response();
    }
    match snap.stale_for() {
        Some(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stale: etcd unreachable for {}s, serving revision {}\n",
                age.as_secs(),
                snap.revision
            ),
        )
            .into_response(),
        None => (StatusCode::OK, format!("ok revision {}\n", snap.revision)).into_response(),
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    api.0.count("metrics");
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &api.0.registry) {
        return ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Reads the view's numbers at scrape time, so they can never disagree with what is served.
#[derive(Debug)]
struct ViewCollector {
    view: watch::Receiver<Arc<MembershipSnapshot>>,
}

impl Collector for ViewCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.view.borrow().clone();
        let stale_seconds = snap.stale_for().map_or(0.0, |d| d.as_secs_f64());
        let revision = ConstGauge::new(snap.revision);
        revision.encode(encoder.encode_descriptor(
            "peerkeep_discovery_view_revision",
            "etcd revision of the served view",
            None,
            revision.metric_type(),
        )?)?;
        let stale = ConstGauge::new(stale_seconds);
        stale.encode(encoder.encode_descriptor(
            "peerkeep_discovery_view_stale_seconds",
            "How long the served view has been stale (0 while the watch is healthy)",
            None,
            stale.metric_type(),
        )?)?;
        let invalid = ConstCounter::new(snap.invalid_total);
        invalid.encode(encoder.encode_descriptor(
            "peerkeep_discovery_invalid_records",
            "Invalid records and control keys skipped, counted once per key and revision",
            None,
            invalid.metric_type(),
        )?)?;
        let nodes = ConstGauge::new(i64::try_from(snap.records.len()).unwrap_or(i64::MAX));
        nodes.encode(encoder.encode_descriptor(
            "peerkeep_discovery_nodes",
            "Valid node records in the served view",
            None,
            nodes.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::rotate;

    #[test]
    fn rotation_wraps_and_caps() {
        let all = [1, 2, 3];
        assert_eq!(rotate(&all, 0, 2), [1, 2]);
        assert_eq!(rotate(&all, 2, 2), [3, 1]);
        assert_eq!(rotate(&all, 4, 5), [2, 3, 1]);
        assert!(rotate::<u8>(&[], 1, 2).is_empty());
    }
}
