//! What changed between the stored peers and the plan: which peers to write or delete, and
//! which decisions to announce as events (pure).

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use wirekube_crds::{
    MESH_LABEL, PathReason, PlannedPath, QUARANTINE_ANNOTATION, WireKubePeer, WireKubePeerSpec,
};

use crate::plan::KeyProblem;

/// Join/leave events per reconcile beyond which they are summarised in one event.
pub const MAX_NODE_EVENTS: usize = 20;
/// Pair events per reconcile beyond which they are summarised in one event.
pub const MAX_PAIR_EVENTS: usize = 20;

/// Everything the operator applies to one node's peer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DesiredPeer<'a> {
    pub mesh: &'a str,
    pub node: &'a str,
    pub node_uid: &'a str,
    pub spec: &'a WireKubePeerSpec,
    /// Why the node is quarantined for its key (the annotation's value), if it is.
    pub quarantine: Option<&'a str>,
}

/// Whether the stored peer differs from what the operator would apply: missing, another spec,
/// the mesh label missing, not owned by the node's current uid, or another quarantine note.
pub fn needs_write(observed: Option<&WireKubePeer>, d: &DesiredPeer<'_>) -> bool {
    let Some(p) = observed else { return true };
    p.spec != *d.spec
        || p.labels().get(MESH_LABEL).map(String::as_str) != Some(d.mesh)
        || !p
            .owner_references()
            .iter()
            .any(|o| o.kind == "Node" && o.uid == d.node_uid)
        || p.metadata.deletion_timestamp.is_some()
        || quarantine_note(p) != d.quarantine
}

/// The quarantine note stored on a peer.
pub fn quarantine_note(p: &WireKubePeer) -> Option<&str> {
    p.annotations()
        .get(QUARANTINE_ANNOTATION)
        .map(String::as_str)
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
    /// Nodes newly quarantined for their key; `note` names them all, `first` is the first.
    KeyQuarantined {
        reason: &'static str,
        note: String,
        first: String,
    },
    /// A quarantined node's key is usable again: it is back in every spec.
    KeyQuarantineLifted(String),
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
            Decision::KeyQuarantined { reason, note, .. } => (reason, note.clone()),
            Decision::KeyQuarantineLifted(n) => (
                "PublicKeyAccepted",
                format!("node {n} is back in the mesh: its public key is well-formed and unique"),
            ),
        }
    }

    /// The node whose peer the event is also about (its `related` object). Events of one
    /// reason about one mesh are otherwise merged into one series by the recorder, so two
    /// collisions would show as one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Decision::KeyQuarantined { first, .. } => Some(first),
            Decision::KeyQuarantineLifted(n) => Some(n),
            _ => None,
        }
    }

    /// Whether the event is a warning.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Decision::PairToRelay { .. }
                | Decision::PairsToRelay(_)
                | Decision::KeyQuarantined { .. }
        )
    }
}

/// Quarantine events, from the notes stored on the peers (`stored`: node → note, for the
/// mesh's current nodes) and this pass's key problems: one per problem some of whose nodes do
/// not carry its note yet, and one per node whose note goes away. Deriving them from the
/// stored objects announces each change once, across passes and operator restarts.
pub fn key_decisions(stored: &BTreeMap<&str, &str>, problems: &[KeyProblem]) -> Vec<Decision> {
    let mut out = Vec::new();
    for p in problems {
        let note = p.to_string();
        if p.nodes()
            .iter()
            .any(|n| stored.get(n.as_str()) != Some(&note.as_str()))
        {
            out.push(Decision::KeyQuarantined {
                reason: p.reason(),
                note,
                first: p.nodes().first().cloned().unwrap_or_default(),
            });
        }
    }
    for node in stored.keys() {
        if !problems.iter().any(|p| p.nodes().iter().any(|n| n == node)) {
            out.push(Decision::KeyQuarantineLifted((*node).to_owned()));
        }
    }
    out
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
