//! The objects every report is computed from, fetched once.

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use wirekube_crds::{PeerConnection, PeerEntry, WireKubeMesh, WireKubePeer};

/// Names of the installed objects the plugin looks for (as `config/default` installs them).
pub const OPERATOR_DEPLOYMENT: &str = "wirekube-operator";
pub const AGENT_DAEMONSET: &str = "wirekube-agent";
/// The operator's leader-election Lease (`operator/src/leader.rs`).
pub const OPERATOR_LEASE: &str = "wirekube-operator";
pub const CRD_NAMES: [&str; 2] = ["wirekubemeshes.wirekube.io", "wirekubepeers.wirekube.io"];

/// Everything read from the API for one invocation. `None`/empty means "not found" (or not
/// readable with these credentials); the reports say so instead of failing.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Namespace of the install (operator, agents, Lease).
    pub namespace: String,
    pub mesh: Option<WireKubeMesh>,
    /// Peers of `mesh`, sorted by name.
    pub peers: Vec<WireKubePeer>,
    pub nodes: Vec<Node>,
    /// The two WireKube CRDs, when readable.
    pub crds: Vec<CustomResourceDefinition>,
    /// False when the CRDs could not be read (RBAC): doctor then cannot judge them.
    pub crds_readable: bool,
    pub lease: Option<Lease>,
    pub operator: Option<Deployment>,
    pub agents: Option<DaemonSet>,
    /// When the snapshot was taken (this machine's clock).
    pub taken_at: Timestamp,
}

impl Snapshot {
    pub fn mesh_name(&self) -> String {
        self.mesh
            .as_ref()
            .and_then(|m| m.metadata.name.clone())
            .unwrap_or_else(|| "default".into())
    }

    /// Node names of the mesh, sorted.
    pub fn node_names(&self) -> Vec<String> {
        self.peers.iter().map(peer_name).collect()
    }

    pub fn peer(&self, name: &str) -> Option<&WireKubePeer> {
        self.peers.iter().find(|p| peer_name(p) == name)
    }

    /// What `from`'s spec plans toward `to`.
    pub fn planned(&self, from: &str, to: &str) -> Option<&PeerEntry> {
        self.peer(from)?.spec.peers.iter().find(|e| e.name == to)
    }

    /// What `from`'s agent reports toward `to`.
    pub fn connection(&self, from: &str, to: &str) -> Option<&PeerConnection> {
        self.peer(from)?
            .status
            .as_ref()?
            .connections
            .iter()
            .find(|c| c.name == to)
    }

    /// The quarantine message the operator annotated `name`'s peer with, if any.
    pub fn quarantine(&self, name: &str) -> Option<&str> {
        self.peer(name)?
            .metadata
            .annotations
            .as_ref()?
            .get(wirekube_crds::QUARANTINE_ANNOTATION)
            .map(String::as_str)
    }
}

pub fn peer_name(p: &WireKubePeer) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// A condition of a peer's status by type.
pub fn peer_condition<'a>(p: &'a WireKubePeer, type_: &str) -> Option<&'a Condition> {
    condition(&p.status.as_ref()?.conditions, type_)
}

pub fn mesh_condition<'a>(m: &'a WireKubeMesh, type_: &str) -> Option<&'a Condition> {
    condition(&m.status.as_ref()?.conditions, type_)
}

pub fn condition<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// True / False / None (missing or Unknown).
pub fn is_true(c: Option<&Condition>) -> Option<bool> {
    match c.map(|c| c.status.as_str()) {
        Some("True") => Some(true),
        Some("False") => Some(false),
        _ => None,
    }
}

/// Seconds from `then` to `now` (negative when `then` is in the future).
pub fn age_seconds(now: Timestamp, then: Timestamp) -> i64 {
    now.as_second() - then.as_second()
}

/// `12s`, `4m`, `3h`, `2d`: short enough for a table cell.
pub fn human_age(secs: i64) -> String {
    if secs < 0 {
        return format!("in {}", human_age(-secs));
    }
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_short() {
        for (s, want) in [
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (7199, "119m"),
            (7200, "2h"),
            (200_000, "2d"),
            (-30, "in 30s"),
        ] {
            assert_eq!(human_age(s), want, "{s}");
        }
    }
}
