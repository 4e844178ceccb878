//! The one place the controller calls the PathPlanner (`wirekube-planner`).
//!
//! The controller builds a [`PlanRequest`] from what it observed and gets a [`PlanOutcome`]
//! back: the specs it may write, and the planner's findings as [`MeshIssue`]s for the mesh
//! status.

use std::collections::BTreeMap;

use wirekube_crds::{PathSummary, WireKubeMeshSpec, WireKubePeerSpec, WireKubePeerStatus};

use wirekube_planner::PlannerInput;

use crate::nodes::ClusterNode;

pub use wirekube_planner::KeyProblem;

/// Everything the planner needs, borrowed from the controller's observations.
#[derive(Debug)]
pub struct PlanRequest<'a> {
    pub mesh_name: &'a str,
    pub spec: &'a WireKubeMeshSpec,
    /// Published relay endpoints (`host:port`), best first.
    pub relay_endpoints: &'a [String],
    /// Secret (operator namespace) holding the relay token, if there is a relay.
    pub relay_token_secret: Option<&'a str>,
    /// The relay's STUN responder addresses (used when the mesh lists no STUN servers).
    pub relay_stun_servers: &'a [String],
    /// Selected nodes, sorted by name.
    pub nodes: &'a [ClusterNode],
    /// Agent-reported status per node name.
    pub statuses: &'a BTreeMap<String, WireKubePeerStatus>,
    /// The specs currently stored, per node name (for stable mesh IPs).
    pub previous: &'a BTreeMap<String, WireKubePeerSpec>,
}

/// A problem with the mesh the user should see (the planner's issues, a node claimed by
/// another mesh): the Ready condition's reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshIssue {
    /// PascalCase condition reason, e.g. `MeshCIDRFull`.
    pub reason: String,
    pub message: String,
}

/// What the planner decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanOutcome {
    /// Desired spec per node name (nodes that could not be planned are absent).
    pub specs: BTreeMap<String, WireKubePeerSpec>,
    /// Pair counts by planned path (each unordered pair once).
    pub summary: PathSummary,
    /// Nodes without a public key yet, sorted.
    pub pending: Vec<String>,
    pub issues: Vec<MeshIssue>,
    /// Duplicate and malformed public keys; the nodes they name are quarantined (no spec lists
    /// them, theirs lists nobody).
    pub key_problems: Vec<KeyProblem>,
    /// Prefixes of `spec.routing` left out, each with its reason (a sentence).
    pub dropped_routes: Vec<String>,
    /// How many prefixes besides the mesh IPs are carried.
    pub carried_routes: usize,
}

/// Runs the planner. `Err` means planning could not start at all (the stored specs must stay
/// untouched); the issue says why.
pub fn plan(req: &PlanRequest<'_>) -> Result<PlanOutcome, MeshIssue> {
    let input = PlannerInput {
        mesh_name: req.mesh_name.to_string(),
        mesh: req.spec.clone(),
        relay_endpoints: req.relay_endpoints.to_vec(),
        relay_token_secret: req.relay_token_secret.map(str::to_string),
        relay_stun_servers: req.relay_stun_servers.to_vec(),
        nodes: req.nodes.iter().map(|n| n.info.clone()).collect(),
        statuses: req.statuses.clone(),
        previous: req.previous.clone(),
    };
    let p = wirekube_planner::plan(&input).map_err(|e| MeshIssue {
        reason: "PlanningFailed".into(),
        message: e.to_string(),
    })?;
    Ok(PlanOutcome {
        specs: p.to_specs(),
        summary: p.summary,
        pending: p.pending_nodes,
        issues: p
            .issues
            .iter()
            .map(|i| MeshIssue {
                reason: i.reason().into(),
                message: i.to_string(),
            })
            .collect(),
        dropped_routes: p.dropped_routes.iter().map(ToString::to_string).collect(),
        carried_routes: p.carried_routes,
        key_problems: p.key_problems,
    })
}

impl PlanOutcome {
    /// Why `node` is quarantined (the text of its peer's quarantine annotation), if it is.
    pub fn quarantine_note(&self, node: &str) -> Option<String> {
        self.key_problems
            .iter()
            .find(|p| p.nodes().iter().any(|n| n == node))
            .map(ToString::to_string)
    }

    /// How many nodes are quarantined.
    pub fn quarantined(&self) -> usize {
        self.key_problems.iter().map(|p| p.nodes().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_objects::{mesh, node, peer_status};
    use wirekube_crds::NatType;
    use wirekube_planner::fixtures::test_key;

    fn facts(name: &str, ip: &str) -> ClusterNode {
        ClusterNode::from_node(&node(name, &[("Hostname", name), ("InternalIP", ip)], &[]))
    }

    #[test]
    fn adapts_plan_and_keeps_previous_ips() {
        let m = mesh("m", serde_json::json!({"meshCIDR": "10.1.0.0/29"}));
        let nodes = [facts("a", "10.0.0.1"), facts("b", "10.0.0.2")];
        let statuses = BTreeMap::from([(
            "a".to_string(),
            peer_status(
                &test_key("a"),
                NatType::FullCone,
                "10.0.0.1:51820",
                Some("1.1.1.1:1"),
            ),
        )]);
        let previous = BTreeMap::from([(
            "b".to_string(),
            WireKubePeerSpec {
                mesh_ip: "10.1.0.5".into(),
                mesh_cidr: "10.1.0.0/29".into(),
                ..WireKubePeerSpec::default()
            },
        )]);
        let eps = vec!["203.0.113.9:3478".to_string()];
        let out = plan(&PlanRequest {
            mesh_name: "m",
            spec: &m.spec,
            relay_endpoints: &eps,
            relay_token_secret: Some("wirekube-relay-m"),
            relay_stun_servers: &[],
            nodes: &nodes,
            statuses: &statuses,
            previous: &previous,
        })
        .unwrap();
        assert_eq!(out.specs["b"].mesh_ip, "10.1.0.5");
        assert_eq!(out.specs["a"].relay_endpoints, eps);
        assert_eq!(out.pending, ["b"]);
        assert_eq!(
            out.specs["a"].relay_token_secret.as_deref(),
            Some("wirekube-relay-m")
        );
    }

    #[test]
    fn unusable_cidr_is_an_error() {
        let mut m = mesh("m", serde_json::json!({}));
        m.spec.mesh_cidr = "nonsense".into();
        let e = plan(&PlanRequest {
            mesh_name: "m",
            spec: &m.spec,
            relay_endpoints: &[],
            relay_token_secret: None,
            relay_stun_servers: &[],
            nodes: &[],
            statuses: &BTreeMap::new(),
            previous: &BTreeMap::new(),
        })
        .unwrap_err();
        assert_eq!(e.reason, "PlanningFailed");
    }
}
