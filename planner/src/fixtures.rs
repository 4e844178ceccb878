//! Builders for planner tests, benchmarks and scenario tests: a simulated machine ([`Host`])
//! produces the `NodeInfo` and the agent status a real node in that network position would.
//! Addresses follow the lab (docs/lab-findings.md §2): "public" addresses in 198.18.0.0/15.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use wirekube_crds::{
    Candidate, CandidateKind, NatType, PeerConnection, RelayMode, RelaySpec, WireKubeMeshSpec,
    WireKubePeerStatus,
};

use super::types::{NodeAddress, NodeAddressKind, NodeInfo, PlannerInput};

pub const LISTEN_PORT: u16 = 51820;
/// A port a symmetric NAT picked toward the STUN server (docs/lab-findings.md §3.1).
pub const SYMMETRIC_STUN_PORT: u16 = 52078;
pub const RELAY_ENDPOINT: &str = "198.18.0.51:3478";

/// A mesh spec with the CRD defaults, the given CIDR and relay mode.
pub fn mesh(cidr: &str, mode: RelayMode) -> WireKubeMeshSpec {
    WireKubeMeshSpec {
        mesh_cidr: cidr.into(),
        listen_port: LISTEN_PORT,
        interface_name: "wirekube0".into(),
        mtu: 1420,
        persistent_keepalive: 25,
        node_selector: BTreeMap::new(),
        stun_servers: Vec::new(),
        relay: RelaySpec {
            mode,
            ..RelaySpec::default()
        },
        routing: Default::default(),
        pod_network: Default::default(),
    }
}

/// One simulated node and what its agent reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub nat: NatType,
    /// LAN address and prefix length (a host candidate and the InternalIP).
    pub lan: Option<(IpAddr, u8)>,
    /// The address STUN sees (the NAT's outside address, or the NIC's own when open).
    pub public_ip: Option<IpAddr>,
    /// The port STUN sees; `None`: the listen port (port-preserving), or
    /// [`SYMMETRIC_STUN_PORT`] behind a symmetric NAT.
    pub mapped_port: Option<u16>,
    pub has_key: bool,
    /// The key reported instead of [`test_key`] of the name (any string, malformed ones too).
    pub raw_key: Option<String>,
    /// What this node's WireGuard observed of its peers, `(peer, ip:port)`: where each peer's
    /// packets came from. Reported as `kind: prflx` candidates with `observedBy: <peer>`, as
    /// the agent does (the address is the peer's, not this node's).
    pub saw: Vec<(String, String)>,
    /// Peers the agent reports a fallback to the relay for.
    pub fallbacks: Vec<String>,
}

impl Host {
    pub fn new(name: &str, nat: NatType) -> Host {
        Host {
            name: name.into(),
            nat,
            lan: None,
            public_ip: None,
            mapped_port: None,
            has_key: true,
            raw_key: None,
            saw: Vec::new(),
            fallbacks: Vec::new(),
        }
    }

    pub fn lan(mut self, ip: &str, prefix: u8) -> Host {
        self.lan = Some((ip.parse().expect("lan ip"), prefix));
        self
    }

    pub fn public(mut self, ip: &str) -> Host {
        self.public_ip = Some(ip.parse().expect("public ip"));
        self
    }

    pub fn mapped_port(mut self, port: u16) -> Host {
        self.mapped_port = Some(port);
        self
    }

    pub fn no_key(mut self) -> Host {
        self.has_key = false;
        self
    }

    /// This node's WireGuard saw `peer`'s packets come from `addr`.
    pub fn saw(mut self, peer: &str, addr: &str) -> Host {
        self.saw.push((peer.into(), addr.into()));
        self
    }

    pub fn fallback_to(mut self, peer: &str) -> Host {
        self.fallbacks.push(peer.into());
        self
    }

    /// Reports `key` as is (a clone's, or a malformed one).
    pub fn with_key(mut self, key: &str) -> Host {
        self.has_key = true;
        self.raw_key = Some(key.into());
        self
    }

    pub fn key(&self) -> String {
        self.raw_key.clone().unwrap_or_else(|| test_key(&self.name))
    }

    /// The `ip:port` peers reach this node's STUN mapping at.
    pub fn srflx(&self) -> Option<String> {
        let ip = self.public_ip?;
        let port = self.mapped_port.unwrap_or(match self.nat {
            NatType::Symmetric => SYMMETRIC_STUN_PORT,
            _ => LISTEN_PORT,
        });
        Some(SocketAddr::new(ip, port).to_string())
    }

    /// The LAN endpoint (`lan ip:listen port`).
    pub fn host_endpoint(&self) -> Option<String> {
        self.lan
            .map(|(ip, _)| SocketAddr::new(ip, LISTEN_PORT).to_string())
    }

    pub fn node_info(&self) -> NodeInfo {
        let mut n = NodeInfo::new(&self.name);
        if let Some((ip, _)) = self.lan {
            n.addresses.push(NodeAddress {
                kind: NodeAddressKind::InternalIp,
                ip,
            });
        }
        // Clouds report a public IP on the NIC and an elastic IP (1:1 NAT) alike.
        if let (NatType::Open | NatType::OneToOne, Some(ip)) = (self.nat, self.public_ip) {
            n.addresses.push(NodeAddress {
                kind: NodeAddressKind::ExternalIp,
                ip,
            });
        }
        n
    }

    pub fn status(&self) -> WireKubePeerStatus {
        let mut candidates = Vec::new();
        if let (Some((_, prefix)), Some(addr)) = (self.lan, self.host_endpoint()) {
            candidates.push(Candidate {
                kind: CandidateKind::Host,
                address: addr,
                prefix_length: Some(prefix),
                observed_by: None,
            });
        }
        // No STUN answer: no mapping, no public IP.
        let stun_answers = self.nat != NatType::UdpBlocked;
        if let Some(addr) = self.srflx().filter(|_| stun_answers) {
            candidates.push(Candidate {
                kind: CandidateKind::Srflx,
                address: addr,
                prefix_length: None,
                observed_by: None,
            });
        }
        for (peer, addr) in &self.saw {
            candidates.push(Candidate {
                kind: CandidateKind::Prflx,
                address: addr.clone(),
                prefix_length: None,
                observed_by: Some(peer.clone()),
            });
        }
        WireKubePeerStatus {
            public_key: self.has_key.then(|| self.key()),
            candidates,
            nat_type: self.nat,
            public_ip: self
                .public_ip
                .filter(|_| stun_answers)
                .map(|ip| ip.to_string()),
            connections: self
                .fallbacks
                .iter()
                .map(|p| PeerConnection {
                    name: p.clone(),
                    fallback: true,
                    ..PeerConnection::default()
                })
                .collect(),
            ..WireKubePeerStatus::default()
        }
    }
}

/// A planner input for `hosts` with (or without) a published relay.
pub fn input(spec: WireKubeMeshSpec, hosts: &[Host], relay: bool) -> PlannerInput {
    let mut input = PlannerInput::new("default", spec);
    if relay {
        input.relay_endpoints = vec![RELAY_ENDPOINT.into()];
        input.relay_token_secret = Some("wirekube-relay-token".into());
    }
    input.nodes = hosts.iter().map(Host::node_info).collect();
    input.statuses = hosts.iter().map(|h| (h.name.clone(), h.status())).collect();
    input
}

/// NAT types of the synthetic sites, in rotation: mostly clouds (symmetric) and homes (cones),
/// some public nodes, a TCP-only site.
const SITE_NATS: [NatType; 8] = [
    NatType::Symmetric,
    NatType::PortRestricted,
    NatType::FullCone,
    NatType::Symmetric,
    NatType::AddressRestricted,
    NatType::Open,
    NatType::PortRestricted,
    NatType::UdpBlocked,
];

/// `n` nodes in sites of 8 (one LAN and one NAT per site), deterministic. Node names are
/// `node-00000` … so that name order equals creation order.
pub fn synthetic_hosts(n: usize) -> Vec<Host> {
    (0..n)
        .map(|i| {
            let site = i / 8;
            let nat = SITE_NATS[site % SITE_NATS.len()];
            let (hi, lo) = ((site / 250) % 250, site % 250);
            let lan = format!("10.{hi}.{lo}.{}", 10 + i % 8);
            let public = match nat {
                // Every public node has its own address.
                NatType::Open => format!("198.19.{}.{}", (i / 250) % 250, 1 + i % 250),
                _ => format!("198.18.{hi}.{}", 1 + lo),
            };
            Host::new(&format!("node-{i:05}"), nat)
                .lan(&lan, 24)
                .public(&public)
                .mapped_port(if nat == NatType::Symmetric {
                    20000 + (i % 40000) as u16
                } else {
                    LISTEN_PORT
                })
        })
        .collect()
}

/// A well-formed public key (base64 of 32 bytes) made from `label`, distinct for distinct
/// labels of up to 32 bytes: the planner quarantines malformed keys, so fixtures need real ones.
pub fn test_key(label: &str) -> String {
    use base64::Engine;
    let mut k = [0u8; 32];
    for (d, s) in k.iter_mut().zip(label.bytes()) {
        *d = s;
    }
    base64::engine::general_purpose::STANDARD.encode(k)
}
