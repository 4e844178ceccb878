//! What goes into the planner and what comes out. Plain data: no kube client, no clock.
//!
//! Only the API types of `wirekube-crds` leak in (the mesh spec, the agent's status, the spec
//! the planner writes); nodes are described by [`NodeInfo`], which the operator builds from a
//! Kubernetes `Node` in one place (`operator/src/nodes.rs`) and tests build by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::build::Core;
use wirekube_crds::{
    PathReason, PathSummary, PlannedPath, WireKubeMeshSpec, WireKubePeerSpec, WireKubePeerStatus,
};

/// Which Kubernetes node address an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeAddressKind {
    InternalIp,
    ExternalIp,
}

/// One address from `Node.status.addresses` (hostnames are not used by the planner).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    pub kind: NodeAddressKind,
    pub ip: IpAddr,
}

/// The facts about a Kubernetes node the planner needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    pub name: String,
    pub addresses: Vec<NodeAddress>,
    pub labels: BTreeMap<String, String>,
    /// `Node.spec.podCIDRs` (routed to this node when `spec.routing.podCIDRs` is on).
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// `metadata.deletionTimestamp` is set: the node leaves the mesh now, its mesh IP is held
    /// back for this round so that no newcomer reuses it while the old interface may still be up.
    pub deleting: bool,
}

impl NodeInfo {
    pub fn new(name: impl Into<String>) -> Self {
        NodeInfo {
            name: name.into(),
            ..NodeInfo::default()
        }
    }

    /// First address of `kind`, in the order the kubelet reported them.
    pub fn address(&self, kind: NodeAddressKind) -> Option<IpAddr> {
        self.addresses.iter().find(|a| a.kind == kind).map(|a| a.ip)
    }
}

/// Everything one planning round looks at.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannerInput {
    /// Name of the `WireKubeMesh` (copied into every spec).
    pub mesh_name: String,
    pub mesh: WireKubeMeshSpec,
    /// Published relay addresses (`host:port`, best first). Empty: no relay yet, so every
    /// pair that needs one is planned `Down` with reason `no-relay`.
    pub relay_endpoints: Vec<String>,
    /// Name of the Secret holding the relay token (copied into every spec).
    pub relay_token_secret: Option<String>,
    /// The relay's STUN responder addresses, used when `mesh.stunServers` is empty.
    pub relay_stun_servers: Vec<String>,
    /// Candidate nodes. The planner applies `mesh.nodeSelector` itself, so passing every node
    /// of the cluster is fine; nodes marked `deleting` are left out of the mesh.
    pub nodes: Vec<NodeInfo>,
    /// Each node's reported `WireKubePeer` status, by node name (absent: agent not up yet).
    pub statuses: BTreeMap<String, WireKubePeerStatus>,
    /// The specs currently stored, by node name: the source of truth for existing mesh IPs
    /// and the base for `Plan::changed`.
    pub previous: BTreeMap<String, WireKubePeerSpec>,
}

impl PlannerInput {
    /// An input with no nodes, no relay and no history.
    pub fn new(mesh_name: impl Into<String>, mesh: WireKubeMeshSpec) -> Self {
        PlannerInput {
            mesh_name: mesh_name.into(),
            mesh,
            relay_endpoints: Vec::new(),
            relay_token_secret: None,
            relay_stun_servers: Vec::new(),
            nodes: Vec::new(),
            statuses: BTreeMap::new(),
            previous: BTreeMap::new(),
        }
    }
}

/// The decision for one unordered pair of nodes (`a < b` by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairPlan<'a> {
    pub a: &'a str,
    pub b: &'a str,
    pub path: PlannedPath,
    pub reason: PathReason,
    /// `a` sends first toward `b` (for Relay pairs both sides may start).
    pub a_initiates: bool,
    pub b_initiates: bool,
    /// One of the two agents reports that the planned direct path did not come up and it fell
    /// back to the relay. Evidence only: the plan itself stays as decided (see
    /// docs/topologies.md, "Evidence from agents"), the agent owns liveness.
    pub fallback_reported: bool,
}

/// Something the user should know about a plan. None of these stop planning.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanIssue {
    /// More nodes than usable addresses: these nodes got no mesh IP. They still get a spec
    /// (with an empty `meshIP`) so that their agent can publish its status, and every pair
    /// with them is `Down` with reason `cidr-full`.
    #[error(
        "mesh CIDR {cidr} is full ({capacity} usable addresses); no mesh IP for: {}",
        unallocated.join(", ")
    )]
    CidrFull {
        cidr: String,
        capacity: u128,
        unallocated: Vec<String>,
    },
    /// Two stored specs claimed one IP; the lexicographically first node kept it.
    #[error(
        "mesh IP {ip} was claimed by {kept} and {reassigned}; {kept} keeps it, {reassigned} gets a new one"
    )]
    IpConflict {
        ip: String,
        kept: String,
        reassigned: String,
    },
    /// A stored spec's mesh IP is unparseable, outside the CIDR, or a network/broadcast address.
    #[error("stored mesh IP {ip:?} of {node} is not usable in {cidr}; allocating a new one")]
    InvalidStoredIp {
        node: String,
        ip: String,
        cidr: String,
    },
    /// The mesh CIDR changed: every node is re-allocated in name order.
    #[error("mesh CIDR changed from {from} to {to}: {nodes} nodes get new mesh IPs")]
    CidrChanged {
        from: String,
        to: String,
        nodes: usize,
    },
}

impl PlanIssue {
    /// PascalCase reason for a condition or an event.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanIssue::CidrFull { .. } => "MeshCIDRFull",
            PlanIssue::IpConflict { .. } => "MeshIPConflict",
            PlanIssue::InvalidStoredIp { .. } => "InvalidStoredMeshIP",
            PlanIssue::CidrChanged { .. } => "MeshCIDRChanged",
        }
    }
}

/// Planning cannot start at all; the operator should keep the stored specs untouched.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("meshCIDR {cidr:?} is not a CIDR: {source}")]
    InvalidCidr {
        cidr: String,
        #[source]
        source: ipnet::AddrParseError,
    },
    #[error("meshCIDR {cidr:?} has no usable host addresses")]
    EmptyCidr { cidr: String },
}

/// The result of a planning round.
///
/// Specs are materialised on demand ([`Plan::spec`], [`Plan::specs`], [`Plan::changed_specs`])
/// from a compact per-pair core: at 1,000 nodes a full set of specs is ~1M `PeerEntry`
/// values, and merely allocating those costs more than the whole plan (docs/benchmarks.md,
/// "PathPlanner"). `changed` is computed against the stored specs without materialising
/// anything, so the operator builds exactly the specs it writes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Names whose spec differs from the stored one (after [`crate::PathPlanner::update_status`]:
    /// from the planner's previous state). Write exactly these.
    pub changed: BTreeSet<String>,
    /// Stored specs of nodes that are no longer in the mesh (deleted, deleting, deselected).
    pub removed: BTreeSet<String>,
    /// Pair counts by planned path.
    pub summary: PathSummary,
    /// Nodes in the mesh whose agent has not published a public key yet, sorted.
    pub pending_nodes: Vec<String>,
    pub issues: Vec<PlanIssue>,
    /// Duplicate and malformed keys: the nodes they name are quarantined (listed by no spec,
    /// listing nobody), and the summary counts their pairs `Down`.
    pub key_problems: Vec<super::keys::KeyProblem>,
    /// Prefixes of `spec.routing` that are not carried, and why (the `RoutesCarried`
    /// condition); empty when everything asked for is carried.
    pub dropped_routes: Vec<super::routes::DroppedPrefix>,
    /// How many prefixes besides the mesh IPs are carried.
    pub carried_routes: usize,
    pub(crate) core: Core,
}

impl Plan {
    /// Nodes in the mesh, sorted.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.core.facts.iter().map(|f| &*f.name)
    }

    /// The desired spec of `node`, if it is in the mesh.
    pub fn spec(&self, node: &str) -> Option<WireKubePeerSpec> {
        self.core.index_of(node).map(|i| self.core.spec(i))
    }

    /// Every node's desired spec, in name order, built one at a time.
    pub fn specs(&self) -> impl Iterator<Item = (&str, WireKubePeerSpec)> + '_ {
        (0..self.core.facts.len()).map(|i| (&*self.core.facts[i].name, self.core.spec(i)))
    }

    /// The specs to write: those in `changed`.
    pub fn changed_specs(&self) -> impl Iterator<Item = (&str, WireKubePeerSpec)> + '_ {
        self.changed
            .iter()
            .filter_map(|n| Some((n.as_str(), self.spec(n)?)))
    }

    /// Every spec in a map (convenient for tests and small meshes).
    pub fn to_specs(&self) -> BTreeMap<String, WireKubePeerSpec> {
        self.specs().map(|(n, s)| (n.to_string(), s)).collect()
    }

    /// Every unordered pair, sorted by `(a, b)`.
    pub fn pairs(&self) -> impl ExactSizeIterator<Item = PairPlan<'_>> + '_ {
        let n = self.core.facts.len();
        let mut i = 0;
        let mut j = 0;
        (0..self.core.decisions.len()).map(move |_| {
            j += 1;
            if j >= n {
                i += 1;
                j = i + 1;
            }
            self.core.pair(i, j)
        })
    }

    /// The pair of `x` and `y`, in either order.
    pub fn pair(&self, x: &str, y: &str) -> Option<PairPlan<'_>> {
        let (i, j) = (self.core.index_of(x)?, self.core.index_of(y)?);
        match i.cmp(&j) {
            std::cmp::Ordering::Less => Some(self.core.pair(i, j)),
            std::cmp::Ordering::Greater => Some(self.core.pair(j, i)),
            std::cmp::Ordering::Equal => None,
        }
    }

    /// Why `node` is quarantined for its key, if it is.
    pub fn quarantine(&self, node: &str) -> Option<&super::keys::KeyProblem> {
        self.key_problems
            .iter()
            .find(|p| p.nodes().iter().any(|n| n == node))
    }

    /// Nodes that got no mesh IP because the CIDR is full.
    pub fn unallocated(&self) -> &[String] {
        self.issues
            .iter()
            .find_map(|i| match i {
                PlanIssue::CidrFull { unallocated, .. } => Some(unallocated.as_slice()),
                _ => None,
            })
            .unwrap_or(&[])
    }
}
