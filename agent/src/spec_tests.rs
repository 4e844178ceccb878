use super::*;
use wirekube_crds::{PathReason, PeerEntry};
use wirekube_relay_proto::PrivateKey;

fn key() -> String {
    PrivateKey::generate().public_key().to_base64()
}

fn spec() -> WireKubePeerSpec {
    WireKubePeerSpec {
        mesh: "default".into(),
        mesh_ip: "100.96.0.5".into(),
        mesh_cidr: "100.96.0.0/16".into(),
        interface_name: "wirekube0".into(),
        listen_port: 51820,
        mtu: 1420,
        relay_mode: RelayMode::Auto,
        relay_endpoints: vec!["198.18.0.51:3478".into()],
        direct_timeout: "10s".into(),
        peers: vec![
            PeerEntry {
                name: "a".into(),
                public_key: key(),
                allowed_ips: vec!["100.96.0.6/32".into()],
                endpoint: Some("198.18.0.31:51820".into()),
                path: PlannedPath::Direct,
                reason: PathReason::ConeCone,
                persistent_keepalive: 0,
                ..Default::default()
            },
            PeerEntry {
                name: "b".into(),
                public_key: key(),
                allowed_ips: vec!["100.96.0.7".into(), "10.0.0.0/8".into()],
                path: PlannedPath::Direct,
                reason: PathReason::ConeSymmetric,
                punch_toward: Some("198.18.0.11".into()),
                ..Default::default()
            },
            PeerEntry {
                name: "c".into(),
                public_key: String::new(),
                path: PlannedPath::Relay,
                ..Default::default()
            },
            PeerEntry {
                name: "d".into(),
                public_key: "garbage".into(),
                path: PlannedPath::Relay,
                ..Default::default()
            },
            PeerEntry {
                name: "e".into(),
                public_key: key(),
                allowed_ips: vec!["100.96.0.9/32".into()],
                path: PlannedPath::Relay,
                initiate: true,
                persistent_keepalive: 15,
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

const LOCAL: LocalSettings = LocalSettings {
    fwmark: 0xca6c,
    table: 51820,
    rule_priority: 5000,
};

#[test]
fn interface_address_gets_mesh_prefix() {
    let i = interface_config(&spec(), [1; 32], LOCAL).unwrap();
    assert_eq!(i.address.to_string(), "100.96.0.5/16");
    assert_eq!(i.mesh_cidr.to_string(), "100.96.0.0/16");
    assert_eq!((i.listen_port, i.mtu, i.table), (51820, 1420, 51820));
    let mut bad = spec();
    bad.mesh_ip = "10.0.0.1".into();
    assert!(matches!(
        interface_config(&bad, [1; 32], LOCAL),
        Err(SpecError::OutsideCidr { .. })
    ));
    bad.mesh_ip = "x".into();
    assert_eq!(
        interface_config(&bad, [1; 32], LOCAL),
        Err(SpecError::MeshIp("x".into()))
    );
}

#[test]
fn peers_are_validated_and_mapped() {
    let (t, problems) = peer_targets(&spec());
    let names: Vec<&str> = t.iter().map(|p| p.name.as_str()).collect();
    // c has no key yet (skipped silently), d has a broken key (reported).
    assert_eq!(names, ["a", "b", "e"]);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].to_string().contains("peer d"));
    // a: planned endpoint, no keepalive.
    assert_eq!(
        t[0].direct_endpoint,
        Some("198.18.0.31:51820".parse().unwrap())
    );
    assert_eq!(t[0].keepalive, None);
    // b: bare IPs become /32; the punch target gets the listen port and a keepalive so
    // WireGuard keeps sending toward it.
    assert_eq!(t[1].allowed_ips[0].to_string(), "100.96.0.7/32");
    assert_eq!(
        t[1].direct_endpoint,
        Some("198.18.0.11:51820".parse().unwrap())
    );
    assert_eq!(t[1].keepalive, Some(INITIATE_KEEPALIVE));
    assert_eq!(t[1].mesh_ip, Some("100.96.0.7".parse().unwrap()));
    assert_eq!(t[2].keepalive, Some(15));
    assert!(t.iter().all(|p| p.plan.relay_allowed));
    // Hole-punched pairs (cone-cone, cone-symmetric) get longer to connect; e is not one.
    let punched: Vec<bool> = t.iter().map(|p| p.plan.punched).collect();
    assert_eq!(punched, [true, true, false]);
    let mut never = spec();
    never.relay_mode = RelayMode::Never;
    assert!(peer_targets(&never).0.iter().all(|p| !p.plan.relay_allowed));
}

#[test]
fn the_side_with_the_lower_mesh_ip_breaks_ties() {
    // (own mesh IP, which of a (.6), b (.7), e (.9) this side breaks ties for)
    for (own, ties) in [
        ("100.96.0.5", [true, true, true]),
        ("100.96.0.7/16", [false, false, true]),
        ("100.96.0.10", [false, false, false]),
        ("not an address", [false, false, false]),
    ] {
        let mut s = spec();
        s.mesh_ip = own.into();
        let got: Vec<bool> = peer_targets(&s).0.iter().map(|p| p.breaks_ties).collect();
        assert_eq!(got, ties, "own mesh IP {own}");
    }
}

#[test]
fn endpoint_choice_respects_roaming_and_relay() {
    let (t, _) = peer_targets(&spec());
    let a = &t[0];
    let now = SystemTime::now();
    let relay: SocketAddr = "127.0.0.1:40001".parse().unwrap();
    let roamed: SocketAddr = "198.18.0.31:12345".parse().unwrap();
    let fresh = Some(now - Duration::from_secs(10));
    let stale = Some(now - Duration::from_secs(600));
    let long_ago = now - Duration::from_secs(3600);
    let cur = |ep: SocketAddr, hs, via_relay| Current {
        endpoint: Some(ep),
        last_handshake: hs,
        via_relay,
    };
    // Nothing yet: the planned endpoint.
    let c = peer_config(
        a,
        Want::Direct,
        Current::default(),
        Some(relay),
        long_ago,
        now,
    );
    assert_eq!(c.endpoint, a.direct_endpoint);
    assert_eq!(c.allowed_ips, a.allowed_ips);
    // Roamed and working: keep it.
    let c = peer_config(
        a,
        Want::Direct,
        cur(roamed, fresh, false),
        None,
        long_ago,
        now,
    );
    assert_eq!(c.endpoint, Some(roamed));
    // Working, but the peer published another address after that handshake (its NAT's new
    // public IP): the plan. Planned before the handshake, the address is stale (the new one
    // came by roaming first): the roamed endpoint stays.
    let old_ip: SocketAddr = "198.18.0.99:51820".parse().unwrap();
    for (planned_secs_ago, want) in [(5, a.direct_endpoint), (60, Some(old_ip))] {
        let planned = now - Duration::from_secs(planned_secs_ago);
        let c = peer_config(
            a,
            Want::Direct,
            cur(old_ip, fresh, false),
            None,
            planned,
            now,
        );
        assert_eq!(c.endpoint, want, "planned {planned_secs_ago} s ago");
    }
    // Roamed but dead: back to the plan.
    let c = peer_config(
        a,
        Want::Direct,
        cur(roamed, stale, false),
        None,
        long_ago,
        now,
    );
    assert_eq!(c.endpoint, a.direct_endpoint);
    // Probing from the relay: the direct endpoint, even though the relay works.
    let c = peer_config(
        a,
        Want::Direct,
        cur(relay, fresh, true),
        Some(relay),
        long_ago,
        now,
    );
    assert_eq!(c.endpoint, a.direct_endpoint);
    // Relay wanted: the bridge socket, even over a working direct endpoint.
    let c = peer_config(
        a,
        Want::Relay,
        cur(roamed, fresh, false),
        Some(relay),
        long_ago,
        now,
    );
    assert_eq!(c.endpoint, Some(relay));
    // Relay wanted but no bridge: leave it.
    let c = peer_config(
        a,
        Want::Relay,
        cur(roamed, fresh, false),
        None,
        long_ago,
        now,
    );
    assert_eq!(c.endpoint, Some(roamed));
    // Direct wanted, no planned endpoint, currently on relay: None (WireGuard keeps it).
    let mut e = t[2].clone();
    e.direct_endpoint = None;
    let c = peer_config(
        &e,
        Want::Direct,
        cur(relay, fresh, true),
        Some(relay),
        long_ago,
        now,
    );
    assert_eq!(c.endpoint, None);
}

/// A spec listing one key under two names (the operator quarantines such nodes, but a spec
/// written by anything else must not freeze the dataplane, which refuses the whole config):
/// both peers are skipped and reported, the others are kept.
#[test]
fn a_key_listed_twice_skips_both_peers() {
    let mut s = spec();
    let shared = key();
    s.peers[0].public_key = shared.clone();
    s.peers[4].public_key = shared;
    let (t, problems) = peer_targets(&s);
    let names: Vec<&str> = t.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["b"]);
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(
        text[1].contains("peer a") && text[1].contains("also listed for e"),
        "{text:?}"
    );
    assert!(
        text[2].contains("peer e") && text[2].contains("also listed for a"),
        "{text:?}"
    );
}

/// A peer carrying this node's own key is skipped: WireGuard ignores it, so the dataplane
/// would report it missing on every pass.
#[test]
fn own_key_is_never_a_peer() {
    let own = PrivateKey::generate().public_key();
    let mut s = spec();
    s.peers[1].public_key = own.to_base64();
    let (t, mut problems) = peer_targets(&s);
    let t = without_own_key(t, &own, &mut problems);
    let names: Vec<&str> = t.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "e"]);
    assert!(problems.iter().any(|p| {
        p.to_string()
            .contains("peer b: publicKey is this node's own")
    }));
}
