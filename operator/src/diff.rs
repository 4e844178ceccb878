//! What changed between the stored peers and the plan: which peers to write or delete, and
//! which decisions to announce as events (pure).

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use wirekube_crds::{MESH_LABEL, PathReason, PlannedPath, WireKubePeer, WireKubePeerSpec};

/// Join/leave events per reconcile beyond which they are summarised in one event.
pub const MAX_NODE_EVENTS: usize = 20;
/// Pair events per reconcile beyond which they are summarised in one event.
pub const MAX_PAIR_EVENTS: usize = 20;

/// Whether the stored peer differs from what the operator would apply: missing, another spec,
/// the mesh label missing, or not owned by the node's current uid.
pub fn needs_write(
    observed: Option<&WireKubePeer>,
    desired: &WireKubePeerSpec,
    mesh: &str,
    node_uid: &str,
) -> bool {
    let Some(p) = observed else { return true };
    p.spec != *desired
        || p.labels().get(MESH_LABEL).map(String::as_str) != Some(mesh)
        || !p
            .owner_references()
            .iter()
            .any(|o| o.kind == "Node" && o.uid == node_uid)
        || p.metadata.deletion_timestamp.is_some()
}

/// The mesh a stored peer belongs to, by its label.
pub fn peer_mesh(p: &WireKubePeer) -> Option<&str> {
    p.labels().get(MESH_LABEL).map(String::as_str)
}

/// Names of this mesh's stored peers whose node is no longer selected.
pub fn peers_to_delete<'a>(
    mesh: &str,
    observed: impl IntoIterator<Item = &'a WireKubePeer>,
    selected: &BTreeSet<&str>,
) -> Vec<String> {
    let mut out: Vec<String> = observed
        .into_iter()
        .filter(|p| peer_mesh(p) == Some(mesh))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .filter(|n| !selected.contains(n.as_str()))
        .collect();
    out.sort();
    out
}

/// A decision worth an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    NodeJoined(String),
    NodeLeft(String),
    /// More nodes joined at once than are announced one by one.
    NodesJoined(usize),
    NodesLeft(usize),
    /// A pair that was planned direct (or down) is now relayed.
    PairToRelay {
        a: String,
        b: String,
        reason: PathReason,
    },
    /// More pairs moved than are announced one by one.
    PairsToRelay(usize),
    RelayEndpointsPublished(Vec<String>),
}

impl Decision {
    /// Event reason (PascalCase) and note.
    pub fn reason_note(&self) -> (&'static str, String) {
        match self {
            Decision::NodeJoined(n) => ("NodeJoined", format!("node {n} joined the mesh")),
            Decision::NodeLeft(n) => (
                "NodeLeft",
                format!("node {n} left the mesh; its peer was deleted"),
            ),
            Decision::NodesJoined(n) => ("NodeJoined", format!("{n} nodes joined the mesh")),
            Decision::NodesLeft(n) => (
                "NodeLeft",
                format!("{n} nodes left the mesh; their peers were deleted"),
            ),
            Decision::PairToRelay { a, b, reason } => (
                "PairRelayed",
                format!("pair {a} <-> {b} moved to the relay: {reason}"),
            ),
            Decision::PairsToRelay(n) => (
                "PairRelayed",
                format!("{n} more pair(s) moved to the relay (see the peers' specs for reasons)"),
            ),
            Decision::RelayEndpointsPublished(e) => (
                "RelayEndpointPublished",
                format!("relay endpoints published: {}", e.join(", ")),
            ),
        }
    }
}

/// Decisions between the stored specs (`prev`) and the planned ones (`desired`).
pub fn decisions(
    prev: &BTreeMap<String, WireKubePeerSpec>,
    desired: &BTreeMap<String, WireKubePeerSpec>,
    removed: &[String],
    prev_endpoints: &[String],
    endpoints: &[String],
) -> Vec<Decision> {
    let mut out = Vec::new();
    if endpoints != prev_endpoints && !endpoints.is_empty() {
        out.push(Decision::RelayEndpointsPublished(endpoints.to_vec()));
    }
    let joined: Vec<&String> = desired.keys().filter(|n| !prev.contains_key(*n)).collect();
    if joined.len() > MAX_NODE_EVENTS {
        out.push(Decision::NodesJoined(joined.len()));
    } else {
        out.extend(joined.into_iter().cloned().map(Decision::NodeJoined));
    }
    if removed.len() > MAX_NODE_EVENTS {
        out.push(Decision::NodesLeft(removed.len()));
    } else {
        out.extend(removed.iter().cloned().map(Decision::NodeLeft));
    }
    let mut moved = 0usize;
    for (a, spec) in desired {
        let Some(before) = prev.get(a) else { continue };
        for e in spec
            .peers
            .iter()
            .filter(|e| *a < e.name && e.path == PlannedPath::Relay)
        {
            let was = before.peers.iter().find(|p| p.name == e.name);
            if was.is_some_and(|w| w.path != PlannedPath::Relay) {
                moved += 1;
                if moved <= MAX_PAIR_EVENTS {
                    out.push(Decision::PairToRelay {
                        a: a.clone(),
                        b: e.name.clone(),
                        reason: e.reason,
                    });
                }
            }
        }
    }
    if moved > MAX_PAIR_EVENTS {
        out.push(Decision::PairsToRelay(moved - MAX_PAIR_EVENTS));
    }
    out
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
