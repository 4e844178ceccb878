//! What goes into the planner and what comes out. Plain data: no kube client, no clock.
//!
//! Only the API types of `wirekube-crds` leak in (the mesh spec, the agent's status, the spec
//! the planner writes); nodes are described by [`NodeInfo`], which the controller builds from a
//! Kubernetes `Node` with [`NodeInfo::from_node`] and tests build by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub addresses: Vec<NodeAddress>,
    pub labels: BTreeMap<String, String>,
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

    /// Builds the planner's view of a Kubernetes node. Unparseable addresses and hostnames are
    /// skipped (they cannot be WireGuard endpoints).
    pub fn from_node(node: &Node) -> Self {
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|addrs| {
                addrs
                    .iter()
                    .filter_map(|a| {
                        let kind = match a.type_.as_str() {
                            "InternalIP" => NodeAddressKind::InternalIp,
                            "ExternalIP" => NodeAddressKind::ExternalIp,
                            _ => return None,
                        };
                        let ip = a.address.parse().ok()?;
                        Some(NodeAddress { kind, ip })
                    })
                    .collect()
            })
            .unwrap_or_default();
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            addresses,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            deleting: node.metadata.deletion_timestamp.is_some(),
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairPlan {
    pub a: Arc<str>,
    pub b: Arc<str>,
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
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Desired spec of every node in the mesh, by name.
    pub specs: BTreeMap<String, WireKubePeerSpec>,
    /// Names whose spec differs from the stored one (after [`crate::planner::PathPlanner::update_status`]:
    /// from the planner's previous state). Write exactly these.
    pub changed: BTreeSet<String>,
    /// Stored specs of nodes that are no longer in the mesh (deleted, deleting, deselected).
    pub removed: BTreeSet<String>,
    /// Every unordered pair, sorted by `(a, b)`.
    pub pairs: Vec<PairPlan>,
    /// Pair counts by planned path.
    pub summary: PathSummary,
    /// Nodes in the mesh whose agent has not published a public key yet, sorted.
    pub pending_nodes: Vec<String>,
    pub issues: Vec<PlanIssue>,
}

impl Plan {
    /// The pair of `x` and `y`, in either order.
    pub fn pair(&self, x: &str, y: &str) -> Option<&PairPlan> {
        let (a, b) = if x <= y { (x, y) } else { (y, x) };
        self.pairs
            .binary_search_by(|p| (&*p.a, &*p.b).cmp(&(a, b)))
            .ok()
            .map(|i| &self.pairs[i])
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
