//! Table tests of discovery's decisions: which STUN answers count, when to check again, what
//! a recheck keeps.

use super::*;

#[test]
fn rtt_text_in_whole_milliseconds() {
    let a: SocketAddr = "198.51.100.7:3478".parse().unwrap();
    let b: SocketAddr = "198.51.100.7:3479".parse().unwrap();
    let ms = Duration::from_micros;
    for (rtts, want) in [
        (vec![], ""),
        (vec![(a, ms(400))], " (RTT 198.51.100.7:3478 <1 ms)"),
        (
            vec![(a, ms(12_700)), (b, ms(1_000))],
            " (RTT 198.51.100.7:3478 12 ms, 198.51.100.7:3479 1 ms)",
        ),
    ] {
        assert_eq!(rtt_text(&rtts), want, "{rtts:?}");
    }
}

#[test]
fn answers_that_looped_through_the_node_are_dropped() {
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    let local = vec![candidates::LocalAddr {
        ifname: "cni0".into(),
        ip: "10.244.1.1".parse().unwrap(),
        prefix_len: 24,
        loopback: false,
        up: true,
    }];
    let r = |server: &str, mapped: Option<&str>| MappingResult {
        server: sa(server),
        mapped: mapped.map(sa),
    };
    let mapping = vec![
        r("198.18.0.240:3478", Some("198.18.0.240:51820")), // own LB address, raced
        r("10.244.1.2:3479", Some("10.244.1.1:51820")),     // OTHER-ADDRESS: a local pod
        r("198.18.0.20:3478", Some("198.18.0.10:40000")),   // a real answer
        r("198.18.0.21:3478", None),                        // silent
    ];
    let (looped, kept) = drop_hairpin_answers(mapping.clone(), &local);
    assert_eq!(looped, vec![sa("198.18.0.240:3478"), sa("10.244.1.2:3479")]);
    assert_eq!(kept, mapping[2..].to_vec());
}

#[test]
fn answers_that_bypassed_the_nat_through_the_mesh_are_dropped() {
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    let la = |ifname: &str, ip: &str| candidates::LocalAddr {
        ifname: ifname.into(),
        ip: ip.parse().unwrap(),
        prefix_len: 24,
        loopback: false,
        up: true,
    };
    let r = |server: &str, mapped: &str| MappingResult {
        server: sa(server),
        mapped: Some(sa(mapped)),
    };
    // A cone-NATed node (LAN 192.168.1.10, mesh IP 10.99.0.4): the relay's NodePort saw
    // the NAT's address, its OTHER-ADDRESS (a pod on another node, routed through the
    // mesh) saw the mesh IP.
    let natted = vec![la("eth0", "192.168.1.10"), la("wirekube0", "10.99.0.4")];
    let mapping = vec![
        r("198.18.0.12:30478", "198.18.0.10:58350"),
        r("198.18.0.12:30479", "198.18.0.10:58350"),
        r("10.244.1.4:3479", "10.99.0.4:58350"),
    ];
    let (looped, kept) = drop_hairpin_answers(mapping.clone(), &natted);
    assert_eq!(looped, vec![sa("10.244.1.4:3479")]);
    assert_eq!(kept, mapping[..2].to_vec());
    // An open node: every server saw its own address; nothing is dropped.
    let open = vec![la("eth0", "198.18.0.12"), la("wirekube0", "10.99.0.2")];
    let mapping = vec![
        r("198.18.0.20:3478", "198.18.0.12:51820"),
        r("198.18.0.21:3478", "198.18.0.12:51820"),
    ];
    let (looped, kept) = drop_hairpin_answers(mapping.clone(), &open);
    assert!(looped.is_empty());
    assert_eq!(kept, mapping);
}

#[test]
fn rechecks_soon_while_rounds_are_inconclusive() {
    let day = Duration::from_secs(300);
    let s = Duration::from_secs;
    // (conclusive: answered with a known NAT type, failures before) -> (wait, failures after)
    for (answered, before, wait, after) in [
        (true, 0, day, 0),
        (true, 7, day, 0),
        (false, 0, s(5), 1),
        (false, 1, s(10), 2),
        (false, 3, s(40), 4),
        (false, 6, day, 7),
        (false, u32::MAX, day, u32::MAX),
    ] {
        assert_eq!(
            next_check(answered, before, day),
            (wait, after),
            "{answered} {before}"
        );
    }
}

#[test]
fn stun_servers_on_own_addresses_are_hairpin_and_not_asked() {
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    let local = vec![candidates::LocalAddr {
        ifname: "eth0".into(),
        ip: "198.18.0.13".parse().unwrap(),
        prefix_len: 24,
        loopback: false,
        up: true,
    }];
    let servers = [
        sa("198.18.0.13:30478"),
        sa("198.18.0.20:3478"),
        sa("198.18.0.13:30540"),
    ];
    let (hairpin, rest) = split_hairpin(&servers, &local);
    assert_eq!(hairpin, vec![servers[0], servers[2]]);
    assert_eq!(rest, vec![servers[1]]);
    let r = hairpin_only(&hairpin);
    assert_eq!(r.classification.nat_type, NatType::Open);
    assert_eq!(
        (r.classification.srflx, r.classification.public_ip),
        (None, None)
    );
    assert!(
        r.stun_reachable && r.message.contains("198.18.0.13:30478"),
        "{}",
        r.message
    );
}

fn report(nat: NatType, srflx: Option<&str>, from_listen: bool) -> DiscoveryReport {
    let srflx: Option<SocketAddr> = srflx.map(|s| s.parse().unwrap());
    DiscoveryReport {
        classification: Classification {
            nat_type: nat,
            public_ip: srflx.map(|s| s.ip()),
            srflx,
            detail: String::new(),
        },
        listen_port_srflx: if from_listen { srflx } else { None },
        stun_reachable: nat != NatType::UdpBlocked,
        message: String::new(),
    }
}

#[test]
fn servers_from_spec_or_relay() {
    let mut spec = WireKubePeerSpec {
        relay_endpoints: vec!["relay.example:3478".into(), "198.18.0.51:443".into()],
        ..Default::default()
    };
    assert_eq!(
        stun_servers(&spec),
        vec![
            "relay.example:3478",
            "relay.example:3479",
            "198.18.0.51:3478",
            "198.18.0.51:3479"
        ]
    );
    spec.stun_servers = vec!["a:1".into(), "b:2".into()];
    assert_eq!(stun_servers(&spec), vec!["a:1", "b:2"]);
    spec.stun_servers.clear();
    spec.relay_endpoints.clear();
    assert!(stun_servers(&spec).is_empty());
}

#[test]
fn recheck_keeps_wg_port_srflx_until_public_ip_changes() {
    let mut st = DiscoveryState::default();
    assert!(st.update(report(
        NatType::PortRestricted,
        Some("198.18.0.31:12691"),
        true
    )));
    // Re-check from an ephemeral port: same IP, other port. The WG mapping stays.
    assert!(!st.update(report(
        NatType::PortRestricted,
        Some("198.18.0.31:40000"),
        false
    )));
    assert_eq!(st.srflx, Some("198.18.0.31:12691".parse().unwrap()));
    // UDP blocked for a while: keep it, but the type changes.
    assert!(st.update(report(NatType::UdpBlocked, None, false)));
    assert!(st.srflx.is_some());
    // New public IP: the old mapping is gone.
    assert!(st.update(report(
        NatType::PortRestricted,
        Some("198.18.0.99:40000"),
        false
    )));
    assert_eq!(st.srflx, None);
}

#[test]
fn a_port_preserving_cone_keeps_the_wireguard_port_at_its_new_address() {
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    // (NAT type after the change, old srflx) -> srflx at the new address 198.18.0.99
    for (nat, old, want) in [
        (
            NatType::FullCone,
            "198.18.0.31:51820",
            Some("198.18.0.99:51820"),
        ),
        (
            NatType::AddressRestricted,
            "198.18.0.31:51820",
            Some("198.18.0.99:51820"),
        ),
        (
            NatType::PortRestricted,
            "198.18.0.31:51820",
            Some("198.18.0.99:51820"),
        ),
        // The NAT had moved the port: the new one is unknown.
        (NatType::FullCone, "198.18.0.31:12691", None),
        // Symmetric now: a srflx means nothing.
        (NatType::Symmetric, "198.18.0.31:51820", None),
    ] {
        let mut st = DiscoveryState {
            listen_port: Some(51820),
            ..Default::default()
        };
        st.update(report(NatType::FullCone, Some(old), true));
        assert!(st.update(report(nat, Some("198.18.0.99:40000"), false)));
        assert_eq!(st.srflx, want.map(sa), "{nat:?} {old}");
    }
}

#[tokio::test]
async fn no_servers_is_unknown_with_message() {
    let r = discover(&[], None, vec![], vec![], Retransmit::default()).await;
    assert_eq!(r.classification.nat_type, NatType::Unknown);
    assert!(!r.stun_reachable);
    assert!(r.message.contains("no STUN servers"), "{}", r.message);
}
