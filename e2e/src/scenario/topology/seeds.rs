//! The seed topologies (docs/topologies.md) and the other topologies the scenario tests run.

use wirekube_crds::{PathReason, RelayMode};
use wirekube_lab::NatKind;

use super::{RelaySetup, Topology};

use PathReason::*;

/// Topology 1, "All Private (Cloud NAT)": two VPCs behind symmetric NAT, an external relay.
pub fn seed_1_all_private() -> Topology {
    Topology::new("seed-1", "All private (cloud NAT)")
        .site(
            "vpc-a",
            NatKind::Symmetric,
            "10.1.0.0/24",
            &["node-1", "node-2"],
        )
        .site("vpc-b", NatKind::Symmetric, "10.2.0.0/24", &["node-3"])
        .relay(RelaySetup::External)
        .direct(
            "node-1",
            "node-2",
            SameSite,
            "same VPC, no NAT between them",
        )
        .relayed(
            "node-1",
            "node-3",
            BothSymmetric,
            "both behind symmetric NAT",
        )
        .relayed(
            "node-2",
            "node-3",
            BothSymmetric,
            "both behind symmetric NAT",
        )
}

/// Topology 2, "Mixed (Private + Public)", with a managed relay behind a LoadBalancer.
///
/// node-2 is in VPC A's subnet and has a public IP, as the seed says: an elastic IP (a 1:1 NAT
/// on the VPC's gateway), so node-1 and node-2 share a LAN (`same-site`) and everyone else
/// reaches node-2 at its public address (`public-peer`).
pub fn seed_2_mixed() -> Topology {
    Topology::new("seed-2", "Mixed (private + public)")
        .site("vpc-a", NatKind::Symmetric, "10.1.0.0/24", &["node-1"])
        .elastic("node-2")
        .site("vpc-b", NatKind::Symmetric, "10.2.0.0/24", &["node-3"])
        .relay(RelaySetup::ManagedLoadBalancer {
            node: "node-2".into(),
        })
        .direct(
            "node-1",
            "node-2",
            SameSite,
            "same subnet (node-2's public IP is an elastic IP)",
        )
        .direct("node-2", "node-3", PublicPeer, "node-2 has a public IP")
        .relayed(
            "node-1",
            "node-3",
            BothSymmetric,
            "both behind symmetric NAT",
        )
}

/// Topology 3, "Multi-Cloud": two clouds behind symmetric NAT, two on-premises sites behind cone
/// NATs that accept the symmetric side's unpredictable port (full cone, address-restricted).
pub fn seed_3_multi_cloud() -> Topology {
    Topology::new("seed-3", "Multi-cloud")
        .site("cloud-a", NatKind::Symmetric, "10.1.0.0/24", &["cloud-a-1"])
        .site("cloud-b", NatKind::Symmetric, "10.2.0.0/24", &["cloud-b-1"])
        .site(
            "onprem-1",
            NatKind::FullCone,
            "192.168.1.0/24",
            &["onprem-1"],
        )
        .site(
            "onprem-2",
            NatKind::AddressRestrictedCone,
            "192.168.2.0/24",
            &["onprem-2"],
        )
        .relay(RelaySetup::External)
        .relayed(
            "cloud-a-1",
            "cloud-b-1",
            BothSymmetric,
            "both behind symmetric NAT",
        )
        .direct(
            "onprem-1",
            "cloud-a-1",
            ConeSymmetric,
            "full cone <-> symmetric",
        )
        .direct(
            "onprem-1",
            "cloud-b-1",
            ConeSymmetric,
            "full cone <-> symmetric",
        )
        .direct(
            "onprem-2",
            "cloud-a-1",
            ConeSymmetric,
            "address-restricted cone <-> symmetric",
        )
        .direct(
            "onprem-2",
            "cloud-b-1",
            ConeSymmetric,
            "address-restricted cone <-> symmetric",
        )
        .direct(
            "onprem-1",
            "onprem-2",
            ConeCone,
            "both cone, STUN endpoints stable",
        )
}

/// Topology 3 with Linux's default cone (port-restricted): the seed's "Cone ↔ Symmetric: Direct"
/// does not hold (docs/lab-findings.md §4), so those pairs are relayed; cone ↔ cone stays direct.
pub fn seed_3_port_restricted() -> Topology {
    Topology::new("seed-3-prc", "Multi-cloud, port-restricted cones")
        .site("cloud-a", NatKind::Symmetric, "10.1.0.0/24", &["cloud-a-1"])
        .site(
            "onprem-1",
            NatKind::PortRestrictedCone,
            "192.168.1.0/24",
            &["onprem-1"],
        )
        .site(
            "onprem-2",
            NatKind::PortRestrictedCone,
            "192.168.2.0/24",
            &["onprem-2"],
        )
        .relay(RelaySetup::External)
        .relayed(
            "onprem-1",
            "cloud-a-1",
            PortRestrictedSymmetric,
            "port-restricted cone drops the symmetric side's unpredicted port",
        )
        .relayed(
            "onprem-2",
            "cloud-a-1",
            PortRestrictedSymmetric,
            "port-restricted cone drops the symmetric side's unpredicted port",
        )
        .direct("onprem-1", "onprem-2", ConeCone, "both cone, both punch")
}

/// Topology 4, "Home Lab + Cloud", with a managed relay on a NodePort of the public cloud node.
pub fn seed_4_home_lab_cloud() -> Topology {
    Topology::new("seed-4", "Home lab + cloud")
        .site(
            "home",
            NatKind::FullCone,
            "192.168.1.0/24",
            &["home-1", "home-2"],
        )
        .site("cloud", NatKind::Symmetric, "10.1.0.0/24", &["cloud-1"])
        .public("cloud-2")
        .site("vpc-2", NatKind::Symmetric, "10.2.0.0/24", &["cloud-3"])
        .relay(RelaySetup::ManagedNodePort {
            node: "cloud-2".into(),
            node_port: 30478,
            spare: None,
        })
        .direct("home-1", "home-2", SameSite, "home <-> home, same LAN")
        .direct(
            "home-1",
            "cloud-1",
            ConeSymmetric,
            "home (cone) <-> cloud (symmetric)",
        )
        .direct(
            "home-2",
            "cloud-1",
            ConeSymmetric,
            "home (cone) <-> cloud (symmetric)",
        )
        .direct(
            "home-1",
            "cloud-3",
            ConeSymmetric,
            "home (cone) <-> cloud (symmetric)",
        )
        .direct(
            "home-2",
            "cloud-3",
            ConeSymmetric,
            "home (cone) <-> cloud (symmetric)",
        )
        .direct("home-1", "cloud-2", PublicPeer, "home <-> cloud public IP")
        .direct("home-2", "cloud-2", PublicPeer, "home <-> cloud public IP")
        .direct(
            "cloud-1",
            "cloud-2",
            PublicPeer,
            "public IP always reachable",
        )
        .direct(
            "cloud-3",
            "cloud-2",
            PublicPeer,
            "public IP always reachable",
        )
        .relayed(
            "cloud-1",
            "cloud-3",
            BothSymmetric,
            "cloud (symmetric) <-> cloud (symmetric, other VPC)",
        )
}

/// Topology 5, "Air-gapped with outbound TCP": two secure zones whose firewalls allow only
/// outbound TCP; everything across zones goes through the relay in the DMZ.
pub fn seed_5_outbound_tcp_only() -> Topology {
    Topology::new("seed-5", "Air-gapped, outbound TCP only")
        .site(
            "secure-a",
            NatKind::TcpOnlyFirewall,
            "10.6.0.0/24",
            &["node-1", "node-2"],
        )
        .site(
            "secure-b",
            NatKind::TcpOnlyFirewall,
            "10.7.0.0/24",
            &["node-3"],
        )
        .relay(RelaySetup::External)
        .direct(
            "node-1",
            "node-2",
            SameSite,
            "same zone LAN (the firewall is at the edge)",
        )
        .relayed(
            "node-1",
            "node-3",
            UdpBlocked,
            "only outbound TCP: relay over TCP",
        )
        .relayed(
            "node-2",
            "node-3",
            UdpBlocked,
            "only outbound TCP: relay over TCP",
        )
}

/// "All nodes have public IPs? → mode: never": no relay at all.
pub fn mode_never_all_public() -> Topology {
    Topology::new("never", "All public, mode: never")
        .public("pub-1")
        .public("pub-2")
        .public("pub-3")
        .relay(RelaySetup::None)
        .mode(RelayMode::Never)
        .direct("pub-1", "pub-2", ModeNever, "mode: never")
        .direct("pub-1", "pub-3", ModeNever, "mode: never")
        .direct("pub-2", "pub-3", ModeNever, "mode: never")
}

/// `mode: always`: every pair relayed, even on one LAN.
pub fn mode_always() -> Topology {
    Topology::new("always", "mode: always")
        .site(
            "vpc-a",
            NatKind::Symmetric,
            "10.1.0.0/24",
            &["node-1", "node-2"],
        )
        .site("home", NatKind::FullCone, "192.168.1.0/24", &["node-3"])
        .relay(RelaySetup::External)
        .mode(RelayMode::Always)
        .relayed("node-1", "node-2", ModeAlways, "mode: always")
        .relayed("node-1", "node-3", ModeAlways, "mode: always")
        .relayed("node-2", "node-3", ModeAlways, "mode: always")
}

/// Topology by seed number (1-5), for the demo.
pub fn seed(n: u8) -> Option<Topology> {
    Some(match n {
        1 => seed_1_all_private(),
        2 => seed_2_mixed(),
        3 => seed_3_multi_cloud(),
        4 => seed_4_home_lab_cloud(),
        5 => seed_5_outbound_tcp_only(),
        _ => return None,
    })
}

/// Every topology the suite runs.
pub fn all() -> Vec<Topology> {
    vec![
        seed_1_all_private(),
        seed_2_mixed(),
        seed_3_multi_cloud(),
        seed_3_port_restricted(),
        seed_4_home_lab_cloud(),
        seed_5_outbound_tcp_only(),
        mode_never_all_public(),
        mode_always(),
    ]
}
