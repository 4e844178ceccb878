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
    c.handshake_sec == 0 && c.handshake_nsec == 0 && c.rx_bytes == 0 && !roamed(c, written)
}

/// WireGuard's endpoint is not the one we wrote last (it took it from a packet).
fn roamed(c: &PeerState, written: Option<&Option<SocketAddr>>) -> bool {
    written.map_or(c.endpoint.is_some(), |w| c.endpoint != *w)
}

/// A handshake restart the agent asked for (`Dataplane::restart_handshake`), weakest first:
/// asked twice in one pass, the stronger one is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Restart {
    /// Only if the peer never received anything (`nothing_to_lose`).
    Unused,
    /// Also if it received something, as long as no handshake completed and its endpoint is
    /// the one we wrote: a direct pair whose two sides initiated at once. Each side answered
    /// the other's initiation, which replaced its own handshake state, so each dropped the
    /// answer to its own, and both waited for WireGuard's 5 s retry (wireguard-go's log in
    /// the NAT grid: "Received handshake initiation", "Sending handshake response", then
    /// nothing for 5 s on both ends). A fresh initiation from one side completes at once.
    /// Only one side of a pair asks for this (two restarting sides cross again).
    Crossed,
    /// Also if it received something or completed a handshake, as long as its endpoint is
    /// the one we wrote: a pair on the relay whose requests get no answer (crossed
    /// initiations left a session that carries one direction or none; the agent's
    /// `step::PeerPath::trigger`). Only one side of a pair asks for this (two restarting
    /// sides cross again), and only for the relay, where the endpoint is our own bridge
    /// socket and a restart loses nothing that works.
    Unconfirmed,
}

/// Computes the WireGuard writes that bring `cur` to `iface` + `peers`.
pub(crate) fn wg_changes(
    cur: &DeviceState,
    iface: &InterfaceConfig,
    peers: &[PeerConfig],
    memory: &EndpointMemory,
    restart: &HashMap<[u8; 32], Restart>,
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
                let asked = restart.get(&p.public_key).copied();
                let restart_to = asked.and(p.endpoint.or(c.endpoint));
                let written = memory.get(&p.public_key);
                let no_session = c.handshake_sec == 0 && c.handshake_nsec == 0;
                let recreate = nothing_to_lose(c, written)
                    || (asked == Some(Restart::Unconfirmed) && !roamed(c, written))
                    || (asked == Some(Restart::Crossed) && no_session && !roamed(c, written));
                if let Some(d) = endpoint.or(restart_to)
                    && recreate
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
#[path = "diff_tests.rs"]
mod tests;
