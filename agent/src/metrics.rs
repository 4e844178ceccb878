//! Prometheus metrics and the `/metrics` + `/healthz` HTTP endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    pub reconcile_seconds: Histogram,
    pub dataplane_changes: Family<KindLabel, Counter>,
    pub peers: Family<PathLabel, Gauge>,
    pub transitions: Family<PathLabel, Counter>,
    pub status_patches: Counter,
    pub status_patch_errors: Counter,
    pub discovery_runs: Counter,
    /// Unix time of the last completed loop iteration, for /healthz.
    last_loop: AtomicU64,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("wirekube_agent");
        let m = Metrics {
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            dataplane_changes: Family::default(),
            peers: Family::default(),
            transitions: Family::default(),
            status_patches: Counter::default(),
            status_patch_errors: Counter::default(),
            discovery_runs: Counter::default(),
            last_loop: AtomicU64::new(now_secs()),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Reconcile passes", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconcile passes that failed",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_seconds",
            "Duration of a reconcile pass",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "dataplane_changes",
            "WireGuard and netlink writes made by reconciles",
            m.dataplane_changes.clone(),
        );
        registry.register("peers", "Peers by actual path", m.peers.clone());
        registry.register(
            "path_transitions",
            "Path changes by the path entered",
            m.transitions.clone(),
        );
        registry.register(
            "status_patches",
            "Status server-side applies",
            m.status_patches.clone(),
        );
        registry.register(
            "status_patch_errors",
            "Failed status applies",
            m.status_patch_errors.clone(),
        );
        registry.register(
            "discovery_runs",
            "STUN discovery rounds",
            m.discovery_runs.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    pub fn tick(&self) {
        self.last_loop.store(now_secs(), Ordering::Relaxed);
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Healthy when the main loop ran recently (it ticks at least every stats interval).
    fn healthy(&self) -> bool {
        now_secs().saturating_sub(self.last_loop.load(Ordering::Relaxed)) < 30
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn metrics(
    State(m): State<Arc<Metrics>>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn healthz(State(m): State<Arc<Metrics>>) -> (StatusCode, &'static str) {
    if m.healthy() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "main loop stalled\n")
    }
}

pub fn router(m: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(m)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    m: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(l, router(m))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registered_metrics() {
        let m = Metrics::new();
        m.reconciles.inc();
        m.peers
            .get_or_create(&PathLabel {
                path: "direct".into(),
            })
            .set(3);
        let text = m.encode();
        assert!(text.contains("wirekube_agent_reconciles_total 1"), "{text}");
        assert!(
            text.contains("wirekube_agent_peers{path=\"direct\"} 3"),
            "{text}"
        );
        assert!(m.healthy());
    }
}
