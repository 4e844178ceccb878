//! Spec → dataplane mapping (pure): the interface config, and per peer the WireGuard peer
//! config given the path state's choice of endpoint.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use wirekube_crds::{PathReason, PlannedPath, RelayMode, WireKubePeerSpec};
use wirekube_dataplane::{InterfaceConfig, PeerConfig};
use wirekube_relay_proto::PublicKey;

use crate::pathstate::{HANDSHAKE_FRESH, Plan, Want};

/// Keepalive used for peers this side must initiate or punch toward when the spec sets none:
/// it makes WireGuard send (and keep sending) from the listen port.
pub const INITIATE_KEEPALIVE: u16 = 25;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("meshIP {0:?} is not an IP address")]
    MeshIp(String),
    #[error("meshCIDR {0:?} is not a CIDR")]
    MeshCidr(String),
    #[error("meshIP {ip} is outside meshCIDR {cidr}")]
    OutsideCidr { ip: String, cidr: String },
    #[error("interfaceName is empty")]
    NoInterface,
    #[error("peer {peer}: {what}")]
    Peer { peer: String, what: String },
}

/// Node-local settings that are not in the spec (flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSettings {
    pub fwmark: u32,
    pub table: u32,
    pub rule_priority: u32,
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The interface config; the address carries the mesh prefix length.
pub fn interface_config(
    spec: &WireKubePeerSpec,
    private_key: [u8; 32],
    local: LocalSettings,
) -> Result<InterfaceConfig, SpecError> {
    if spec.interface_name.is_empty() {
        return Err(SpecError::NoInterface);
    }
    let cidr: IpNet = spec
        .mesh_cidr
        .parse()
        .map_err(|_| SpecError::MeshCidr(spec.mesh_cidr.clone()))?;
    let ip: IpAddr = parse_net(&spec.mesh_ip)
        .map(|n| n.addr())
        .ok_or_else(|| SpecError::MeshIp(spec.mesh_ip.clone()))?;
    if !cidr.contains(&ip) {
        return Err(SpecError::OutsideCidr {
            ip: spec.mesh_ip.clone(),
            cidr: spec.mesh_cidr.clone(),
        });
    }
    let address =
        IpNet::new(ip, cidr.prefix_len()).map_err(|_| SpecError::MeshIp(spec.mesh_ip.clone()))?;
    Ok(InterfaceConfig {
        name: spec.interface_name.clone(),
        private_key,
        listen_port: spec.listen_port,
        mtu: spec.mtu,
        address,
        mesh_cidr: cidr.trunc(),
        fwmark: local.fwmark,
        table: local.table,
        rule_priority: local.rule_priority,
    })
}

/// One peer of the spec, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTarget {
    pub name: String,
    pub key: PublicKey,
    pub allowed_ips: Vec<IpNet>,
    /// Where to send when direct: the planned endpoint, else the punch target (an
    /// address-restricted cone must send toward the symmetric side's IP to open its filter;
    /// WireGuard's own handshake initiations from the listen port do exactly that, and the
    /// real source port is learned by roaming when the peer's packets arrive).
    pub direct_endpoint: Option<SocketAddr>,
    pub keepalive: Option<u16>,
    pub initiate: bool,
    pub plan: Plan,
    /// First allowed IP's address: sending a datagram there triggers a handshake.
    pub mesh_ip: Option<IpAddr>,
    /// Our mesh IP is lower than the peer's: of two handshakes that crossed on the relay,
    /// this side restarts its own (`step::RELAY_CONFIRM_WINDOW`). Any fixed order of the two
    /// nodes works; mesh IPs are unique and both sides know both.
    pub breaks_ties: bool,
}

fn parse_endpoint(s: &str, default_port: u16) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| {
        s.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, default_port))
    })
}

/// Whether falling back to the relay is possible under the spec.
pub fn relay_allowed(spec: &WireKubePeerSpec) -> bool {
    spec.relay_mode != RelayMode::Never && !spec.relay_endpoints.is_empty()
}

/// Validated peers (sorted by name as in the spec) and problems with the ones skipped.
pub fn peer_targets(spec: &WireKubePeerSpec) -> (Vec<PeerTarget>, Vec<SpecError>) {
    let relay = relay_allowed(spec);
    let own_mesh_ip = parse_net(&spec.mesh_ip).map(|n| n.addr());
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for p in &spec.peers {
        let err = |what: String| SpecError::Peer {
            peer: p.name.clone(),
            what,
        };
        if p.public_key.is_empty() {
            // The peer has not published its key yet (planner reason key-missing).
            continue;
        }
        let key = match PublicKey::from_base64(&p.public_key) {
            Ok(k) => k,
            Err(e) => {
                problems.push(err(format!("publicKey: {e}")));
                continue;
            }
        };
        let mut allowed_ips = Vec::new();
        for a in &p.allowed_ips {
            match parse_net(a) {
                Some(n) => allowed_ips.push(n.trunc()),
                None => problems.push(err(format!("allowedIP {a:?} is not a CIDR"))),
            }
        }
        let endpoint = p
            .endpoint
            .as_deref()
            .and_then(|e| parse_endpoint(e, spec.listen_port));
        let punch = p
            .punch_toward
            .as_deref()
            .and_then(|e| parse_endpoint(e, spec.listen_port));
        let mut keepalive = u16::try_from(p.persistent_keepalive).unwrap_or(u16::MAX);
        if keepalive == 0 && (p.initiate || punch.is_some()) {
            keepalive = INITIATE_KEEPALIVE;
        }
        let mesh_ip = allowed_ips.first().map(|n| n.addr());
        out.push(PeerTarget {
            name: p.name.clone(),
            key,
            mesh_ip,
            breaks_ties: own_mesh_ip.zip(mesh_ip).is_some_and(|(o, m)| o < m),
            allowed_ips,
            direct_endpoint: endpoint.or(punch),
            keepalive: (keepalive > 0).then_some(keepalive),
            initiate: p.initiate,
            plan: Plan {
                planned: p.path,
                relay_allowed: relay && p.path != PlannedPath::Down,
                keepalive,
                punched: matches!(p.reason, PathReason::ConeCone | PathReason::ConeSymmetric),
            },
        });
    }
    let out = skip_shared_keys(out, &mut problems);
    (out, problems)
}

/// Drops every peer whose key is listed under another name too, reporting each. The dataplane
/// refuses a config with one key twice (one WireGuard peer per key), so without this one bad
/// spec would stop every peer; and which of the names really owns the key cannot be known
/// here (the operator quarantines such nodes, docs/operator.md "Public keys").
fn skip_shared_keys(targets: Vec<PeerTarget>, problems: &mut Vec<SpecError>) -> Vec<PeerTarget> {
    let mut by_key: HashMap<[u8; 32], Vec<&str>> = HashMap::new();
    for t in &targets {
        by_key.entry(*t.key.as_bytes()).or_default().push(&t.name);
    }
    let mut shared: HashMap<String, Vec<String>> = HashMap::new();
    for names in by_key.values().filter(|n| n.len() > 1) {
        for n in names {
            let others = names.iter().filter(|o| *o != n).map(|o| o.to_string());
            shared.insert(n.to_string(), others.collect());
        }
    }
    if shared.is_empty() {
        return targets;
    }
    targets
        .into_iter()
        .filter(|t| match shared.get(&t.name) {
            None => true,
            Some(others) => {
                problems.push(SpecError::Peer {
                    peer: t.name.clone(),
                    what: format!(
                        "publicKey is also listed for {}; all of them are skipped",
                        others.join(", ")
                    ),
                });
                false
            }
        })
        .collect()
}

/// Drops a peer that carries this node's own key (WireGuard ignores such a peer, so the
/// dataplane would find it missing on every pass), reporting it.
pub fn without_own_key(
    targets: Vec<PeerTarget>,
    own: &PublicKey,
    problems: &mut Vec<SpecError>,
) -> Vec<PeerTarget> {
    targets
        .into_iter()
        .filter(|t| {
            let mine = t.key.as_bytes() == own.as_bytes();
            if mine {
                problems.push(SpecError::Peer {
                    peer: t.name.clone(),
                    what: "publicKey is this node's own; skipped".into(),
                });
            }
            !mine
        })
        .collect()
}

/// What WireGuard currently has for a peer (from its stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Current {
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    pub via_relay: bool,
}

/// The peer config for the dataplane. Never resets an endpoint WireGuard roamed to while it
/// works: on a direct path a recent handshake over a non-relay endpoint keeps that endpoint
/// (behind symmetric NATs it is the only one that works: same address, another port). A
/// planned endpoint on another IP address that the spec gave *after* that handshake wins
/// (`planned_at`): the peer published a new address (its NAT came back on a new public IP),
/// and the old one still had a recent handshake while leading nowhere; keeping it cost the
/// pair a fall back to the relay and a wait for the next probe slot. A planned address older
/// than the handshake is stale (the peer's new address reached us by roaming before the
/// operator re-planned) and the roamed endpoint stays.
pub fn peer_config(
    t: &PeerTarget,
    want: Want,
    current: Current,
    relay_endpoint: Option<SocketAddr>,
    planned_at: SystemTime,
    now: SystemTime,
) -> PeerConfig {
    let working = current
        .last_handshake
        .is_some_and(|h| now.duration_since(h).unwrap_or(Duration::ZERO) < HANDSHAKE_FRESH);
    let endpoint = match want {
        // No bridge (relay down): leave whatever is there.
        Want::Relay => relay_endpoint.or(current.endpoint),
        Want::Direct => match current.endpoint {
            Some(cur) if !current.via_relay && working && !replanned(t, current, planned_at) => {
                Some(cur)
            }
            cur => t
                .direct_endpoint
                .or(if current.via_relay { None } else { cur }),
        },
    };
    PeerConfig {
        public_key: *t.key.as_bytes(),
        endpoint,
        allowed_ips: t.allowed_ips.clone(),
        persistent_keepalive: t.keepalive,
    }
}

/// The spec gave an endpoint on another IP address than the current one after the current
/// one's last handshake.
fn replanned(t: &PeerTarget, current: Current, planned_at: SystemTime) -> bool {
    let other_ip = match (t.direct_endpoint, current.endpoint) {
        (Some(p), Some(c)) => p.ip() != c.ip(),
        _ => false,
    };
    other_ip && current.last_handshake.is_none_or(|h| h < planned_at)
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
