//! Table tests of the reconcile decisions in `diff.rs`.

use super::*;

fn iface() -> InterfaceConfig {
    InterfaceConfig {
        name: "wk0".into(),
        private_key: [1; 32],
        listen_port: 51820,
        mtu: 1420,
        address: "100.96.0.1/16".parse().unwrap(),
        mesh_cidr: "100.96.0.0/16".parse().unwrap(),
        fwmark: 51820,
        table: 51820,
        rule_priority: 100,
    }
}

#[test]
fn no_debug_output_shows_a_private_key() {
    let key = [0xab_u8; 32];
    let iface = InterfaceConfig {
        private_key: key,
        ..iface()
    };
    let state = DeviceState {
        private_key: Some(key),
        ..DeviceState::default()
    };
    let change = WgChange::Interface {
        private_key: Some(key),
        listen_port: Some(51820),
        fwmark: None,
    };
    for text in [
        format!("{iface:?}"),
        format!("{iface:#?}"),
        format!("{state:?}"),
        format!("{change:?}"),
        format!("{:?}", vec![change.clone()]),
    ] {
        assert!(!text.contains("171"), "key bytes in {text}");
        assert!(!text.contains("ab, ab") && !text.contains("AB"), "{text}");
        assert!(text.contains(crate::types::REDACTED), "{text}");
    }
}

fn peer(k: u8, ep: Option<&str>) -> PeerConfig {
    PeerConfig {
        public_key: [k; 32],
        endpoint: ep.map(|e| e.parse().unwrap()),
        allowed_ips: vec![format!("100.96.0.{k}/32").parse().unwrap()],
        persistent_keepalive: Some(25),
    }
}

fn state_of(peers: &[PeerConfig]) -> DeviceState {
    DeviceState {
        private_key: Some([1; 32]),
        listen_port: 51820,
        fwmark: 51820,
        peers: peers
            .iter()
            .map(|p| PeerState {
                public_key: p.public_key,
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips.clone(),
                persistent_keepalive: p.persistent_keepalive.unwrap_or(0),
                ..Default::default()
            })
            .collect(),
    }
}

fn memory_of(peers: &[PeerConfig]) -> EndpointMemory {
    peers.iter().map(|p| (p.public_key, p.endpoint)).collect()
}

#[test]
fn converged_state_needs_nothing() {
    let peers = vec![peer(2, Some("10.0.0.2:51820")), peer(3, None)];
    let cur = state_of(&peers);
    let ch = wg_changes(
        &cur,
        &iface(),
        &peers,
        &memory_of(&peers),
        &HashMap::new(),
        SystemTime::now(),
    );
    assert!(ch.is_empty(), "{ch:?}");
}

#[test]
fn roamed_endpoint_is_kept_while_desired_is_unchanged() {
    let peers = vec![peer(2, Some("10.0.0.2:51820"))];
    let mut cur = state_of(&peers);
    cur.peers[0].endpoint = Some("198.18.0.11:59977".parse().unwrap());
    let ch = wg_changes(
        &cur,
        &iface(),
        &peers,
        &memory_of(&peers),
        &HashMap::new(),
        SystemTime::now(),
    );
    assert!(ch.is_empty(), "{ch:?}");
}

#[test]
fn changed_desired_endpoint_is_pushed() {
    let old = vec![peer(2, Some("10.0.0.2:51820"))];
    let new = vec![peer(2, Some("127.0.0.1:40000"))];
    let mut cur = state_of(&old);
    // It had a session (which an update keeps); see the next test for one without.
    cur.peers[0].handshake_sec = 1_764_000_000;
    let ch = wg_changes(
        &cur,
        &iface(),
        &new,
        &memory_of(&old),
        &HashMap::new(),
        SystemTime::now(),
    );
    assert_eq!(
        ch,
        vec![WgChange::Peer {
            public_key: [2; 32],
            create: false,
            endpoint: Some("127.0.0.1:40000".parse().unwrap()),
            persistent_keepalive: None,
            allowed_ips: None,
        }]
    );
}

fn restarts(keys: &[[u8; 32]]) -> HashMap<[u8; 32], Restart> {
    keys.iter().map(|k| (*k, Restart::Unused)).collect()
}

#[test]
fn each_restart_kind_recreates_what_it_may_and_never_a_roamed_endpoint() {
    let relay = Some("127.0.0.1:40000");
    let roamed = Some("198.18.0.18:40001");
    let unconfirmed = Some(Restart::Unconfirmed);
    // (handshake_sec, rx bytes, endpoint WireGuard has, restart asked, re-created)
    let cases = [
        (0, 148, relay, unconfirmed, true),
        (1_764_000_000, 148, relay, unconfirmed, true),
        (0, 148, relay, Some(Restart::Unused), false),
        (0, 148, relay, None, false),
        (0, 0, relay, Some(Restart::Unused), true),
        (1_764_000_000, 0, relay, Some(Restart::Unused), false),
        // An endpoint WireGuard roamed to: kept whatever is asked.
        (0, 148, roamed, unconfirmed, false),
        // Crossed initiations: re-created while no handshake completed, endpoint ours.
        (0, 148, relay, Some(Restart::Crossed), true),
        (1_764_000_000, 148, relay, Some(Restart::Crossed), false),
        (0, 148, roamed, Some(Restart::Crossed), false),
    ];
    for (hs, rx, has, asked, recreated) in cases {
        let mut cur = state_of(&[peer(2, has)]);
        cur.peers[0].handshake_sec = hs;
        cur.peers[0].rx_bytes = rx;
        let asked_map: HashMap<[u8; 32], Restart> =
            asked.map(|a| ([2; 32], a)).into_iter().collect();
        let ch = wg_changes(
            &cur,
            &iface(),
            &[peer(2, relay)],
            &memory_of(&[peer(2, relay)]),
            &asked_map,
            SystemTime::now(),
        );
        assert_eq!(
            ch.first() == Some(&WgChange::Remove([2; 32])),
            recreated,
            "handshake {hs}, rx {rx}, endpoint {has:?}, asked {asked:?}: {ch:?}"
        );
    }
}

#[test]
fn a_peer_without_handshake_is_recreated_for_a_new_endpoint_or_a_restart() {
    let (direct, relay) = (Some("10.0.0.2:51820"), Some("127.0.0.1:40000"));
    // (endpoint before, endpoint wanted now, handshake_sec, restart asked,
    //  re-created with this endpoint)
    let cases = [
        (None, direct, 0, false, direct),
        (relay, direct, 0, false, direct),
        (direct, relay, 0, false, relay),
        // A session to keep: the endpoint is updated in place, a restart is ignored.
        (relay, direct, 1_764_000_000, false, None),
        (direct, direct, 1_764_000_000, true, None),
        // No endpoint write: nothing happens, unless a restart is asked.
        (direct, direct, 0, false, None),
        (direct, None, 0, false, None),
        (direct, direct, 0, true, direct),
        // None desired: the restart keeps WireGuard's endpoint; without one, nothing.
        (direct, None, 0, true, direct),
        (None, None, 0, true, None),
    ];
    // An endpoint WireGuard roamed to (from an initiation): no restart either.
    let mut cur = state_of(&[peer(2, direct)]);
    cur.peers[0].endpoint = "198.18.0.18:40001".parse().ok();
    let restart_set = restarts(&[[2; 32]]);
    let ch = wg_changes(
        &cur,
        &iface(),
        &[peer(2, direct)],
        &memory_of(&[peer(2, direct)]),
        &restart_set,
        SystemTime::now(),
    );
    assert!(ch.is_empty(), "{ch:?}");
    // Something received (an initiation answered): a new endpoint is written in place,
    // a restart is ignored.
    let mut cur = state_of(&[peer(2, relay)]);
    cur.peers[0].rx_bytes = 148;
    let restart_set = restarts(&[[2; 32]]);
    for (wanted, want) in [(relay, 0), (direct, 1)] {
        let ch = wg_changes(
            &cur,
            &iface(),
            &[peer(2, wanted)],
            &memory_of(&[peer(2, relay)]),
            &restart_set,
            SystemTime::now(),
        );
        assert_eq!(ch.len(), want, "{ch:?}");
        assert!(
            ch.iter()
                .all(|c| matches!(c, WgChange::Peer { create: false, .. }))
        );
    }
    for (before, wanted, hs, restart, recreated) in cases {
        let old = vec![peer(2, before)];
        let new = vec![peer(2, wanted)];
        let mut cur = state_of(&old);
        cur.peers[0].handshake_sec = hs;
        let restart_set: HashMap<[u8; 32], Restart> = restart
            .then_some(([2; 32], Restart::Unused))
            .into_iter()
            .collect();
        let ch = wg_changes(
            &cur,
            &iface(),
            &new,
            &memory_of(&old),
            &restart_set,
            SystemTime::now(),
        );
        let want = if let Some(ep) = recreated {
            vec![
                WgChange::Remove([2; 32]),
                WgChange::Peer {
                    public_key: [2; 32],
                    create: true,
                    endpoint: ep.parse().ok(),
                    persistent_keepalive: Some(25),
                    allowed_ips: Some(new[0].allowed_ips.clone()),
                },
            ]
        } else if before != wanted && wanted.is_some() {
            // Only the in-place update of a peer with a session.
            vec![WgChange::Peer {
                public_key: [2; 32],
                create: false,
                endpoint: wanted.map(|e| e.parse().unwrap()),
                persistent_keepalive: None,
                allowed_ips: None,
            }]
        } else {
            Vec::new()
        };
        assert_eq!(
            ch, want,
            "{before:?} -> {wanted:?}, handshake {hs}, restart {restart}"
        );
    }
}

#[test]
fn after_restart_fresh_roamed_endpoint_is_kept_but_stale_loopback_is_not() {
    let now = SystemTime::now();
    let epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 10;
    let peers = vec![peer(2, Some("10.0.0.2:51820"))];
    let mut cur = state_of(&peers);
    cur.peers[0].endpoint = Some("198.18.0.11:59977".parse().unwrap());
    cur.peers[0].handshake_sec = epoch;
    assert!(
        wg_changes(
            &cur,
            &iface(),
            &peers,
            &EndpointMemory::new(),
            &HashMap::new(),
            now
        )
        .is_empty()
    );
    // Without a recent handshake the roamed endpoint is not proven; write the desired.
    cur.peers[0].handshake_sec = epoch - 1000;
    assert_eq!(
        wg_changes(
            &cur,
            &iface(),
            &peers,
            &EndpointMemory::new(),
            &HashMap::new(),
            now
        )
        .len(),
        1
    );
    // A loopback endpoint belonged to the previous process's relay bridge.
    cur.peers[0].handshake_sec = epoch;
    cur.peers[0].endpoint = Some("127.0.0.1:41234".parse().unwrap());
    assert_eq!(
        wg_changes(
            &cur,
            &iface(),
            &peers,
            &EndpointMemory::new(),
            &HashMap::new(),
            now
        )
        .len(),
        1
    );
}

#[test]
fn new_removed_and_changed_peers() {
    let old = vec![peer(2, None), peer(3, None)];
    let mut new = vec![peer(2, None), peer(4, Some("10.0.0.4:1"))];
    new[0].allowed_ips.push("10.244.2.0/24".parse().unwrap());
    let ch = wg_changes(
        &state_of(&old),
        &iface(),
        &new,
        &memory_of(&old),
        &HashMap::new(),
        SystemTime::now(),
    );
    assert_eq!(ch.len(), 3);
    assert!(
        matches!(&ch[0], WgChange::Peer { create: false, allowed_ips: Some(v), .. } if v.len() == 2)
    );
    assert!(matches!(&ch[1], WgChange::Peer { create: true, .. }));
    assert_eq!(ch[2], WgChange::Remove([3; 32]));
}

#[test]
fn allowed_ips_compare_masked() {
    let mut p = peer(2, None);
    p.allowed_ips = vec!["10.244.2.7/24".parse().unwrap()];
    let mut cur = state_of(std::slice::from_ref(&p));
    cur.peers[0].allowed_ips = vec!["10.244.2.0/24".parse().unwrap()];
    assert!(
        wg_changes(
            &cur,
            &iface(),
            &[p],
            &EndpointMemory::new(),
            &HashMap::new(),
            SystemTime::now()
        )
        .is_empty()
    );
}

#[test]
fn interface_key_change() {
    let mut cur = state_of(&[]);
    cur.private_key = Some([9; 32]);
    let ch = wg_changes(
        &cur,
        &iface(),
        &[],
        &EndpointMemory::new(),
        &HashMap::new(),
        SystemTime::now(),
    );
    assert_eq!(
        ch,
        vec![WgChange::Interface {
            private_key: Some([1; 32]),
            listen_port: None,
            fwmark: None
        }]
    );
}

#[test]
fn clamped_private_key_is_the_same_key() {
    let mut i = iface();
    i.private_key = [0xff; 32];
    let mut cur = state_of(&[]);
    cur.private_key = Some(clamp([0xff; 32]));
    assert!(
        wg_changes(
            &cur,
            &i,
            &[],
            &EndpointMemory::new(),
            &HashMap::new(),
            SystemTime::now()
        )
        .is_empty()
    );
}

#[test]
fn validation() {
    assert!(validate(&iface(), &[peer(2, None)]).is_ok());
    assert!(validate(&iface(), &[peer(2, None), peer(2, None)]).is_err());
    let mut bad = iface();
    bad.address = "10.0.0.1/16".parse().unwrap();
    assert!(validate(&bad, &[]).is_err());
}

#[test]
fn table_and_priority_bounds() {
    for t in [0, 253, 254, 255] {
        let e = validate_table(t).unwrap_err().to_string();
        assert!(e.contains(&format!("table {t} is reserved")), "{e}");
    }
    for t in [1, 252, 256, crate::DEFAULT_TABLE, u32::MAX] {
        assert!(validate_table(t).is_ok(), "{t}");
    }
    for p in [0, 1, 32766, 32767, u32::MAX] {
        assert!(validate_rule_priority(p).is_err(), "{p}");
    }
    for p in [2, crate::DEFAULT_RULE_PRIORITY, 32765] {
        assert!(validate_rule_priority(p).is_ok(), "{p}");
    }
    let mut i = iface();
    i.rule_priority = 1;
    assert!(validate(&i, &[]).is_err());
    i.rule_priority = 100;
    i.table = 254;
    assert!(validate(&i, &[]).is_err());
}
