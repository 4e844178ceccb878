//! `WireKubePeer`: one per node. Spec from the operator, status from the node's agent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::enums::{
    ActualPath, CandidateKind, Engine, NatType, PathReason, PlannedPath, RelayMode,
};

// Each printcolumn repeats `type_ = ...`; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
/// Desired WireGuard state of one node, computed by the operator's PathPlanner.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "wirekube.io",
    version = "v1alpha1",
    kind = "WireKubePeer",
    plural = "wirekubepeers",
    singular = "wirekubepeer",
    shortname = "wkpeer",
    category = "wirekube",
    status = "WireKubePeerStatus",
    derive = "PartialEq",
    doc = "The WireGuard configuration of one node (spec, by the operator) and what its agent observes (status).",
    printcolumn(name = "Mesh IP", type_ = "string", json_path = ".spec.meshIP"),
    printcolumn(name = "NAT", type_ = "string", json_path = ".status.natType"),
    printcolumn(
        name = "Direct",
        type_ = "integer",
        json_path = ".status.summary.direct"
    ),
    printcolumn(name = "Relay", type_ = "integer", json_path = ".status.summary.relay"),
    printcolumn(name = "Down", type_ = "integer", json_path = ".status.summary.down"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WireKubePeerSpec {
    /// Name of the mesh this peer belongs to.
    pub mesh: String,
    /// This node's address inside the mesh (stable for the node's lifetime).
    #[serde(rename = "meshIP")]
    pub mesh_ip: String,
    /// The mesh CIDR, routed through the interface.
    #[serde(rename = "meshCIDR")]
    pub mesh_cidr: String,
    pub interface_name: String,
    pub listen_port: u16,
    pub mtu: u32,
    pub relay_mode: RelayMode,
    /// Relay addresses (`host:port`), best first. Empty when no relay is published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_endpoints: Vec<String>,
    /// Name of the Secret (in the operator's namespace) holding the relay token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_token_secret: Option<String>,
    /// STUN servers for NAT classification (the relay's responder when the mesh lists none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stun_servers: Vec<String>,
    #[schemars(pattern(r"^([0-9]+(ms|s|m|h))+$"))]
    pub direct_timeout: String,
    /// This node's `ExternalIP` addresses, as its cloud reports them on the Node. The agent
    /// uses them to recognise a 1:1 NAT (an elastic IP): a STUN mapping onto one of them with
    /// the port preserved and endpoint-independent filtering.
    #[serde(rename = "externalIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<String>,
    /// This node's pod CIDRs (`Node.spec.podCIDRs`), for the pod network.
    #[serde(rename = "podCIDRs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
    /// The agent provides the pod network on this node (`WireKubeMesh.spec.podNetwork`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pod_network: bool,
    /// Every other node of the mesh, sorted by name.
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
}

/// How this node reaches one other node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerEntry {
    /// Node name of the peer.
    pub name: String,
    /// WireGuard public key (base64 of 32 bytes). Empty while the peer has not published one.
    #[serde(default)]
    // A `pattern`, not CEL: `peers` has no maxItems, so a CEL rule here exceeds the CRD's
    // cost budget. Only the operator writes these; the agent's status gets the CEL message.
    #[schemars(
        length(max = 44),
        regex(pattern = r"^([A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=)?$")
    )]
    pub public_key: String,
    #[serde(rename = "allowedIPs", default)]
    pub allowed_ips: Vec<String>,
    /// `ip:port` to send to when the path is Direct.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub path: PlannedPath,
    pub reason: PathReason,
    /// This side sends first (the other side may be unable to reach it before it does).
    #[serde(default)]
    pub initiate: bool,
    /// Address to send a few packets toward so that this side's address-restricted NAT
    /// accepts the peer's packets (docs/lab-findings.md §4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub punch_toward: Option<String>,
    /// Persistent keepalive in seconds (0 = off).
    #[serde(default)]
    pub persistent_keepalive: u32,
}

/// What the agent observes on its node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WireKubePeerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The node's WireGuard public key (base64 of 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 44))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$')",
         "message": "publicKey must be a WireGuard public key: the base64 of 32 bytes (44 characters ending in =)"}
    ]))]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
    #[serde(default)]
    pub nat_type: NatType,
    #[serde(rename = "publicIP", default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Actual state of every peer, sorted by peer name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<PeerConnection>,
    #[serde(default)]
    pub summary: PeerSummary,
}

/// An address candidate: one at which this node may be reachable (host, srflx), or, for a
/// peer-reflexive candidate, a peer's address as this node observed it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    pub kind: CandidateKind,
    /// `ip:port`.
    pub address: String,
    /// For host candidates: prefix length of the interface's subnet, so that the planner can
    /// tell two nodes on one LAN from two nodes that merely reuse the same private range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_length: Option<u8>,
    /// For peer-reflexive candidates: the peer this address belongs to. The address is where
    /// this node's WireGuard saw that peer's packets come from (not this node's own address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_by: Option<String>,
}

/// The actual state of one peer, as seen by this node's WireGuard.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerConnection {
    pub name: String,
    pub path: ActualPath,
    /// Why this path (the planned reason, or `direct-failed` after a fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<PathReason>,
    /// Endpoint WireGuard currently sends to (peer-reflexive when it roamed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake: Option<Time>,
    #[serde(default)]
    pub rx_bytes: u64,
    #[serde(default)]
    pub tx_bytes: u64,
    /// The planned direct path did not come up and the agent uses the relay.
    #[serde(default)]
    pub fallback: bool,
    /// Number of path changes since the agent started.
    #[serde(default)]
    pub transitions: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<Time>,
    /// Smoothed round-trip time to the peer over the path in use (direct, or through the
    /// relay), in microseconds: a datagram through the tunnel to the peer's mesh IP and the
    /// peer kernel's ICMP answer back (RFC 6298-style SRTT). Republished only when it moved
    /// by 5 ms and 20 %, and a change of RTTs alone is written at most every 30 s; absent
    /// while the pair is not up or before the first sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_micros: Option<u32>,
}

/// Counts for the printer columns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerSummary {
    pub direct: u32,
    pub relay: u32,
    pub connecting: u32,
    pub down: u32,
}
