//! One test per row of the five seed topologies (the seed tables in `docs/topologies.md`), named
//! `topology_<n>_<name>__<row>`. Each builds the topology's nodes as the lab would see them
//! (addresses from docs/lab-findings.md §2) and asserts the planned path, reason, endpoints and who
//! initiates, on both sides of the pair.

// `__` separates the topology from the row in test names, so that `cargo test topology_3`
// and the naming scheme line up.
#![allow(non_snake_case)]

use wirekube_crds::{NatType, PathReason, PeerEntry, PlannedPath, RelayMode};
use wirekube_planner::fixtures::{Host, input, mesh};
use wirekube_planner::{NAT_KEEPALIVE_SECS, Plan, plan};

use NatType::*;
use PathReason as R;
use PlannedPath::{Direct, Down, Relay};

fn run(hosts: &[Host], mode: RelayMode, relay: bool) -> Plan {
    plan(&input(mesh("10.99.0.0/16", mode), hosts, relay)).expect("plan")
}

fn auto(hosts: &[Host]) -> Plan {
    run(hosts, RelayMode::Auto, true)
}

/// `from`'s entry for `to`.
fn entry(plan: &Plan, from: &str, to: &str) -> PeerEntry {
    plan.spec(from)
        .expect("node in the mesh")
        .peers
        .into_iter()
        .find(|p| p.name == to)
        .unwrap_or_else(|| panic!("{from} has no entry for {to}"))
}

/// Asserts the pair's path and reason as seen from both sides and in `plan.pairs`.
fn assert_pair(plan: &Plan, a: &str, b: &str, path: PlannedPath, reason: PathReason) {
    for (x, y) in [(a, b), (b, a)] {
        let e = entry(plan, x, y);
        assert_eq!((e.path, e.reason), (path, reason), "{x} -> {y}: {e:?}");
    }
    let p = plan.pair(a, b).expect("pair listed");
    assert_eq!((p.path, p.reason), (path, reason));
}

// ---------------------------------------------------------------- Topology 1: All Private

fn topology_1() -> Vec<Host> {
    vec![
        Host::new("node-1", Symmetric)
            .lan("10.1.0.11", 24)
            .public("198.18.0.11"),
        Host::new("node-2", Symmetric)
            .lan("10.1.0.12", 24)
            .public("198.18.0.11"),
        Host::new("node-3", Symmetric)
            .lan("10.2.0.11", 24)
            .public("198.18.0.21"),
    ]
}

#[test]
fn topology_1_all_private__node1_node2_same_vpc() {
    let p = auto(&topology_1());
    assert_pair(&p, "node-1", "node-2", Direct, R::SameSite);
    let e = entry(&p, "node-1", "node-2");
    assert_eq!(e.endpoint.as_deref(), Some("10.1.0.12:51820"));
    assert!(e.initiate);
    // No NAT between them: the mesh keepalive.
    assert_eq!(e.persistent_keepalive, 25);
    assert_eq!(
        entry(&p, "node-2", "node-1").endpoint.as_deref(),
        Some("10.1.0.11:51820")
    );
}

#[test]
fn topology_1_all_private__node1_node3_cross_vpc() {
    let p = auto(&topology_1());
    assert_pair(&p, "node-1", "node-3", Relay, R::BothSymmetric);
    assert_eq!(entry(&p, "node-1", "node-3").endpoint, None);
}

#[test]
fn topology_1_all_private__node2_node3_cross_vpc() {
    assert_pair(
        &auto(&topology_1()),
        "node-2",
        "node-3",
        Relay,
        R::BothSymmetric,
    );
}

#[test]
fn topology_1_all_private__relay_is_essential_without_it_cross_vpc_is_down() {
    let p = run(&topology_1(), RelayMode::Auto, false);
    assert_pair(&p, "node-1", "node-2", Direct, R::SameSite);
    assert_pair(&p, "node-1", "node-3", Down, R::NoRelay);
    assert_pair(&p, "node-2", "node-3", Down, R::NoRelay);
    assert_eq!(
        (p.summary.direct, p.summary.relay, p.summary.down),
        (1, 0, 2)
    );
}

// ---------------------------------------------------------------- Topology 2: Mixed

fn topology_2() -> Vec<Host> {
    vec![
        Host::new("node-1", Symmetric)
            .lan("10.1.0.11", 24)
            .public("198.18.0.11"),
        Host::new("node-2", Open)
            .lan("10.1.0.12", 24)
            .public("198.18.0.41"),
        Host::new("node-3", Symmetric)
            .lan("10.2.0.11", 24)
            .public("198.18.0.21"),
    ]
}

#[test]
fn topology_2_mixed__node1_node2_same_vpc() {
    let p = auto(&topology_2());
    assert_pair(&p, "node-1", "node-2", Direct, R::SameSite);
    assert_eq!(
        entry(&p, "node-1", "node-2").endpoint.as_deref(),
        Some("10.1.0.12:51820")
    );
}

#[test]
fn topology_2_mixed__node2_public_node3_private_cross_vpc() {
    let p = auto(&topology_2());
    assert_pair(&p, "node-2", "node-3", Direct, R::PublicPeer);
    // node-3 (symmetric) initiates to node-2's public endpoint; node-2 cannot predict
    // node-3's port, so it waits and WireGuard roams to where node-3's packets come from.
    let to_public = entry(&p, "node-3", "node-2");
    assert_eq!(to_public.endpoint.as_deref(), Some("198.18.0.41:51820"));
    assert!(to_public.initiate);
    assert_eq!(to_public.persistent_keepalive, NAT_KEEPALIVE_SECS);
    let from_public = entry(&p, "node-2", "node-3");
    assert_eq!(from_public.endpoint, None);
    assert!(!from_public.initiate);
}

#[test]
fn topology_2_mixed__node2_uses_the_peer_reflexive_endpoint_it_observed() {
    let mut hosts = topology_2();
    // node-2's agent reports where its WireGuard saw node-3's packets come from.
    hosts[1] = hosts[1].clone().saw("node-3", "198.18.0.21:49825");
    let p = auto(&hosts);
    assert_eq!(
        entry(&p, "node-2", "node-3").endpoint.as_deref(),
        Some("198.18.0.21:49825")
    );
}

#[test]
fn topology_2_mixed__node1_node3_cross_vpc() {
    assert_pair(
        &auto(&topology_2()),
        "node-1",
        "node-3",
        Relay,
        R::BothSymmetric,
    );
}

// ---------------------------------------------------------------- Topology 3: Multi-Cloud

/// On-prem sites are cones that admit the symmetric side: address-restricted (onprem-1) and
/// full cone (onprem-2). The port-restricted case is the documented deviation below.
fn topology_3() -> Vec<Host> {
    vec![
        Host::new("cloud-a", Symmetric)
            .lan("10.1.0.11", 24)
            .public("198.18.0.11"),
        Host::new("cloud-b", Symmetric)
            .lan("10.2.0.11", 24)
            .public("198.18.0.21"),
        Host::new("onprem-1", AddressRestricted)
            .lan("192.168.1.11", 24)
            .public("198.18.0.31"),
        Host::new("onprem-2", FullCone)
            .lan("192.168.2.11", 24)
            .public("198.18.0.32"),
    ]
}

#[test]
fn topology_3_multi_cloud__cloud_a_to_cloud_b() {
    assert_pair(
        &auto(&topology_3()),
        "cloud-a",
        "cloud-b",
        Relay,
        R::BothSymmetric,
    );
}

#[test]
fn topology_3_multi_cloud__onprem_cone_to_cloud_a_symmetric() {
    let p = auto(&topology_3());
    assert_pair(&p, "onprem-1", "cloud-a", Direct, R::ConeSymmetric);
    // The symmetric side initiates to the cone's stable STUN endpoint.
    let sym = entry(&p, "cloud-a", "onprem-1");
    assert_eq!(sym.endpoint.as_deref(), Some("198.18.0.31:51820"));
    assert!(sym.initiate);
    assert_eq!(sym.punch_toward, None);
    // The address-restricted cone sends toward cloud-a's public IP so its filter opens.
    let cone = entry(&p, "onprem-1", "cloud-a");
    assert!(!cone.initiate);
    assert_eq!(cone.endpoint, None);
    assert_eq!(cone.punch_toward.as_deref(), Some("198.18.0.11:51820"));
    assert_eq!(cone.persistent_keepalive, NAT_KEEPALIVE_SECS);
}

#[test]
fn topology_3_multi_cloud__onprem_cone_to_cloud_b_symmetric() {
    let p = auto(&topology_3());
    assert_pair(&p, "onprem-2", "cloud-b", Direct, R::ConeSymmetric);
    assert_eq!(
        entry(&p, "cloud-b", "onprem-2").endpoint.as_deref(),
        Some("198.18.0.32:51820")
    );
    assert!(entry(&p, "cloud-b", "onprem-2").initiate);
    assert_eq!(
        entry(&p, "onprem-2", "cloud-b").punch_toward.as_deref(),
        Some("198.18.0.21:51820")
    );
}

#[test]
fn topology_3_multi_cloud__onprem_to_onprem_cone_cone() {
    let p = auto(&topology_3());
    assert_pair(&p, "onprem-1", "onprem-2", Direct, R::ConeCone);
    let a = entry(&p, "onprem-1", "onprem-2");
    let b = entry(&p, "onprem-2", "onprem-1");
    assert_eq!(a.endpoint.as_deref(), Some("198.18.0.32:51820"));
    assert_eq!(b.endpoint.as_deref(), Some("198.18.0.31:51820"));
    assert!(a.initiate && b.initiate, "both sides punch");
}

/// The lab run that found two meanings of `kind: prflx`. Each agent reports where its WireGuard
/// saw a peer's packets come from (`observedBy` = that peer): onprem-1 saw cloud-a-1 at its
/// NAT's `198.18.0.10:56842`, cloud-a-1 saw onprem-1 at `198.18.0.16:51820`. The planner read
/// them the other way round and gave onprem-1 its own public address as the endpoint for
/// cloud-a-1. Whichever rule applies, the side facing the symmetric node sends to what it
/// observed, and neither side is ever given its own address.
#[test]
fn lab__the_side_facing_a_symmetric_peer_sends_to_the_address_it_observed() {
    use RelayMode::{Auto, Never};
    for (nat, mode, reason) in [
        (FullCone, Auto, R::ConeSymmetric),
        (AddressRestricted, Auto, R::ConeSymmetric),
        (Open, Auto, R::PublicPeer),
        (OneToOne, Auto, R::PublicPeer),
        // `mode: never` keeps the endpoints of the rule that finds a path ...
        (FullCone, Never, R::ModeNever),
        (Open, Never, R::ModeNever),
        // ... and where none does, each side sends to its best guess (best_effort).
        (PortRestricted, Never, R::ModeNever),
        (Symmetric, Never, R::ModeNever),
    ] {
        let hosts = vec![
            Host::new("onprem-1", nat)
                .lan("192.168.1.11", 24)
                .public("198.18.0.16")
                .saw("cloud-a-1", "198.18.0.10:56842"),
            Host::new("cloud-a-1", Symmetric)
                .lan("10.1.0.11", 24)
                .public("198.18.0.10")
                .saw("onprem-1", "198.18.0.16:51820"),
        ];
        let p = run(&hosts, mode, true);
        let row = format!("{nat:?}, {mode:?}");
        assert_pair(&p, "onprem-1", "cloud-a-1", Direct, reason);
        let to_sym = entry(&p, "onprem-1", "cloud-a-1");
        assert_eq!(
            to_sym.endpoint.as_deref(),
            Some("198.18.0.10:56842"),
            "{row}: {to_sym:?}"
        );
        let from_sym = entry(&p, "cloud-a-1", "onprem-1");
        assert_eq!(
            from_sym.endpoint.as_deref(),
            Some("198.18.0.16:51820"),
            "{row}: {from_sym:?}"
        );
    }
}

/// Deviation from the seed ("Cone ↔ Symmetric: Direct"), measured in docs/lab-findings.md §4: a
/// port-restricted cone drops the symmetric side's packets even when both send.
#[test]
fn topology_3_multi_cloud__onprem_port_restricted_cone_to_cloud_symmetric_is_relayed() {
    let mut hosts = topology_3();
    hosts[2].nat = PortRestricted;
    let p = auto(&hosts);
    assert_pair(&p, "onprem-1", "cloud-a", Relay, R::PortRestrictedSymmetric);
    assert_pair(&p, "onprem-1", "onprem-2", Direct, R::ConeCone);
}

// ---------------------------------------------------------------- Topology 4: Home Lab + Cloud

fn topology_4() -> Vec<Host> {
    vec![
        Host::new("home-1", FullCone)
            .lan("192.168.1.11", 24)
            .public("198.18.0.31"),
        // The second host behind the same NAT got another port (docs/lab-findings.md §3.4).
        Host::new("home-2", FullCone)
            .lan("192.168.1.12", 24)
            .public("198.18.0.31")
            .mapped_port(12691),
        Host::new("node-2", Symmetric)
            .lan("10.1.0.11", 24)
            .public("198.18.0.11"),
        Host::new("node-3", Open)
            .lan("10.1.0.12", 24)
            .public("198.18.0.41"),
        Host::new("other-vpc", Symmetric)
            .lan("10.2.0.11", 24)
            .public("198.18.0.21"),
    ]
}

#[test]
fn topology_4_home_lab_cloud__home_cone_to_cloud_symmetric() {
    let p = auto(&topology_4());
    assert_pair(&p, "home-1", "node-2", Direct, R::ConeSymmetric);
    assert!(entry(&p, "node-2", "home-1").initiate);
    // The STUN-observed port, not the listen port, is advertised (docs/lab-findings.md §3.4).
    assert_pair(&p, "home-2", "node-2", Direct, R::ConeSymmetric);
    assert_eq!(
        entry(&p, "node-2", "home-2").endpoint.as_deref(),
        Some("198.18.0.31:12691")
    );
}

#[test]
fn topology_4_home_lab_cloud__home_cone_to_cloud_public() {
    let p = auto(&topology_4());
    assert_pair(&p, "home-1", "node-3", Direct, R::PublicPeer);
    let home = entry(&p, "home-1", "node-3");
    assert_eq!(home.endpoint.as_deref(), Some("198.18.0.41:51820"));
    assert!(home.initiate);
    // The public side knows the cone's stable mapping but leaves the first packet to it.
    let public = entry(&p, "node-3", "home-1");
    assert_eq!(public.endpoint.as_deref(), Some("198.18.0.31:51820"));
    assert!(!public.initiate);
}

#[test]
fn topology_4_home_lab_cloud__home_to_home_same_lan() {
    let p = auto(&topology_4());
    assert_pair(&p, "home-1", "home-2", Direct, R::SameSite);
    assert_eq!(
        entry(&p, "home-1", "home-2").endpoint.as_deref(),
        Some("192.168.1.12:51820")
    );
}

#[test]
fn topology_4_home_lab_cloud__cloud_symmetric_to_cloud_symmetric_other_vpc() {
    let p = auto(&topology_4());
    assert_pair(&p, "node-2", "other-vpc", Relay, R::BothSymmetric);
    // node-2 and node-3 share the VPC: LAN path, although node-3 is public.
    assert_pair(&p, "node-2", "node-3", Direct, R::SameSite);
}

// ---------------------------------------------------------------- Topology 5: Air-Gapped

fn topology_5() -> Vec<Host> {
    vec![
        Host::new("secure-1", UdpBlocked).lan("10.6.0.11", 24),
        Host::new("secure-2", UdpBlocked).lan("10.6.0.12", 24),
        Host::new("cloud-1", Symmetric)
            .lan("10.1.0.11", 24)
            .public("198.18.0.11"),
        Host::new("public-1", Open).public("198.18.0.41"),
    ]
}

#[test]
fn topology_5_air_gapped__secure_node_to_anyone_outside_uses_the_tcp_relay() {
    let p = auto(&topology_5());
    for outside in ["cloud-1", "public-1"] {
        assert_pair(&p, "secure-1", outside, Relay, R::UdpBlocked);
        assert_pair(&p, "secure-2", outside, Relay, R::UdpBlocked);
    }
    // No inbound port is needed: no endpoint is planned toward a secure node.
    assert_eq!(entry(&p, "public-1", "secure-1").endpoint, None);
}

#[test]
fn topology_5_air_gapped__secure_nodes_on_one_lan_go_direct() {
    // The firewall sits at the zone's edge; UDP inside the LAN does not cross it.
    assert_pair(
        &auto(&topology_5()),
        "secure-1",
        "secure-2",
        Direct,
        R::SameSite,
    );
}

#[test]
fn topology_5_air_gapped__without_a_relay_the_zone_is_cut_off() {
    let p = run(&topology_5(), RelayMode::Auto, false);
    assert_pair(&p, "secure-1", "public-1", Down, R::NoRelay);
    assert_pair(&p, "cloud-1", "public-1", Direct, R::PublicPeer);
}

// ---------------------------------------------------------------- Choosing the right topology

#[test]
fn choosing__all_public_nodes_need_no_relay_with_mode_never() {
    let hosts = vec![
        Host::new("p1", Open).public("198.18.0.41"),
        Host::new("p2", Open).public("198.18.0.42"),
        Host::new("p3", Open).public("198.18.0.43"),
    ];
    let p = run(&hosts, RelayMode::Never, false);
    assert_eq!(
        (p.summary.direct, p.summary.relay, p.summary.down),
        (3, 0, 0)
    );
    assert!(p.pairs().all(|x| x.reason == R::ModeNever));
    assert!(p.pairs().all(|x| x.a_initiates && x.b_initiates));
    // Public to public: no NAT mapping to keep, the mesh keepalive applies.
    assert_eq!(entry(&p, "p1", "p2").persistent_keepalive, 25);
}

#[test]
fn choosing__no_symmetric_nat_means_stun_p2p_and_relay_unlikely() {
    let hosts = vec![
        Host::new("h1", FullCone)
            .lan("192.168.1.11", 24)
            .public("198.18.0.31"),
        Host::new("h2", AddressRestricted)
            .lan("192.168.2.11", 24)
            .public("198.18.0.32"),
        Host::new("h3", PortRestricted)
            .lan("192.168.3.11", 24)
            .public("198.18.0.33"),
        Host::new("p1", Open).public("198.18.0.41"),
    ];
    let p = run(&hosts, RelayMode::Auto, false);
    assert_eq!(
        (p.summary.direct, p.summary.relay, p.summary.down),
        (6, 0, 0)
    );
}

#[test]
fn choosing__symmetric_nat_means_deploy_a_relay_with_mode_auto() {
    let mut hosts = topology_1();
    hosts.push(
        Host::new("h1", PortRestricted)
            .lan("192.168.1.11", 24)
            .public("198.18.0.31"),
    );
    let p = auto(&hosts);
    assert!(p.summary.relay > 0);
    assert_eq!(p.summary.down, 0);
}

/// The seed's wording, as the lab builds it: node-2 in VPC A's subnet with an elastic IP (a
/// 1:1 NAT, reported `one-to-one`, the Node's ExternalIP).
fn topology_2_elastic() -> Vec<Host> {
    let mut hosts = topology_2();
    hosts[1] = Host::new("node-2", OneToOne)
        .lan("10.1.0.12", 24)
        .public("198.18.0.41");
    hosts
}

#[test]
fn topology_2_mixed__node2_behind_an_elastic_ip() {
    let p = auto(&topology_2_elastic());
    assert_pair(&p, "node-1", "node-2", Direct, R::SameSite);
    assert_pair(&p, "node-2", "node-3", Direct, R::PublicPeer);
    assert_pair(&p, "node-1", "node-3", Relay, R::BothSymmetric);
    let to_public = entry(&p, "node-3", "node-2");
    assert_eq!(to_public.endpoint.as_deref(), Some("198.18.0.41:51820"));
    assert!(to_public.initiate);
    assert!(!entry(&p, "node-2", "node-3").initiate);
    // The agent recognises the 1:1 NAT by the ExternalIPs its spec carries.
    assert_eq!(p.spec("node-2").unwrap().external_ips, ["198.18.0.41"]);
    assert!(p.spec("node-1").unwrap().external_ips.is_empty());
}

/// `one-to-one` without a STUN mapping has no address to be reached at: relayed until it has.
#[test]
fn one_to_one_without_a_mapping_is_planned_as_unknown() {
    let hosts = vec![
        Host::new("a", OneToOne).lan("10.1.0.11", 24),
        Host::new("b", Symmetric)
            .lan("10.2.0.11", 24)
            .public("198.18.0.21"),
    ];
    assert_pair(&auto(&hosts), "a", "b", Relay, R::NatUnknown);
}
