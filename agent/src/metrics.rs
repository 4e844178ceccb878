//! Prometheus metrics and the `/metrics` + `/healthz` HTTP endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
use wirekube_crds::{ActualPath, WireKubePeerStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

/// The label of an actual path: `direct`, `relay`, `connecting`, `down`.
pub fn path_label(p: ActualPath) -> &'static str {
    match p {
        ActualPath::Direct => "direct",
        ActualPath::Relay => "relay",
        ActualPath::Connecting => "connecting",
        ActualPath::Down => "down",
    }
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
    /// Status writes dropped in flight for a newer path (`status::replaces_in_flight`).
    pub status_patches_replaced: Counter,
    pub discovery_runs: Counter,
    /// Peers on the relay although planned direct (`fallback` in the status).
    pub fallbacks: Gauge,
    /// Seconds since the last WireGuard handshake, per peer that had one.
    pub handshake_age: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    /// Unix time of the last status this agent built (every reconcile pass).
    pub last_status: Gauge,
    /// Each peer's path at the last status, to count transitions.
    last_paths: Mutex<HashMap<String, ActualPath>>,
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
            status_patches_replaced: Counter::default(),
            discovery_runs: Counter::default(),
            fallbacks: Gauge::default(),
            handshake_age: Family::default(),
            last_status: Gauge::default(),
            last_paths: Mutex::new(HashMap::new()),
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
            "status_patches_replaced",
            "Status applies dropped in flight for a newer path",
            m.status_patches_replaced.clone(),
        );
        registry.register(
            "discovery_runs",
            "STUN discovery rounds",
            m.discovery_runs.clone(),
        );
        registry.register(
            "fallback_peers",
            "Peers on the relay although their planned path is direct",
            m.fallbacks.clone(),
        );
        registry.register(
            "peer_handshake_age_seconds",
            "Seconds since the last WireGuard handshake with each peer",
            m.handshake_age.clone(),
        );
        registry.register(
            "last_status_timestamp_seconds",
            "Unix time of the last status this agent built",
            m.last_status.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// Exports what a status says: peers by path, fallbacks, handshake ages, path transitions
    /// (a peer whose path differs from the previous status's enters the new one).
    pub fn observe_status(&self, st: &WireKubePeerStatus, now: SystemTime) {
        let mut counts = [0i64; 4];
        for c in &st.connections {
            counts[c.path as usize] += 1;
        }
        for p in [
            ActualPath::Direct,
            ActualPath::Relay,
            ActualPath::Connecting,
            ActualPath::Down,
        ] {
            self.peers
                .get_or_create(&PathLabel {
                    path: path_label(p).into(),
                })
                .set(counts[p as usize]);
        }
        self.fallbacks
            .set(st.connections.iter().filter(|c| c.fallback).count() as i64);
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.handshake_age.clear();
        for c in &st.connections {
            if let Some(h) = &c.last_handshake {
                let age_ms = now_ms.saturating_sub(h.0.as_millisecond()).max(0);
                self.handshake_age
                    .get_or_create(&PeerLabel {
                        peer: c.name.clone(),
                    })
                    .set(age_ms as f64 / 1000.0);
            }
        }
        let mut last = self.last_paths.lock().unwrap_or_else(|e| e.into_inner());
        for c in &st.connections {
            if last
                .insert(c.name.clone(), c.path)
                .is_some_and(|old| old != c.path)
            {
                self.transitions
                    .get_or_create(&PathLabel {
                        path: path_label(c.path).into(),
                    })
                    .inc();
            }
        }
        let names: std::collections::HashSet<&str> =
            st.connections.iter().map(|c| c.name.as_str()).collect();
        last.retain(|n, _| names.contains(n.as_str()));
        self.last_status.set(now_ms / 1000);
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use wirekube_crds::PeerConnection;

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

    fn conn(name: &str, path: ActualPath, fallback: bool, hs: Option<i64>) -> PeerConnection {
        PeerConnection {
            name: name.into(),
            path,
            fallback,
            last_handshake: hs
                .map(|s| Time(k8s_openapi::jiff::Timestamp::from_second(s).expect("ts"))),
            ..Default::default()
        }
    }

    #[test]
    fn status_becomes_paths_fallbacks_ages_and_transitions() {
        let m = Metrics::new();
        let now = UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let st = |conns| WireKubePeerStatus {
            connections: conns,
            ..Default::default()
        };
        m.observe_status(
            &st(vec![
                conn("a", ActualPath::Direct, false, Some(990)),
                conn("b", ActualPath::Relay, true, Some(880)),
                conn("c", ActualPath::Down, false, None),
            ]),
            now,
        );
        let text = m.encode();
        for want in [
            "wirekube_agent_peers{path=\"direct\"} 1",
            "wirekube_agent_peers{path=\"relay\"} 1",
            "wirekube_agent_peers{path=\"connecting\"} 0",
            "wirekube_agent_peers{path=\"down\"} 1",
            "wirekube_agent_fallback_peers 1",
            "wirekube_agent_peer_handshake_age_seconds{peer=\"a\"} 10.0",
            "wirekube_agent_peer_handshake_age_seconds{peer=\"b\"} 120.0",
            "wirekube_agent_last_status_timestamp_seconds 1000",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        assert!(
            !text.contains("peer=\"c\""),
            "no handshake, no age:\n{text}"
        );
        assert!(
            !text.contains("wirekube_agent_path_transitions_total{"),
            "{text}"
        );
        // b comes back direct, a goes down, c disappears from the spec.
        m.observe_status(
            &st(vec![
                conn("a", ActualPath::Down, false, Some(990)),
                conn("b", ActualPath::Direct, false, Some(1_000)),
            ]),
            now,
        );
        let text = m.encode();
        for want in [
            "wirekube_agent_path_transitions_total{path=\"direct\"} 1",
            "wirekube_agent_path_transitions_total{path=\"down\"} 1",
            "wirekube_agent_fallback_peers 0",
            "wirekube_agent_peers{path=\"relay\"} 0",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }
}
