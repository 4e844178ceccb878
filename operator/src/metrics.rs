//! Prometheus metrics (one registry per operator instance, so tests can run several).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use wirekube_crds::PathSummary;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MeshLabel {
    pub mesh: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    pub mesh: String,
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabel {
    pub kind: String,
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteFailureLabel {
    pub kind: String,
    pub reason: String,
}

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub reconciles: Counter,
    pub failures: Family<ReasonLabel, Counter>,
    pub duration: Histogram,
    pub nodes: Family<MeshLabel, Gauge>,
    pub pairs: Family<PathLabel, Gauge>,
    pub writes: Family<WriteLabel, Counter>,
    /// Writes the API server refused or that failed; the reconcile wrote the others.
    pub write_failures: Family<WriteFailureLabel, Counter>,
    /// Nodes left out of the mesh for a duplicate or malformed public key.
    pub quarantined: Family<MeshLabel, Gauge>,
    /// Peer spec writes that only record endpoints in use, waiting (`crate::deferral`).
    pub records_held: Family<MeshLabel, Gauge>,
    /// Peer spec updates waiting for the rest of a mass start's keys (`crate::joining`).
    pub held_for_keys: Family<MeshLabel, Gauge>,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("wirekube_operator");
        let reconciles = Counter::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let nodes = Family::<MeshLabel, Gauge>::default();
        let pairs = Family::<PathLabel, Gauge>::default();
        let writes = Family::<WriteLabel, Counter>::default();
        let write_failures = Family::<WriteFailureLabel, Counter>::default();
        let quarantined = Family::<MeshLabel, Gauge>::default();
        let records_held = Family::<MeshLabel, Gauge>::default();
        let held_for_keys = Family::<MeshLabel, Gauge>::default();
        let leader = Gauge::default();
        r.register(
            "api_write_failures",
            "API writes that failed, by kind and reason (the other writes of the pass went on)",
            write_failures.clone(),
        );
        r.register(
            "mesh_quarantined_nodes",
            "Nodes left out of the mesh for a duplicate or malformed public key",
            quarantined.clone(),
        );
        r.register(
            "peer_writes_held",
            "Peer spec writes waiting because they only record endpoints the node already uses",
            records_held.clone(),
        );
        r.register(
            "peer_writes_held_for_keys",
            "Peer spec updates waiting (at most 2 s) for the rest of a mass start's keys",
            held_for_keys.clone(),
        );
        r.register("reconciles", "Mesh reconciles run", reconciles.clone());
        r.register(
            "reconcile_failures",
            "Failed reconciles by reason",
            failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of one mesh reconcile",
            duration.clone(),
        );
        r.register("mesh_nodes", "Selected nodes per mesh", nodes.clone());
        r.register(
            "mesh_pairs",
            "Node pairs per mesh by planned path",
            pairs.clone(),
        );
        r.register("api_writes", "API writes by kind and verb", writes.clone());
        r.register(
            "is_leader",
            "1 while this replica holds the lease",
            leader.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            reconciles,
            failures,
            duration,
            nodes,
            pairs,
            writes,
            write_failures,
            quarantined,
            records_held,
            held_for_keys,
            leader,
        }
    }
}

impl Metrics {
    pub fn failure(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn write(&self, kind: &str, verb: &str) {
        self.writes
            .get_or_create(&WriteLabel {
                kind: kind.into(),
                verb: verb.into(),
            })
            .inc();
    }

    pub fn write_failure(&self, kind: &str, reason: &str) {
        self.write_failures
            .get_or_create(&WriteFailureLabel {
                kind: kind.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Total API writes so far (all kinds and verbs).
    pub fn total_writes(&self) -> u64 {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text.lines()
            .filter(|l| l.starts_with("wirekube_operator_api_writes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    pub fn mesh(&self, mesh: &str, nodes: u32, paths: &PathSummary) {
        self.nodes
            .get_or_create(&MeshLabel { mesh: mesh.into() })
            .set(nodes.into());
        for (path, n) in [
            ("direct", paths.direct),
            ("relay", paths.relay),
            ("down", paths.down),
        ] {
            self.pairs
                .get_or_create(&PathLabel {
                    mesh: mesh.into(),
                    path: path.into(),
                })
                .set(n.into());
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_counts_writes() {
        let m = Metrics::default();
        m.reconciles.inc();
        m.failure("conflict");
        m.write("WireKubePeer", "apply");
        m.write("WireKubePeer", "apply");
        m.write("Secret", "create");
        m.mesh(
            "default",
            3,
            &PathSummary {
                direct: 2,
                relay: 1,
                down: 0,
            },
        );
        m.duration.observe(0.01);
        let t = m.encode();
        assert!(t.contains("wirekube_operator_reconciles_total 1"), "{t}");
        assert!(t.contains("wirekube_operator_reconcile_failures_total{reason=\"conflict\"} 1"));
        assert!(t.contains("wirekube_operator_mesh_pairs{mesh=\"default\",path=\"relay\"} 1"));
        assert!(t.contains("wirekube_operator_reconcile_duration_seconds_bucket"));
        assert_eq!(m.total_writes(), 3);
    }
}
