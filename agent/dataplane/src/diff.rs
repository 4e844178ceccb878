//! Pure reconcile decisions: desired vs. current WireGuard state → minimal changes.
//!
//! The endpoint rule is the subtle one. WireGuard roams: when a peer's packets arrive
//! from a new address (a NAT rebinding, the other side moving to the relay), it updates
//! the endpoint by itself, and behind port-changing NATs that learned endpoint is the only
//! one that works. So reconcile writes an endpoint only when the peer is new or when the
//! *desired* endpoint changed since the last reconcile; a current endpoint that differs
//! from an unchanged desired one is left alone.
//!
//! After a restart there is no "last desired" memory. Then the endpoint is written only if
//! the current one is unset, points at loopback (a relay-bridge port of the previous
//! process, now dead), or has no handshake in the last [`ROAMED_FRESH`]; otherwise the
//! roamed endpoint is working and is kept.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::error::DataplaneError;
use crate::stats::handshake_time;
use crate::types::{InterfaceConfig, PeerConfig};
use crate::uapi::{DeviceState, PeerState, WgChange};

/// A handshake this recent proves the current endpoint works (WireGuard's REJECT_AFTER_TIME).
pub(crate) const ROAMED_FRESH: Duration = Duration::from_secs(180);

/// Desired endpoint per peer as of the last successful reconcile.
pub(crate) type EndpointMemory = HashMap<[u8; 32], Option<SocketAddr>>;

pub(crate) fn validate(
    iface: &InterfaceConfig,
    peers: &[PeerConfig],
) -> Result<(), DataplaneError> {
    if iface.name.is_empty() || iface.name.len() > 15 || iface.name.contains('/') {
        return Err(DataplaneError::InvalidConfig(format!(
            "interface name {:?} must be 1-15 bytes without '/'",
            iface.name
        )));
    }
    if !iface.mesh_cidr.contains(&iface.address.addr()) {
        return Err(DataplaneError::InvalidConfig(format!(
            "address {} is outside mesh_cidr {}",
            iface.address, iface.mesh_cidr
        )));
    }
    validate_table(iface.table)?;
    validate_rule_priority(iface.rule_priority)?;
    let mut seen = HashSet::new();
    for p in peers {
        if !seen.insert(p.public_key) {
            return Err(DataplaneError::InvalidConfig(format!(
                "peer {} listed twice",
                short(&p.public_key)
            )));
        }
    }
    Ok(())
}

/// A routing table WireKube may use: not unspec (0) nor the kernel's default, main and
/// local tables (253-255), whose other routes and rules the whole host depends on.
pub fn validate_table(table: u32) -> Result<(), DataplaneError> {
    if table == 0 || (253..=255).contains(&table) {
        return Err(DataplaneError::InvalidConfig(format!(
            "table {table} is reserved (0, 253 default, 254 main, 255 local); use a table of WireKube's own, such as the default {}",
            crate::DEFAULT_TABLE
        )));
    }
    Ok(())
}

/// A rule priority WireKube may use: the bypass rule takes `priority - 1`, which must stay
/// above the local table's rule (0), and both must come before the main table's (32766).
pub fn validate_rule_priority(priority: u32) -> Result<(), DataplaneError> {
    if !(2..32766).contains(&priority) {
        return Err(DataplaneError::InvalidConfig(format!(
            "rule priority {priority} must be in 2..32766 (after the local rule at 0, with room for the bypass rule at priority - 1, before the main table rule at 32766)"
        )));
    }
    Ok(())
}

pub(crate) fn short(k: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(k)[..8].to_string()
}

/// X25519 scalar clamping, as WireGuard applies it to private keys.
fn clamp(mut k: [u8; 32]) -> [u8; 32] {
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

fn ip_set(ips: &[IpNet]) -> BTreeSet<IpNet> {
    // WireGuard stores allowed IPs masked (10.0.0.5/24 reads back as 10.0.0.0/24).
    ips.iter().map(|n| n.trunc()).collect()
}

fn keep_current_endpoint(cur: &PeerState, desired: SocketAddr, now: SystemTime) -> bool {
    let Some(current) = cur.endpoint else {
        return false;
    };
    if current.ip().is_loopback() {
        return false;
    }
    handshake_time(cur.handshake_sec, cur.handshake_nsec, now)
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age < ROAMED_FRESH)
        && current != desired
}

/// The peer never completed a handshake and nothing came from it: it has no session, and no
/// handshake in progress, that re-creating it could lose.
///
/// A new endpoint for such a peer is written as remove + create. Engines rate-limit handshake
/// initiations to one per REKEY_TIMEOUT (5 s) and record the attempt even when it could not be
/// sent (no endpoint yet) or was dropped on the way (the relay not connected yet, a NAT without
/// a hole, a peer that had not configured us yet): wireguard-go's `SendHandshakeInitiation`
/// stamps `lastSentHandshake` before sending, the kernel does the same with
/// `last_sent_handshake`. A datagram routed to the peer before its planned endpoint arrived
/// would then hold the first initiation over the planned path back for up to 5 s. A created
/// peer starts with that stamp in the past (both engines), so the next datagram initiates.
/// The same holds for a peer in `restart` (the agent asks while such a pair is connecting,
/// see `PeerPath::trigger` in the agent), whose endpoint did not change.
///
/// Received bytes without a handshake mean the peer's initiation reached us and we answered:
/// the responder's session is complete only with the initiator's first data packet, and the
/// endpoint WireGuard took from the initiation may be the only way back (a symmetric NAT's
/// port). Re-creating the peer then lost both, while the initiator counted the pair as
/// connected: the NAT grid's CGNAT <-> symmetric pair fell back to the relay that way. An
/// endpoint other than the one we `written` last is the same sign (WireGuard took it from an
/// initiation): it also covers an engine that counts no handshake bytes, and an initiation
/// that arrived after the agent's own stats read.
fn nothing_to_lose(c: &PeerState, written: Option<&Option<SocketAddr>>) -> bool {
    let roamed = written.map_or(c.endpoint.is_some(), |w| c.endpoint != *w);
    c.handshake_sec == 0 && c.handshake_nsec == 0 && c.rx_bytes == 0 && !roamed
}

/// Computes the WireGuard writes that bring `cur` to `iface` + `peers`.
pub(crate) fn wg_changes(
    cur: &DeviceState,
    iface: &InterfaceConfig,
    peers: &[PeerConfig],
    memory: &EndpointMemory,
    restart: &HashSet<[u8; 32]>,
    now: SystemTime,
) -> Vec<WgChange> {
    let mut out = Vec::new();
    // Engines store and report the clamped scalar (wireguard-go does), so compare clamped.
    let key =
        (cur.private_key.map(clamp) != Some(clamp(iface.private_key))).then_some(iface.private_key);
    let port = (cur.listen_port != iface.listen_port).then_some(iface.listen_port);
    let mark = (cur.fwmark != iface.fwmark).then_some(iface.fwmark);
    if key.is_some() || port.is_some() || mark.is_some() {
        out.push(WgChange::Interface {
            private_key: key,
            listen_port: port,
            fwmark: mark,
        });
    }
    let current: HashMap<[u8; 32], &PeerState> =
        cur.peers.iter().map(|p| (p.public_key, p)).collect();
    for p in peers {
        let keepalive = p.persistent_keepalive.unwrap_or(0);
        match current.get(&p.public_key) {
            None => out.push(WgChange::Peer {
                public_key: p.public_key,
                create: true,
                endpoint: p.endpoint,
                persistent_keepalive: (keepalive != 0).then_some(keepalive),
                allowed_ips: Some(p.allowed_ips.clone()),
            }),
            Some(c) => {
                let ips = (ip_set(&c.allowed_ips) != ip_set(&p.allowed_ips))
                    .then(|| p.allowed_ips.clone());
                let ka = (c.persistent_keepalive != keepalive).then_some(keepalive);
                let endpoint = match (p.endpoint, memory.get(&p.public_key)) {
                    (None, _) => None,
                    (Some(d), Some(last)) if *last == Some(d) => None,
                    (Some(d), Some(_)) => (c.endpoint != Some(d)).then_some(d),
                    (Some(d), None) => {
                        (c.endpoint != Some(d) && !keep_current_endpoint(c, d, now)).then_some(d)
                    }
                };
                // A restart keeps the endpoint WireGuard has when none is desired.
                let restart_to = restart
                    .contains(&p.public_key)
                    .then(|| p.endpoint.or(c.endpoint))
                    .flatten();
                if let Some(d) = endpoint.or(restart_to)
                    && nothing_to_lose(c, memory.get(&p.public_key))
                {
                    // A new peer again: resets the engine's handshake rate limit (below).
                    out.push(WgChange::Remove(p.public_key));
                    out.push(WgChange::Peer {
                        public_key: p.public_key,
                        create: true,
                        endpoint: Some(d),
                        persistent_keepalive: (keepalive != 0).then_some(keepalive),
                        allowed_ips: Some(p.allowed_ips.clone()),
                    });
                } else if ips.is_some() || ka.is_some() || endpoint.is_some() {
                    out.push(WgChange::Peer {
                        public_key: p.public_key,
                        create: false,
                        endpoint,
                        persistent_keepalive: ka,
                        allowed_ips: ips,
                    });
                }
            }
        }
    }
    let wanted: HashSet<[u8; 32]> = peers.iter().map(|p| p.public_key).collect();
    for c in &cur.peers {
        if !wanted.contains(&c.public_key) {
            out.push(WgChange::Remove(c.public_key));
        }
    }
    out
}

/// The peers whose endpoint `changes` write.
pub(crate) fn endpoints_written(changes: &[WgChange]) -> Vec<[u8; 32]> {
    changes
        .iter()
        .filter_map(|c| match c {
            WgChange::Peer {
                public_key,
                endpoint: Some(_),
                ..
            } => Some(*public_key),
            _ => None,
        })
        .collect()
}

/// The prefixes that get a route in the mesh table: every peer AllowedIP, masked.
pub(crate) fn route_prefixes(peers: &[PeerConfig]) -> BTreeSet<IpNet> {
    peers.iter().flat_map(|p| ip_set(&p.allowed_ips)).collect()
}

#[cfg(test)]
mod tests {
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
            &HashSet::new(),
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
            &HashSet::new(),
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
            &HashSet::new(),
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
        let restart_set: HashSet<[u8; 32]> = [[2; 32]].into_iter().collect();
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
        let restart_set: HashSet<[u8; 32]> = [[2; 32]].into_iter().collect();
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
            let restart_set: HashSet<[u8; 32]> = restart.then_some([2; 32]).into_iter().collect();
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
                &HashSet::new(),
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
                &HashSet::new(),
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
                &HashSet::new(),
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
            &HashSet::new(),
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
                &HashSet::new(),
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
            &HashSet::new(),
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
                &HashSet::new(),
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
}
