//! Layered gateways (run as root): an elastic IP (1:1 NAT) next to a private node on one cloud
//! LAN, and a home full cone behind a carrier-grade NAT (double NAT).

mod common;

use std::net::SocketAddrV4;

use wirekube_lab::{Filtering, Mapping, NatKind, SiteSpec};

#[test]
fn elastic_ip_and_double_nat_behave_as_their_layers() {
    let lab = common::lab("lay");
    let dmz = lab.add_dmz("dmz", &[]).unwrap();
    let vpc = lab
        .add_site(SiteSpec::new("vpc", NatKind::Symmetric, "10.1.0.0/24"))
        .unwrap();
    let private = lab.add_node("vpc", "private").unwrap();
    let (eip, public) = lab.add_elastic_node("vpc", "eip", None).unwrap();
    let cgnat = lab
        .add_site(SiteSpec::new(
            "cgnat",
            NatKind::AddressRestrictedCone,
            "100.64.0.0/24",
        ))
        .unwrap();
    let home = lab
        .add_site(SiteSpec::new("home", NatKind::FullCone, "192.168.1.0/24").behind("cgnat"))
        .unwrap();
    let dbl = lab.add_node("home", "dbl").unwrap();

    // The elastic node: its own public address, every port as is, anyone may send to it.
    assert_eq!(lab.public_ip(&eip).unwrap(), public);
    assert_ne!(public, vpc.wan_ip);
    let p = lab.probe_nat(&eip, &dmz).unwrap();
    assert_eq!(
        p.mapping().zip(p.filtering()),
        Some((Mapping::EndpointIndependent, Filtering::EndpointIndependent)),
        "{p:?}"
    );
    assert!(p.mapped.iter().all(|m| *m.ip() == public), "{p:?}");
    lab.ping(&dmz, public)
        .expect("unsolicited ping from the internet reaches the elastic node");
    // Its neighbour still leaves through the VPC's symmetric NAT.
    let p = lab.probe_nat(&private, &dmz).unwrap();
    assert_eq!(p.mapping(), Some(Mapping::AddressAndPortDependent), "{p:?}");
    assert!(p.mapped.iter().all(|m| *m.ip() == vpc.wan_ip), "{p:?}");
    // The LAN still carries private traffic between the two.
    lab.ping(&private, eip.ip()).unwrap();

    // Double NAT: the home gateway's WAN is on the CGNAT's 100.64/10 LAN; the internet sees
    // the CGNAT's address, and the stricter layer's filtering (address-dependent).
    assert_eq!(home.upstream.as_deref(), Some("cgnat"));
    assert!(
        "100.64.0.0/10"
            .parse::<wirekube_lab::Ipv4Net>()
            .unwrap()
            .contains(&home.wan_ip),
        "{}",
        home.wan_ip
    );
    assert_eq!(lab.public_ip(&dbl).unwrap(), cgnat.wan_ip);
    let p = lab.probe_nat(&dbl, &dmz).unwrap();
    assert_eq!(
        p.mapping().zip(p.filtering()),
        Some((Mapping::EndpointIndependent, Filtering::AddressDependent)),
        "{p:?}"
    );
    assert!(
        p.mapped
            .iter()
            .all(|m: &SocketAddrV4| *m.ip() == cgnat.wan_ip),
        "{p:?}"
    );
    assert!(
        lab.add_elastic_node("home", "nope", None).is_err(),
        "an elastic IP behind a CGNAT is refused"
    );
    lab.shutdown().unwrap();
    let left = wirekube_lab::Lab::leftovers(lab.prefix());
    assert!(left.is_empty(), "{left:?}");
}
