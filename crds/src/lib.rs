//! WireKube API types (`wirekube.io/v1alpha1`).
//!
//! Two cluster-scoped kinds: [`WireKubeMesh`] (what the user declares, normally one named
//! `default`) and [`WireKubePeer`] (one per node). The operator is the only writer of a peer's
//! spec and the agent on that node the only writer of its status; the split is enforced by
//! RBAC and a ValidatingAdmissionPolicy shipped in `config/rbac/`.

#![forbid(unsafe_code)]

pub mod condition;
pub mod crdgen;
pub mod duration;
pub mod enums;
pub mod key;
pub mod mesh;
pub mod peer;
pub mod validate;

pub use condition::Cond;
pub use enums::{
    ActualPath, CandidateKind, Engine, NatType, PathReason, PlannedPath, RelayMode, RelayProvider,
    ServiceType,
};
pub use key::{is_public_key, key_problem};
pub use mesh::{
    ExternalRelay, ManagedRelay, NodeCounts, NodeRoutes, PathSummary, PodNetworkSpec, RelaySpec,
    RoutingSpec, WireKubeMesh, WireKubeMeshSpec, WireKubeMeshStatus,
};
pub use peer::{
    Candidate, PeerConnection, PeerEntry, PeerSummary, WireKubePeer, WireKubePeerSpec,
    WireKubePeerStatus,
};
pub use validate::{Problem, validate_mesh};

/// API group of both kinds.
pub const GROUP: &str = "wirekube.io";
/// Served and stored version.
pub const VERSION: &str = "v1alpha1";
/// Field manager the operator uses for every server-side apply.
pub const OPERATOR_MANAGER: &str = "wirekube-operator";
/// Field manager the agent uses for its status patches.
pub const AGENT_MANAGER: &str = "wirekube-agent";
/// Label put on every peer with the name of the mesh it belongs to.
pub const MESH_LABEL: &str = "wirekube.io/mesh";
/// Annotation the operator puts on the peer of a node it leaves out of every other node's
/// spec because of its public key (duplicate or malformed); the value says why. The agent
/// reports it as its `PublicKeyAccepted` condition (the operator may not write peer status).
pub const QUARANTINE_ANNOTATION: &str = "wirekube.io/key-quarantine";

/// Condition types used in both statuses.
pub mod conditions {
    pub const READY: &str = "Ready";
    pub const RELAY_READY: &str = "RelayReady";
    /// Mesh: every prefix `spec.routing` asks for is carried (False names each one left out).
    pub const ROUTES_CARRIED: &str = "RoutesCarried";
    pub const STUN_REACHABLE: &str = "StunReachable";
    pub const RELAY_CONNECTED: &str = "RelayConnected";
    pub const DATAPLANE_READY: &str = "DataplaneReady";
    /// Peer, only with `spec.podNetwork`: the node's CNI configuration and masquerade rule
    /// are in place.
    pub const POD_NETWORK_READY: &str = "PodNetworkReady";
    /// Mesh: every node reported a well-formed public key no other node reports (False names
    /// the quarantined nodes).
    pub const PUBLIC_KEYS_VALID: &str = "PublicKeysValid";
    /// Mesh: the operator wrote every peer spec of its last pass (False names the ones whose
    /// write failed; the others were written).
    pub const PEERS_WRITTEN: &str = "PeersWritten";
    /// Peer: the operator lists this node's key in the other nodes' specs (False while it is
    /// quarantined, see `QUARANTINE_ANNOTATION`).
    pub const PUBLIC_KEY_ACCEPTED: &str = "PublicKeyAccepted";
    /// Peer: every entry of the spec is configured (False names each one the agent skipped,
    /// e.g. a malformed key or one key listed under two names, and why).
    pub const PEERS_ACCEPTED: &str = "PeersAccepted";
}
