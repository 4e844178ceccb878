//! Writing one pass's peers. Every write stands alone: one the API server refuses (an
//! admission policy, a quota, an object grown too large, a conflict) never keeps the others
//! from being written. Failures are collected for the caller to report (log, metric, the
//! mesh's `PeersWritten` condition) and retry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use kube::ResourceExt;
use tracing::{Instrument, info_span, warn};
use wirekube_crds::WireKubePeer;

use crate::apply::Writer;
use crate::diff::{self, DesiredPeer};
use crate::error::Error;
use crate::nodes::NodeFacts;
use crate::plan::{PlanIssue, PlanOutcome};

/// Peer writes in flight at once during one reconcile.
const PARALLEL_WRITES: usize = 16;

/// One write that failed.
#[derive(Debug)]
pub struct PeerFailure {
    pub node: String,
    pub error: Error,
}

/// What one pass wrote.
#[derive(Debug, Default)]
pub struct PassWrites {
    /// Peers applied (attempted), including failed ones.
    pub applied: usize,
    /// Peers deleted (attempted): their node left the mesh.
    pub removed: Vec<String>,
    /// Failed writes, sorted by node.
    pub failures: Vec<PeerFailure>,
}

impl PassWrites {
    /// `(node, error)` texts for the `PeersWritten` condition.
    pub fn failure_texts(&self) -> Vec<(String, String)> {
        self.failures
            .iter()
            .map(|f| (f.node.clone(), f.error.to_string()))
            .collect()
    }

    /// The pass's outcome as one error, if any write failed; a lost leadership comes first,
    /// as is (nothing more may be written).
    pub fn into_error(mut self) -> Option<Error> {
        if let Some(i) = (self.failures.iter()).position(|f| matches!(f.error, Error::NotLeader(_)))
        {
            return Some(self.failures.swap_remove(i).error);
        }
        let nodes = (self.failures.iter().map(|f| f.node.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let failed = self.failures.len();
        let attempted = self.applied + self.removed.len();
        let first = self.failures.into_iter().next()?;
        Some(Error::PeerWrites {
            failed,
            attempted,
            nodes,
            first: Box::new(first.error),
        })
    }
}

/// Applies every planned peer that differs from the stored one and deletes this mesh's peers
/// whose node left. A node already in another mesh is skipped with an issue on `outcome`.
pub async fn write_peers(
    w: &Writer,
    mesh: &str,
    outcome: &mut PlanOutcome,
    stored: &BTreeMap<String, Arc<WireKubePeer>>,
    nodes: &[NodeFacts],
) -> PassWrites {
    let uids: BTreeMap<&str, &str> = nodes
        .iter()
        .map(|n| (n.name.as_str(), n.uid.as_str()))
        .collect();
    let notes: BTreeMap<&str, String> = outcome
        .specs
        .keys()
        .filter_map(|n| Some((n.as_str(), outcome.quarantine_note(n)?)))
        .collect();
    let mut writes = Vec::new();
    let mut issues = Vec::new();
    for (node, spec) in &outcome.specs {
        let observed = stored.get(node).map(|p| p.as_ref());
        if let Some(other) = observed.and_then(diff::peer_mesh).filter(|m| *m != mesh) {
            issues.push(PlanIssue {
                reason: "NodeInOtherMesh".into(),
                message: format!(
                    "node {node} already belongs to mesh {other}; a node can be in one mesh only"
                ),
            });
            continue;
        }
        let d = DesiredPeer {
            mesh,
            node,
            node_uid: uids.get(node.as_str()).copied().unwrap_or(""),
            spec,
            quarantine: notes.get(node.as_str()).map(String::as_str),
        };
        if diff::needs_write(observed, &d) {
            writes.push((d, observed.and_then(|p| p.resource_version())));
        }
    }
    let mut out = PassWrites {
        applied: writes.len(),
        ..PassWrites::default()
    };
    out.failures = apply_all(w, &writes).await;
    outcome.issues.extend(issues);

    let selected: BTreeSet<&str> = uids.keys().copied().collect();
    out.removed = diff::peers_to_delete(mesh, stored.values().map(|p| p.as_ref()), &selected);
    for name in &out.removed {
        if let Err(error) = w.delete_peer(name).await {
            out.failures.push(PeerFailure {
                node: name.clone(),
                error,
            });
        }
    }
    out.failures.sort_by(|a, b| a.node.cmp(&b.node));
    for f in &out.failures {
        w.metrics
            .write_failure("WireKubePeer", f.error.metric_reason());
        warn!(node = %f.node, error = %f.error, "peer write failed; the other peers are written");
    }
    out
}

/// Applies concurrently (bounded): independent objects, one round trip each otherwise.
async fn apply_all(w: &Writer, writes: &[(DesiredPeer<'_>, Option<String>)]) -> Vec<PeerFailure> {
    // A Vec of `async fn` futures rather than an async closure: the controller's future must
    // stay `Send` for every lifetime, which closures over borrowed specs do not prove.
    let mut pending = Vec::with_capacity(writes.len());
    for (d, rv) in writes {
        pending.push(apply_one(w, d, rv.as_deref()));
    }
    let mut results = futures::stream::iter(pending).buffer_unordered(PARALLEL_WRITES);
    let mut failures = Vec::new();
    while let Some(r) = results.next().await {
        failures.extend(r);
    }
    failures
}

async fn apply_one(w: &Writer, d: &DesiredPeer<'_>, rv: Option<&str>) -> Option<PeerFailure> {
    let span = info_span!("apply_peer", node = %d.node);
    let error = w.apply_peer(d, rv).instrument(span).await.err()?;
    Some(PeerFailure {
        node: d.node.to_owned(),
        error,
    })
}

/// The quarantine notes stored on the mesh's current peers (node → note).
pub fn stored_notes<'a>(
    stored: &'a BTreeMap<String, Arc<WireKubePeer>>,
    nodes: &[NodeFacts],
) -> BTreeMap<&'a str, &'a str> {
    nodes
        .iter()
        .filter_map(|n| {
            let (name, p) = stored.get_key_value(&n.name)?;
            Some((name.as_str(), diff::quarantine_note(p)?))
        })
        .collect()
}
