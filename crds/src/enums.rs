//! Closed sets of the API. Each is a Rust enum so that a typo in a CR is rejected by the
//! schema (`enum:`) instead of being carried around as an unknown string.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// When the relay is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// Never relay: every pair is planned Direct (all nodes reachable).
    Never,
    /// Direct where NAT allows, relay otherwise, and fallback when direct fails.
    #[default]
    Auto,
    /// Every pair goes through the relay.
    Always,
}

/// Who runs the relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RelayProvider {
    /// The operator deploys it (Deployment + Service + token Secret).
    #[default]
    Managed,
    /// The user runs it somewhere; `relay.external.endpoint` says where.
    External,
}

/// How a managed relay is exposed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    #[default]
    LoadBalancer,
    NodePort,
}

/// The path the operator plans for a pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PlannedPath {
    #[default]
    Direct,
    Relay,
    /// No path can work right now (e.g. relay needed but none published yet).
    Down,
}

/// The path an agent actually uses for a peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActualPath {
    Direct,
    Relay,
    #[default]
    Connecting,
    Down,
}

/// NAT behaviour as classified by the agent (RFC 4787 / RFC 5780 terms in the docs).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum NatType {
    /// The mapped address is on a local NIC: no NAT.
    Open,
    /// A 1:1 NAT (a cloud's elastic IP): the mapped address is one of the node's
    /// `ExternalIP`s, the port is preserved and any remote may send to it. Reachable like
    /// `open`, but the address is not on a local NIC (so it is not called `open`).
    OneToOne,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted,
    /// Endpoint-dependent mapping.
    Symmetric,
    /// No STUN answer at all.
    UdpBlocked,
    #[default]
    Unknown,
}

impl NatType {
    /// Anyone can send to this node's public endpoint unsolicited: a public IP on its NIC or
    /// a 1:1 NAT in front of it.
    pub fn is_reachable(self) -> bool {
        matches!(self, NatType::Open | NatType::OneToOne)
    }

    /// Cones keep one public mapping for every destination.
    pub fn is_cone(self) -> bool {
        matches!(
            self,
            NatType::FullCone | NatType::AddressRestricted | NatType::PortRestricted
        )
    }
}

/// Why a pair got its path. Shown to users, so the codes are short and stable.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum PathReason {
    /// Same public IP or a shared private subnet.
    SameSite,
    /// At least one side has a public IP on its NIC.
    PublicPeer,
    /// Full or address-restricted cone with a symmetric NAT: the symmetric side initiates.
    ConeSymmetric,
    /// Two cones: both sides punch towards each other's STUN endpoint.
    ConeCone,
    /// Port-restricted cone with a symmetric NAT: the cone drops the unpredictable port.
    PortRestrictedSymmetric,
    /// Both sides behind endpoint-dependent mapping, different sites.
    BothSymmetric,
    /// At least one side gets no UDP out.
    UdpBlocked,
    /// A NAT type is not known yet.
    #[default]
    NatUnknown,
    /// A side has not published its public key yet.
    KeyMissing,
    /// `relay.mode: always`.
    ModeAlways,
    /// `relay.mode: never`.
    ModeNever,
    /// A relay path is needed but no relay endpoint is published.
    NoRelay,
    /// The agent fell back to the relay because the planned direct path did not come up.
    DirectFailed,
    /// One side has no mesh IP because the mesh CIDR is full.
    CidrFull,
}

impl PathReason {
    /// Every reason code, in the order of the decision table (docs/topologies.md).
    pub const ALL: [PathReason; 14] = [
        PathReason::SameSite,
        PathReason::PublicPeer,
        PathReason::ConeSymmetric,
        PathReason::ConeCone,
        PathReason::PortRestrictedSymmetric,
        PathReason::BothSymmetric,
        PathReason::UdpBlocked,
        PathReason::NatUnknown,
        PathReason::KeyMissing,
        PathReason::ModeAlways,
        PathReason::ModeNever,
        PathReason::NoRelay,
        PathReason::DirectFailed,
        PathReason::CidrFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PathReason::SameSite => "same-site",
            PathReason::PublicPeer => "public-peer",
            PathReason::ConeSymmetric => "cone-symmetric",
            PathReason::ConeCone => "cone-cone",
            PathReason::PortRestrictedSymmetric => "port-restricted-symmetric",
            PathReason::BothSymmetric => "both-symmetric",
            PathReason::UdpBlocked => "udp-blocked",
            PathReason::NatUnknown => "nat-unknown",
            PathReason::KeyMissing => "key-missing",
            PathReason::ModeAlways => "mode-always",
            PathReason::ModeNever => "mode-never",
            PathReason::NoRelay => "no-relay",
            PathReason::DirectFailed => "direct-failed",
            PathReason::CidrFull => "cidr-full",
        }
    }
}

impl std::fmt::Display for PathReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WireGuard engine the agent drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    Kernel,
    /// An external userspace daemon (wireguard-go, boringtun-cli) driven over its UAPI socket.
    UserspaceExternal,
    /// The userspace engine embedded in the agent process.
    UserspaceEmbedded,
}

/// Where a candidate address came from (ICE vocabulary).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CandidateKind {
    /// An address on a local interface.
    Host,
    /// Server-reflexive: the mapping a STUN server saw.
    Srflx,
    /// Peer-reflexive: a peer's address (`observedBy` names the peer) where this node's
    /// WireGuard saw that peer's packets come from.
    Prflx,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_match_serde_names() {
        for r in PathReason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    #[test]
    fn nat_types_are_kebab_case() {
        assert_eq!(
            serde_json::to_value(NatType::OneToOne).unwrap(),
            "one-to-one"
        );
        assert_eq!(
            serde_json::to_value(NatType::AddressRestricted).unwrap(),
            "address-restricted"
        );
        assert_eq!(
            serde_json::to_value(NatType::UdpBlocked).unwrap(),
            "udp-blocked"
        );
    }
}
