//! `WireKubeMesh`: the one object a user declares.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::enums::{RelayMode, RelayProvider, ServiceType};

// Each printcolumn repeats `type_ = ...`; clippy reads that as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
/// Desired mesh: address space, WireGuard settings, which nodes, and how to relay.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "wirekube.io",
    version = "v1alpha1",
    kind = "WireKubeMesh",
    plural = "wirekubemeshes",
    singular = "wirekubemesh",
    shortname = "wkmesh",
    category = "wirekube",
    status = "WireKubeMeshStatus",
    derive = "PartialEq",
    doc = "A WireGuard mesh between the selected nodes, direct where NAT allows and relayed otherwise.",
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodes.total"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Relay",
        type_ = "string",
        json_path = ".status.relayEndpoints[0]"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WireKubeMeshSpec {
    /// IPv4 CIDR the mesh IPs are allocated from, /8 to /28.
    #[serde(rename = "meshCIDR", default = "default_mesh_cidr")]
    #[schemars(length(max = 43))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "isCIDR(self) && cidr(self).ip().family() == 4 && cidr(self).prefixLength() >= 8 && cidr(self).prefixLength() <= 28",
         "message": "meshCIDR must be an IPv4 CIDR between /8 and /28, e.g. 10.99.0.0/16"}
    ]))]
    pub mesh_cidr: String,

    /// UDP port WireGuard listens on, on every node.
    #[serde(default = "default_listen_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub listen_port: u16,

    /// Name of the WireGuard interface on every node.
    #[serde(default = "default_interface_name")]
    // CEL rules instead of `pattern`: the API server then answers with our message (what a
    // valid value looks like) instead of the bare regular expression.
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[a-zA-Z0-9_=+.-]{1,15}$')",
         "message": "interfaceName must be a Linux interface name: 1 to 15 letters, digits or _=+.- (e.g. wirekube0)"}
    ]))]
    pub interface_name: String,

    /// MTU of the WireGuard interface. 1420 fits IPv4 and IPv6 underlays with MTU 1500.
    #[serde(default = "default_mtu")]
    #[schemars(range(min = 1280, max = 9000))]
    pub mtu: u32,

    /// Persistent keepalive in seconds for peers that need no shorter NAT keepalive (0 = off).
    #[serde(default = "default_keepalive")]
    #[schemars(range(min = 0, max = 65535))]
    pub persistent_keepalive: u32,

    /// Only nodes with all these labels join the mesh (empty = every node).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// STUN servers (`host:port`) for NAT classification. At least two when set; when empty,
    /// agents use the relay's STUN responder (two ports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "stun_servers_schema")]
    pub stun_servers: Vec<String>,

    /// How and when pairs are relayed.
    #[serde(default)]
    pub relay: RelaySpec,

    /// Which prefixes besides the mesh IPs the mesh carries: pod CIDRs, node InternalIPs,
    /// prefixes a node fronts, and prefixes it must never carry.
    #[serde(default)]
    pub routing: RoutingSpec,

    /// WireKube as the cluster's pod network, for clusters without a CNI (docs/pod-network.md).
    #[serde(default)]
    pub pod_network: PodNetworkSpec,
}

/// The pod network WireKube can provide.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodNetworkSpec {
    /// Every agent writes a CNI configuration on its node (`bridge` + `host-local` on the
    /// node's podCIDR, `portmap`) and masquerades pod traffic that leaves the cluster; pods at
    /// other sites are reached through the mesh with their own addresses. Off by default:
    /// leave it off when the cluster has a CNI.
    #[serde(default)]
    pub enabled: bool,
}
/// What the mesh carries besides the nodes' mesh IPs (docs/pod-network.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingSpec {
    /// Carry every node's pod CIDRs (`Node.spec.podCIDRs`): pods at different sites reach each
    /// other through the mesh. On by default; turn it off when the cluster's CNI carries pod
    /// traffic itself in an overlay (Cilium or Calico in tunnel mode, flannel VXLAN) and let the
    /// overlay cross the mesh with `nodeInternalIPs` instead.
    #[serde(rename = "podCIDRs", default = "default_true")]
    pub pod_cidrs: bool,
    /// Carry each node's InternalIP (/32) to the peers at other sites (nodes on one LAN keep
    /// reaching each other directly), so traffic to node addresses (kubelet, metrics, a CNI's
    /// VXLAN or IPIP) crosses the mesh. Addresses that two sites both use are carried for
    /// neither and named in the mesh's `RoutesCarried` condition.
    #[serde(rename = "nodeInternalIPs", default)]
    pub node_internal_ips: bool,
    /// Extra prefixes a node fronts (its LAN, a cloud VPC range), routed to that node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub node_routes: Vec<NodeRoutes>,
    /// Prefixes never routed into the mesh: a carried prefix overlapping one of these is left
    /// out (and named in the `RoutesCarried` condition).
    #[serde(
        rename = "excludeCIDRs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 64), inner(length(max = 43)))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(c, isCIDR(c) && cidr(c).ip().family() == 4)",
         "message": "excludeCIDRs entries must be IPv4 CIDRs such as 192.168.0.0/16"}
    ]))]
    pub exclude_cidrs: Vec<String>,
}

impl Default for RoutingSpec {
    fn default() -> Self {
        RoutingSpec {
            pod_cidrs: true,
            node_internal_ips: false,
            node_routes: Vec::new(),
            exclude_cidrs: Vec::new(),
        }
    }
}

/// Prefixes routed to one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoutes {
    /// Node name.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// IPv4 prefixes behind that node, e.g. its site's LAN `192.168.10.0/24`.
    #[schemars(length(min = 1, max = 64), inner(length(max = 43)))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(c, isCIDR(c) && cidr(c).ip().family() == 4)",
         "message": "nodeRoutes cidrs must be IPv4 CIDRs such as 192.168.10.0/24"}
    ]))]
    pub cidrs: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// `stunServers`: up to 8 `host:port` entries; each entry is checked by its own CEL rule so
/// the API server names the bad index and says what a valid entry looks like.
fn stun_servers_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 8,
        "items": {
            "type": "string",
            "maxLength": 261,
            "x-kubernetes-validations": [
                {"rule": "self.matches(r'^([^\\s:]+|\\[[0-9a-fA-F:.]+\\]):[0-9]{1,5}$')",
                 "message": "a stunServers entry must be host:port, e.g. stun.example.com:3478 or [2001:db8::1]:3478"}
            ]
        },
        "x-kubernetes-validations": [
            {"rule": "size(self) == 0 || size(self) >= 2",
             "message": "stunServers needs at least 2 servers to tell symmetric from cone NAT; list 2 or leave it empty to use the relay's STUN responder"}
        ]
    })
}

/// Relay policy and placement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.provider != 'external' || (has(self.external) && size(self.external.endpoint) > 0)",
     "message": "relay.external.endpoint is required when relay.provider is external; set it to host:port of your relay",
     "fieldPath": ".external.endpoint", "reason": "FieldValueRequired"}
]))]
pub struct RelaySpec {
    #[serde(default)]
    pub mode: RelayMode,
    #[serde(default)]
    pub provider: RelayProvider,
    /// Where the externally run relay listens (required when `provider: external`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRelay>,
    /// How the operator runs the relay (used when `provider: managed`).
    #[serde(default)]
    pub managed: ManagedRelay,
    /// How long a planned direct pair may go without a handshake before the agent falls back.
    #[serde(default = "default_direct_timeout")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^([0-9]+(ms|s|m|h))+$')",
         "message": "directTimeout must be a duration such as 500ms, 10s, 2m or 1m30s"}
    ]))]
    pub direct_timeout: String,
}

impl Default for RelaySpec {
    fn default() -> Self {
        RelaySpec {
            mode: RelayMode::default(),
            provider: RelayProvider::default(),
            external: None,
            managed: ManagedRelay::default(),
            direct_timeout: default_direct_timeout(),
        }
    }
}

/// A relay the user runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRelay {
    /// `host:port` of the relay's TCP listener, e.g. `relay.example.com:3478`.
    #[schemars(length(max = 261))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "size(self) == 0 || self.matches(r'^([^\\s:]+|\\[[0-9a-fA-F:.]+\\]):[0-9]{1,5}$')",
         "message": "relay.external.endpoint must be host:port, e.g. relay.example.com:3478 or [2001:db8::1]:3478"}
    ]))]
    pub endpoint: String,
}

/// The operator-run relay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRelay {
    #[serde(default)]
    pub service_type: ServiceType,
    /// TCP port of the relay (and first STUN port; the second STUN port is `port + 1`).
    #[serde(default = "default_relay_port")]
    #[schemars(range(min = 1, max = 65534))]
    pub port: u16,
    /// Fixed nodePort for `serviceType: NodePort` (allocated when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub node_port: Option<u16>,
    /// Relay pods. Exactly 1: replicas share no state, so two agents registered at
    /// different replicas could not reach each other through the relay.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self <= 1",
         "message": "relay.managed.replicas must be 1: relay replicas share no state, so agents registered at different replicas could not reach each other"}
    ]))]
    pub replicas: u32,
    #[serde(default = "default_relay_image")]
    #[schemars(length(min = 1))]
    pub image: String,
    /// Annotations for the relay Service (e.g. cloud load-balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Node labels a relay pod's node must have (the pod's `nodeSelector`; empty = any node).
    /// A relay is only useful where the agents can reach it: pin it to a public node or one
    /// in the network of the load balancer, not to a node behind NAT. With
    /// `serviceType: NodePort` only nodes running a relay pod answer on the nodePort
    /// (`externalTrafficPolicy: Local`, which keeps the agents' source addresses for STUN),
    /// so pin the relay to the node whose address you give out, e.g.
    /// `{"kubernetes.io/hostname": "gw-1"}`. Keys and values use Kubernetes label syntax.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("additionalProperties" = {
        "type": "string",
        "maxLength": 63,
        "pattern": "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
    }))]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the relay pods, e.g. to run on a tainted public gateway or
    /// control-plane node (empty = none). Same fields as a pod's `tolerations`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
}

impl Default for ManagedRelay {
    fn default() -> Self {
        ManagedRelay {
            service_type: ServiceType::default(),
            port: default_relay_port(),
            node_port: None,
            replicas: default_replicas(),
            image: default_relay_image(),
            annotations: BTreeMap::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
        }
    }
}

/// Observed state of the mesh, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WireKubeMeshStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `host:port` addresses agents dial for the relay, best first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relay_endpoints: Vec<String>,
    #[serde(default)]
    pub nodes: NodeCounts,
    #[serde(default)]
    pub paths: PathSummary,
    /// Nodes that have not published a public key yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_nodes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    pub total: u32,
    /// Nodes whose agent reports Ready.
    pub ready: u32,
    /// Nodes without a public key yet.
    pub pending: u32,
}

/// Pair counts by planned path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathSummary {
    pub direct: u32,
    pub relay: u32,
    pub down: u32,
}

pub fn default_mesh_cidr() -> String {
    "10.99.0.0/16".into()
}
pub fn default_listen_port() -> u16 {
    51820
}
pub fn default_interface_name() -> String {
    "wirekube0".into()
}
pub fn default_mtu() -> u32 {
    1420
}
pub fn default_keepalive() -> u32 {
    25
}
pub fn default_relay_port() -> u16 {
    3478
}
pub fn default_replicas() -> u32 {
    1
}
/// The relay image of this release: the tag is the workspace version (Cargo.toml), like the
/// operator and agent images in config/ and the chart's appVersion.
pub fn default_relay_image() -> String {
    concat!(
        "ghcr.io/wirekube/wirekube-relay:v",
        env!("CARGO_PKG_VERSION")
    )
    .into()
}
pub fn default_direct_timeout() -> String {
    "10s".into()
}
