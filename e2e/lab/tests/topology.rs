//! Connectivity of the full topology and NAT behaviour of every kind (run as root).

mod common;

use std::time::{Duration, Instant};

use wirekube_lab::{Filtering, Lab, Mapping, NatKind};

#[test]
fn connectivity_expectations() {
    let lab = common::lab("con");
    common::full_topology(&lab);
    let h = |n: &str| lab.host(n).unwrap();
    let (dmz, public) = (h("dmz"), h("pub"));

    // Every site with UDP/ICMP out reaches the DMZ; the TCP-only site does not ping.
    for n in [
        "sym-a", "sym-b", "prc-a", "arc-a", "full-a", "full-b", "rtd-a", "pub",
    ] {
        let rtt = lab
            .ping(&h(n), dmz.ip())
            .unwrap_or_else(|e| panic!("{n}: {e}"));
        assert!(rtt < Duration::from_millis(100), "{n}: rtt {rtt:?}");
    }
    assert!(
        lab.ping(&h("fw-a"), dmz.ip()).is_err(),
        "ICMP must not leave the TCP-only site"
    );

    // Same LAN over private addresses.
    lab.ping(&h("sym-a"), h("sym-b").ip()).expect("same LAN");

    // Private space is not routed on the internet; the public node and a routed site are.
    assert!(
        lab.ping(&public, h("sym-a").ip()).is_err(),
        "10.1.0.11 must be unreachable"
    );
    assert!(
        lab.ping(&public, h("arc-a").ip()).is_err(),
        "192.168.1.11 must be unreachable"
    );
    lab.ping(&h("prc-a"), public.ip())
        .expect("public node reachable");
    lab.ping(&public, h("rtd-a").ip())
        .expect("routed public LAN reachable");
    lab.ping(&public, lab.site("prc").unwrap().wan_ip)
        .expect("gateway answers ping");

    // TCP out works everywhere, including the TCP-only site; UDP does not leave that one.
    for n in ["sym-a", "full-b", "fw-a", "rtd-a"] {
        let t = lab
            .tcp_transfer(&h(n), &public, public.ip(), 1 << 20)
            .unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(t.bytes, 1 << 20);
    }
    assert_eq!(
        lab.udp_delivery(&h("fw-a"), &public, public.ip(), 5)
            .unwrap(),
        0
    );
    assert_eq!(
        lab.udp_delivery(&h("prc-a"), &public, public.ip(), 5)
            .unwrap(),
        5
    );
    // Unsolicited TCP into a NAT site does not get in.
    let wan = lab.site("full").unwrap().wan_ip;
    assert!(
        lab.tcp_transfer_within(&public, &h("full-a"), wan, 10, Duration::from_millis(500))
            .is_err()
    );
    // A public node accepts unsolicited TCP and UDP.
    lab.tcp_transfer(&h("rtd-a"), &public, public.ip(), 10)
        .unwrap();
    assert_eq!(lab.udp_delivery(&dmz, &public, public.ip(), 3).unwrap(), 3);

    lab.shutdown().expect("clean teardown");
    assert_eq!(Lab::leftovers(lab.prefix()), Vec::<String>::new());
}

#[test]
fn nat_behaviour_of_every_kind() {
    let lab = common::lab("nat");
    common::full_topology(&lab);
    let dmz = lab.host("dmz").unwrap();
    let cases = [
        (
            "sym-a",
            Some((
                Mapping::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
            )),
        ),
        (
            "prc-a",
            Some((
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
            )),
        ),
        (
            "arc-a",
            Some((Mapping::EndpointIndependent, Filtering::AddressDependent)),
        ),
        (
            "full-a",
            Some((Mapping::EndpointIndependent, Filtering::EndpointIndependent)),
        ),
        // Second inner host behind the same full cone: the mapping -> inner map handles it.
        (
            "full-b",
            Some((Mapping::EndpointIndependent, Filtering::EndpointIndependent)),
        ),
        (
            "rtd-a",
            Some((Mapping::EndpointIndependent, Filtering::EndpointIndependent)),
        ),
        (
            "pub",
            Some((Mapping::EndpointIndependent, Filtering::EndpointIndependent)),
        ),
        ("fw-a", None),
    ];
    for (node, want) in cases {
        let t = Instant::now();
        let host = lab.host(node).unwrap();
        let p = lab.probe_nat(&host, &dmz).unwrap();
        eprintln!("{node}: {p:?} in {:?}", t.elapsed());
        let got = p.mapping().zip(p.filtering());
        assert_eq!(got, want, "{node}: {p:?}");
        // Mapped address is the site's WAN address (or the host's own for public ones).
        if let Some(m) = p.mapped.first() {
            let public = host.site.as_ref().map_or(host.ip(), |s| {
                let site = lab.site(s).unwrap();
                if site.nat == NatKind::None {
                    host.ip()
                } else {
                    site.wan_ip
                }
            });
            assert_eq!(*m.ip(), public, "{node}");
        }
    }

    // Runtime switch: the port-restricted site becomes symmetric, then full cone.
    for (kind, want) in [
        (
            NatKind::Symmetric,
            (
                Mapping::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
            ),
        ),
        (
            NatKind::FullCone,
            (Mapping::EndpointIndependent, Filtering::EndpointIndependent),
        ),
        (
            NatKind::AddressRestrictedCone,
            (Mapping::EndpointIndependent, Filtering::AddressDependent),
        ),
    ] {
        lab.set_nat("prc", kind).unwrap();
        assert_eq!(lab.site("prc").unwrap().nat, kind);
        let p = lab.probe_nat(&lab.host("prc-a").unwrap(), &dmz).unwrap();
        assert_eq!(
            p.mapping().zip(p.filtering()),
            Some(want),
            "prc as {kind}: {p:?}"
        );
    }
    // TCP-only -> port-restricted cone lets UDP out.
    lab.set_nat("fw", NatKind::PortRestrictedCone).unwrap();
    let p = lab.probe_nat(&lab.host("fw-a").unwrap(), &dmz).unwrap();
    assert_eq!(p.mapping(), Some(Mapping::EndpointIndependent), "{p:?}");
    lab.flush_conntrack("fw").unwrap();
}
