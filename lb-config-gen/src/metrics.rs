//! Prometheus metrics of the generator (`/metrics`). Names follow
//! `peerkeep_lb_<noun>_<unit>[_total]`; label sets are bounded (apply path, service name).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a change was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PathLabel {
    /// `runtime` or `reload`.
    pub path: &'static str,
}

/// The runtime API path label.
pub const RUNTIME: PathLabel = PathLabel { path: "runtime" };
/// The reload path label.
pub const RELOAD: PathLabel = PathLabel { path: "reload" };

/// A service's backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendLabel {
    /// The service name.
    pub backend: String,
}

/// Every metric, registered once.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Successful applies by path.
    pub applies: Family<PathLabel, Counter>,
    /// Failed applies by path (rejected by `haproxy -c`, refused commands, unconfirmed reloads).
    pub apply_failures: Family<PathLabel, Counter>,
    /// Time to build and render the desired config.
    pub render_seconds: Histogram,
    /// Time to apply, by path.
    pub apply_seconds: Family<PathLabel, Histogram>,
    /// The etcd revision of the view last applied.
    pub view_revision: Gauge,
    /// Seconds the view has been stale (0 while the watch is healthy).
    pub view_stale_seconds: Gauge,
    /// Servers in each service's backend.
    pub servers: Family<BackendLabel, Gauge>,
    /// Ready nodes left out of a backend (missing endpoint, contested slot).
    pub skipped_nodes: Family<BackendLabel, Gauge>,
    /// Configuration files refused on SIGHUP.
    pub config_rejected: Counter,
    /// Records in etcd the registry rejected (invalid, or refused by the address policy).
    pub invalid_records: Gauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("peerkeep_lb");
        let applies = Family::<PathLabel, Counter>::default();
        let apply_failures = Family::<PathLabel, Counter>::default();
        let render_seconds = Histogram::new(exponential_buckets(0.0005, 4.0, 9));
        let apply_seconds = Family::<PathLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 4.0, 9))
        });
        let view_revision = Gauge::default();
        let view_stale_seconds = Gauge::default();
        let servers = Family::<BackendLabel, Gauge>::default();
        let skipped_nodes = Family::<BackendLabel, Gauge>::default();
        let config_rejected = Counter::default();
        let invalid_records = Gauge::default();
        registry.register(
            "applies",
            "Changes applied to HAProxy, by path",
            applies.clone(),
        );
        registry.register(
            "apply_failures",
            "Changes that could not be applied (the running config was kept)",
            apply_failures.clone(),
        );
        registry.register(
            "render_duration_seconds",
            "Time to build the model and render the configuration",
            render_seconds.clone(),
        );
        registry.register(
            "apply_duration_seconds",
            "Time to apply a change, by path",
            apply_seconds.clone(),
        );
        registry.register(
            "view_revision",
            "etcd revision of the membership view last applied",
            view_revision.clone(),
        );
        registry.register(
            "view_stale_seconds",
            "Seconds since the etcd watch broke (0 while healthy)",
            view_stale_seconds.clone(),
        );
        registry.register(
            "servers",
            "Servers in each service backend",
            servers.clone(),
        );
        registry.register(
            "skipped_nodes",
            "Ready nodes left out of a backend (missing endpoint or contested slot)",
            skipped_nodes.clone(),
        );
        registry.register(
            "config_file_rejected",
            "Configuration files refused on SIGHUP",
            config_rejected.clone(),
        );
        registry.register(
            "registry_invalid_records",
            "Records in etcd that were rejected (invalid or refused by the address policy)",
            invalid_records.clone(),
        );
        // Both paths are always exported, so alerts on them work before the first event.
        for label in [RUNTIME, RELOAD] {
            let _ = applies.get_or_create(&label);
            let _ = apply_failures.get_or_create(&label);
            let _ = apply_seconds.get_or_create(&label);
        }
        Self {
            registry,
            applies,
            apply_failures,
            render_seconds,
            apply_seconds,
            view_revision,
            view_stale_seconds,
            servers,
            skipped_nodes,
            config_rejected,
            invalid_records,
        }
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String only fails if a metric's own encoder fails, which these don't.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
