//! Every decision of one mesh reconcile, as pure functions from what was observed to the
//! changes to make. The controller (`controller.rs`) is the thin layer around them:
//!
//! 1. **observe**: the watch caches (nodes, peers, relay pods) and, for the managed relay, one
//!    GET each of its Secret, Deployment and Service ([`RelayObserved`]);
//! 2. **decide**: [`invalid_spec`], [`relay`] (which relay objects to create, apply or
//!    delete), [`relay_outcome`] (what to publish once they are applied), [`mesh`] (the plan,
//!    the peers to write and delete, the events, the status);
//! 3. **apply**: `apply.rs` and `peer_writes.rs`, each write independent;
//! 4. **status**: [`MeshChanges::status`] plus the `PeersWritten` condition, which depends on
//!    how the writes went (`status.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};
use wirekube_crds::{
    NodeCounts, PathSummary, WireKubeMesh, WireKubeMeshStatus, WireKubePeer, WireKubePeerSpec,
    WireKubePeerStatus, validate_mesh,
};

use crate::deferral;
use crate::diff::{self, DesiredPeer};
use crate::error::Result;
use crate::managed_relay::{self, RelayKind};
use crate::nodes::ClusterNode;
use crate::plan::{self, MeshIssue, PlanOutcome, PlanRequest};
use crate::spec_changes;
use crate::status::{self, Cond};

/// A reconcile that stops before anything is planned or written: the status to write (only
/// when it differs from the stored one) and the Warning event that goes with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    pub status: WireKubeMeshStatus,
    pub reason: String,
    pub message: String,
}

/// The spec fails validation: Ready turns False with every problem's field and fix, and
/// nothing else changes (the relay and the peers keep the last good state).
pub fn invalid_spec(mesh: &WireKubeMesh, now: &Time) -> Option<Rejected> {
    let problems = validate_mesh(&mesh.spec).err()?;
    let generation = mesh.metadata.generation.unwrap_or(0);
    Some(Rejected {
        status: status::invalid_status(mesh.status.as_ref(), &problems, generation, now),
        reason: "InvalidSpec".into(),
        message: status::problems_message(&problems),
    })
}

/// What the relay part publishes to the planner and the mesh status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayOutcome {
    /// Published endpoints, best first.
    pub endpoints: Vec<String>,
    /// RelayReady.
    pub cond: Cond,
    /// Secret the peers read the token from.
    pub token_secret: Option<String>,
    /// The relay's STUN responder addresses.
    pub stun: Vec<String>,
}

/// The mesh's relay objects as read from the API server (operator namespace, all named
/// [`managed_relay::relay_name`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RelayObserved {
    pub secret: Option<Secret>,
    pub deployment: Option<Deployment>,
    pub service: Option<Service>,
}

/// A managed relay object kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayObject {
    Deployment,
    Service,
    Secret,
}

/// What to do with the relay objects.
#[derive(Clone, Debug, PartialEq)]
pub enum RelayChanges {
    /// No managed relay (`mode: never`, or an external relay): delete the objects this mesh
    /// owns (never somebody else's, never one already being deleted) and publish `outcome`.
    Remove {
        delete: Vec<RelayObject>,
        outcome: RelayOutcome,
    },
    /// The token Secret exists without a usable token: nothing is applied until the user fixes
    /// or deletes it (the operator never overwrites a Secret).
    Blocked(RelayOutcome),
    /// Run the managed relay: create the token Secret when there is none, then apply the
    /// Deployment and the Service (each skipped when the observed one carries the same desired
    /// hash); what is published follows from the applied objects ([`relay_outcome`]).
    Run {
        create_secret: bool,
        deployment: Box<Deployment>,
        service: Box<Service>,
    },
}

/// The relay part's decision for `mesh`. `namespace` is the operator's; `image_override`
/// replaces `relay.managed.image`.
pub fn relay(
    mesh: &WireKubeMesh,
    observed: &RelayObserved,
    namespace: &str,
    image_override: Option<&str>,
) -> Result<RelayChanges> {
    let name = managed_relay::relay_name(&mesh.name_any());
    match managed_relay::relay_kind(&mesh.spec) {
        RelayKind::Disabled => Ok(RelayChanges::Remove {
            delete: owned_objects(mesh, observed),
            outcome: RelayOutcome {
                endpoints: Vec::new(),
                cond: status::relay_cond(
                    false,
                    "RelayDisabled",
                    "relay.mode is never: no relay is run or published",
                ),
                token_secret: None,
                stun: Vec::new(),
            },
        }),
        RelayKind::External(ep) => {
            let msg = format!(
                "external relay {ep} published; agents read the token from Secret {namespace}/{name}"
            );
            Ok(RelayChanges::Remove {
                delete: owned_objects(mesh, observed),
                outcome: RelayOutcome {
                    stun: managed_relay::external_stun(&ep),
                    endpoints: vec![ep],
                    cond: status::relay_cond(true, "ExternalEndpoint", msg),
                    token_secret: Some(name),
                },
            })
        }
        RelayKind::Managed => {
            let secret = observed.secret.as_ref();
            if secret.is_some() && secret.and_then(managed_relay::existing_token).is_none() {
                let msg = format!(
                    "Secret {namespace}/{name} exists without a non-empty '{}' key; add one or delete the Secret so the operator generates it",
                    managed_relay::TOKEN_KEY
                );
                return Ok(RelayChanges::Blocked(RelayOutcome {
                    endpoints: Vec::new(),
                    cond: status::relay_cond(false, "TokenSecretInvalid", msg),
                    token_secret: Some(name),
                    stun: Vec::new(),
                }));
            }
            Ok(RelayChanges::Run {
                create_secret: secret.is_none(),
                deployment: Box::new(managed_relay::desired_deployment(
                    mesh,
                    namespace,
                    image_override,
                )?),
                service: Box::new(managed_relay::desired_service(mesh, namespace)?),
            })
        }
    }
}

/// The observed relay objects this mesh owns and that are not being deleted, in deletion
/// order (Deployment, Service, Secret).
fn owned_objects(mesh: &WireKubeMesh, observed: &RelayObserved) -> Vec<RelayObject> {
    let deletable = |meta: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>| {
        meta.is_some_and(|m| managed_relay::owned_by(m, mesh) && m.deletion_timestamp.is_none())
    };
    let mut out = Vec::new();
    if deletable(observed.deployment.as_ref().map(Resource::meta)) {
        out.push(RelayObject::Deployment);
    }
    if deletable(observed.service.as_ref().map(Resource::meta)) {
        out.push(RelayObject::Service);
    }
    if deletable(observed.secret.as_ref().map(Resource::meta)) {
        out.push(RelayObject::Secret);
    }
    out
}

/// What a managed relay publishes, from the Deployment and Service as applied and the nodes
/// running its pods (`hosts`, NodePort only, in publishing order).
pub fn relay_outcome(
    mesh: &WireKubeMesh,
    deployment: &Deployment,
    service: &Service,
    hosts: &[ClusterNode],
) -> RelayOutcome {
    let m = &mesh.spec.relay.managed;
    let exposure = managed_relay::exposure(Some(service), m.port, hosts);
    let (endpoints, cond) = managed_relay::managed_outcome(
        exposure,
        managed_relay::available_replicas(Some(deployment)),
        m.replicas,
    );
    RelayOutcome {
        endpoints,
        cond,
        stun: managed_relay::managed_stun(Some(service), m.port, hosts),
        token_secret: Some(managed_relay::relay_name(&mesh.name_any())),
    }
}

/// What the mesh part observed: the selected nodes, the stored peers and the relay's outcome.
#[derive(Clone, Copy, Debug)]
pub struct MeshObserved<'a> {
    pub mesh: &'a WireKubeMesh,
    /// Nodes matching the selector and not being deleted, sorted by name.
    pub nodes: &'a [ClusterNode],
    /// Every stored `WireKubePeer` (of any mesh), by name.
    pub peers: &'a BTreeMap<String, Arc<WireKubePeer>>,
    pub relay: &'a RelayOutcome,
}

/// One peer to server-side apply.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerWrite {
    pub node: String,
    pub node_uid: String,
    pub spec: WireKubePeerSpec,
    /// The quarantine annotation's value, if the node is quarantined for its key.
    pub quarantine: Option<String>,
    /// resourceVersion of the stored peer (to skip a write the cache has not caught up with).
    pub observed_rv: Option<String>,
    /// The spec fields this write changes (`crate::spec_changes`), for the reconcile's log.
    pub changes: Vec<&'static str>,
    /// It only records endpoints the node already uses (`crate::deferral`): it may wait.
    pub records_only: bool,
}

impl PeerWrite {
    pub fn desired<'a>(&'a self, mesh: &'a str) -> DesiredPeer<'a> {
        DesiredPeer {
            mesh,
            node: &self.node,
            node_uid: &self.node_uid,
            spec: &self.spec,
            quarantine: self.quarantine.as_deref(),
        }
    }
}

/// Everything a successful plan changes.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshChanges {
    /// Peers whose stored object differs from the plan, by node name.
    pub writes: Vec<PeerWrite>,
    /// This mesh's peers whose node left, sorted.
    pub deletes: Vec<String>,
    /// Decisions to announce as events, in order.
    pub events: Vec<diff::Decision>,
    /// The mesh status, except `PeersWritten` (that one depends on how the writes go).
    pub status: WireKubeMeshStatus,
    pub counts: NodeCounts,
    pub summary: PathSummary,
    /// Nodes quarantined for their public key.
    pub quarantined: usize,
}

/// The mesh part's decision: plan, compare with the stored peers, and compute the status.
/// `Err`: planning could not start (the stored specs stay untouched).
pub fn mesh(o: &MeshObserved<'_>, now: &Time) -> std::result::Result<MeshChanges, Box<Rejected>> {
    let name = o.mesh.name_any();
    let generation = o.mesh.metadata.generation.unwrap_or(0);
    let prev_status = o.mesh.status.as_ref();
    let previous: BTreeMap<String, WireKubePeerSpec> = (o.peers.values())
        .filter(|p| diff::peer_mesh(p) == Some(name.as_str()))
        .map(|p| (p.name_any(), p.spec.clone()))
        .collect();
    let statuses: BTreeMap<String, WireKubePeerStatus> = (o.nodes.iter())
        .filter_map(|n| {
            let p = o.peers.get(n.name())?;
            Some((n.name().to_string(), p.status.clone()?))
        })
        .collect();
    let planned = plan::plan(&PlanRequest {
        mesh_name: &name,
        spec: &o.mesh.spec,
        relay_endpoints: &o.relay.endpoints,
        relay_token_secret: o.relay.token_secret.as_deref(),
        relay_stun_servers: &o.relay.stun,
        nodes: o.nodes,
        statuses: &statuses,
        previous: &previous,
    });
    let mut outcome = match planned {
        Ok(outcome) => outcome,
        Err(issue) => return Err(Box::new(plan_failed(prev_status, generation, issue, now))),
    };
    let (writes, other_mesh) = peer_writes(&name, &outcome, o.peers, o.nodes);
    outcome.issues.extend(other_mesh);
    let selected: BTreeSet<&str> = o.nodes.iter().map(ClusterNode::name).collect();
    let deletes = diff::peers_to_delete(&name, o.peers.values().map(|p| p.as_ref()), &selected);

    let prev_endpoints = prev_status
        .map(|s| s.relay_endpoints.clone())
        .unwrap_or_default();
    let mut events = diff::decisions(
        &previous,
        &outcome.specs,
        &deletes,
        &prev_endpoints,
        &o.relay.endpoints,
    );
    events.extend(diff::key_decisions(
        &stored_notes(o.peers, o.nodes),
        &outcome.key_problems,
    ));
    let counts = status::node_counts(o.nodes.len(), statuses.values(), outcome.pending.len());
    let status = status::computed_status(
        prev_status,
        generation,
        &outcome,
        counts.clone(),
        o.relay.endpoints.clone(),
        &o.relay.cond,
        now,
    );
    Ok(MeshChanges {
        writes,
        deletes,
        events,
        status,
        counts,
        summary: outcome.summary.clone(),
        quarantined: outcome.quarantined(),
    })
}

/// Planning could not start: Ready False with the planner's reason; everything else stays.
fn plan_failed(
    prev: Option<&WireKubeMeshStatus>,
    generation: i64,
    issue: MeshIssue,
    now: &Time,
) -> Rejected {
    let mut st = prev.cloned().unwrap_or_default();
    st.observed_generation = Some(generation);
    let c = Cond::new(
        wirekube_crds::conditions::READY,
        false,
        &issue.reason,
        issue.message.clone(),
    );
    status::merge_condition(&mut st.conditions, &c, generation, now);
    Rejected {
        status: st,
        reason: issue.reason,
        message: issue.message,
    }
}

/// The planned peers that differ from the stored ones. A node whose stored peer belongs to
/// another mesh is not written: it becomes an issue instead.
fn peer_writes(
    mesh: &str,
    outcome: &PlanOutcome,
    stored: &BTreeMap<String, Arc<WireKubePeer>>,
    nodes: &[ClusterNode],
) -> (Vec<PeerWrite>, Vec<MeshIssue>) {
    let uids: BTreeMap<&str, &str> = (nodes.iter()).map(|n| (n.name(), n.uid.as_str())).collect();
    let mut writes = Vec::new();
    let mut issues = Vec::new();
    for (node, spec) in &outcome.specs {
        let observed = stored.get(node).map(|p| p.as_ref());
        if let Some(other) = observed.and_then(diff::peer_mesh).filter(|m| *m != mesh) {
            issues.push(MeshIssue {
                reason: "NodeInOtherMesh".into(),
                message: format!(
                    "node {node} already belongs to mesh {other}; a node can be in one mesh only"
                ),
            });
            continue;
        }
        let quarantine = outcome.quarantine_note(node);
        let d = DesiredPeer {
            mesh,
            node,
            node_uid: uids.get(node.as_str()).copied().unwrap_or(""),
            spec,
            quarantine: quarantine.as_deref(),
        };
        if diff::needs_write(observed, &d) {
            let changes = spec_changes::spec_changes(observed.map(|p| &p.spec), spec);
            let records_only = observed.is_some_and(|p| {
                deferral::records_only(p, spec, &changes)
                    && !diff::needs_write(observed, &DesiredPeer { spec: &p.spec, ..d })
            });
            writes.push(PeerWrite {
                node: node.clone(),
                node_uid: d.node_uid.to_string(),
                spec: spec.clone(),
                quarantine,
                observed_rv: observed.and_then(|p| p.resource_version()),
                changes,
                records_only,
            });
        }
    }
    (writes, issues)
}

/// The quarantine notes stored on the mesh's current peers (node → note).
fn stored_notes<'a>(
    stored: &'a BTreeMap<String, Arc<WireKubePeer>>,
    nodes: &[ClusterNode],
) -> BTreeMap<&'a str, &'a str> {
    (nodes.iter())
        .filter_map(|n| {
            let (name, p) = stored.get_key_value(n.name())?;
            Some((name.as_str(), diff::quarantine_note(p)?))
        })
        .collect()
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
