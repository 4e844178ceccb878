//! Per-node facts, derived once per node so that the O(n²) pair loop only compares small
//! precomputed values and clones ready-made strings.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use wirekube_crds::{CandidateKind, NatType, PathReason, WireKubePeerStatus};

use super::types::{NodeAddressKind, NodeInfo};

/// A host (interface) candidate the node reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostCandidate {
    /// `ip:port` as reported (the endpoint to send to).
    pub addr: String,
    pub ip: IpAddr,
    /// The interface's subnet, when the agent reported a prefix length. Without it the
    /// candidate can still be an endpoint but proves nothing about sharing a LAN.
    pub net: Option<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeFacts {
    pub name: Arc<str>,
    /// The reported public key, when it is a well-formed one.
    pub key: Option<String>,
    /// Why the reported key is unusable (the node is quarantined), when it is malformed.
    pub bad_key: Option<String>,
    /// NAT type the rules use: the reported one, downgraded to `Unknown` when the endpoint
    /// that type relies on is missing (an "open" node without a public endpoint, a cone
    /// without a STUN mapping, a symmetric NAT without a known public IP).
    pub nat: NatType,
    /// Public IP as seen from outside (`status.publicIP`, else the STUN mapping's IP).
    pub public_ip: Option<IpAddr>,
    pub hosts: Vec<HostCandidate>,
    /// `InternalIP:listenPort`, the LAN endpoint when the agent reported no host candidate.
    pub internal: Option<String>,
    /// The STUN-observed mapping (docs/lab-findings.md §3.4: not necessarily the listen port).
    pub srflx: Option<String>,
    /// Where anybody can reach an `open` node: its mapping (equal to its own address), else
    /// `publicIP:listenPort`, else `ExternalIP:listenPort`.
    pub public_ep: Option<String>,
    /// `publicIP:listenPort`: what a cone peer sends a few packets toward so that its
    /// address-restricted filter admits this node (any port of the right IP opens it).
    pub punch_target: Option<String>,
    /// Peer-reflexive endpoints of this node's peers, `(peer, ip:port)`, sorted by peer: where
    /// this node's WireGuard saw each peer's packets come from (the agent's `kind: prflx`
    /// candidates, `observedBy` = the peer the address belongs to). Not this node's address.
    pub prflx: Vec<(String, String)>,
    /// Peers this node reports a fallback to the relay for, sorted.
    pub fallback_peers: Vec<String>,
    pub mesh_ip: Option<IpAddr>,
    /// `mesh_ip` as the spec writes it (empty when none could be allocated).
    pub mesh_ip_text: String,
    /// `meshIP/32` (or `/128`) and the prefixes routed to this node everywhere (pod CIDRs,
    /// node routes); empty when no IP could be allocated.
    pub allowed_ips: Vec<String>,
    /// `allowed_ips` plus the node's InternalIP /32: what peers at other sites route to it.
    /// Equal to `allowed_ips` when InternalIPs are not carried.
    pub allowed_ips_remote: Vec<String>,
    /// The node's own pod CIDRs as the spec writes them (all of them, carried or not).
    pub pod_cidrs: Vec<String>,
    /// The Node's `ExternalIP`s, copied into its spec (the agent recognises a 1:1 NAT by them).
    pub external_ips: Vec<String>,
    /// The carried prefixes (input of the two lists above, kept for `update_status`).
    pub routed: Vec<IpNet>,
    pub internal_route: Option<IpNet>,
}

impl NodeFacts {
    pub fn build(
        node: &NodeInfo,
        status: Option<&WireKubePeerStatus>,
        mesh_ip: Option<IpAddr>,
        listen_port: u16,
        routed: Vec<IpNet>,
        internal_route: Option<IpNet>,
    ) -> NodeFacts {
        let reported = status
            .and_then(|s| s.public_key.as_deref())
            .filter(|k| !k.is_empty());
        // A malformed key is never copied anywhere: the CRD may predate the key schema.
        let bad_key = reported.and_then(wirekube_crds::key_problem);
        let key = reported.filter(|_| bad_key.is_none()).map(str::to_owned);
        let mut hosts = Vec::new();
        let mut srflx: Option<(String, SocketAddr)> = None;
        let mut prflx = Vec::new();
        for c in status.map(|s| s.candidates.as_slice()).unwrap_or(&[]) {
            // Agents report `ip:port`; anything else cannot be a WireGuard endpoint.
            let Ok(sa) = c.address.parse::<SocketAddr>() else {
                continue;
            };
            match c.kind {
                CandidateKind::Host if usable_host(sa.ip()) => hosts.push(HostCandidate {
                    addr: c.address.clone(),
                    ip: sa.ip(),
                    net: c
                        .prefix_length
                        .filter(|p| *p > 0)
                        .and_then(|p| IpNet::new(sa.ip(), p).ok())
                        .map(|n| n.trunc()),
                }),
                CandidateKind::Host => {}
                CandidateKind::Srflx => {
                    if srflx.is_none() {
                        srflx = Some((c.address.clone(), sa));
                    }
                }
                CandidateKind::Prflx => {
                    if let Some(of) = &c.observed_by {
                        prflx.push((of.clone(), c.address.clone()));
                    }
                }
            }
        }
        // Stable order, first report per peer wins.
        prflx.sort_by(|a, b| a.0.cmp(&b.0));
        prflx.dedup_by(|later, first| later.0 == first.0);

        let public_ip = status
            .and_then(|s| s.public_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .or(srflx.as_ref().map(|(_, sa)| sa.ip()));
        let internal = node
            .address(NodeAddressKind::InternalIp)
            .map(|ip| SocketAddr::new(ip, listen_port).to_string());
        let external = node
            .address(NodeAddressKind::ExternalIp)
            .map(|ip| SocketAddr::new(ip, listen_port).to_string());
        let punch_target = public_ip.map(|ip| SocketAddr::new(ip, listen_port).to_string());
        let public_ep = srflx
            .as_ref()
            .map(|(a, _)| a.clone())
            .or_else(|| punch_target.clone())
            .or(external);
        let srflx = srflx.map(|(a, _)| a);

        let reported = status.map(|s| s.nat_type).unwrap_or(NatType::Unknown);
        let nat = match reported {
            n if n.is_reachable() && public_ep.is_none() => NatType::Unknown,
            n if n.is_cone() && srflx.is_none() => NatType::Unknown,
            NatType::Symmetric if public_ip.is_none() => NatType::Unknown,
            n => n,
        };

        let mut fallback_peers: Vec<String> = status
            .map(|s| s.connections.as_slice())
            .unwrap_or(&[])
            .iter()
            .filter(|c| c.fallback || c.reason == Some(PathReason::DirectFailed))
            .map(|c| c.name.clone())
            .collect();
        fallback_peers.sort();
        fallback_peers.dedup();

        let mut allowed_ips: Vec<String> = Vec::new();
        if let Some(ip) = mesh_ip {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            allowed_ips.push(format!("{ip}/{bits}"));
            allowed_ips.extend(routed.iter().map(IpNet::to_string));
        }
        let mut allowed_ips_remote = allowed_ips.clone();
        if let (Some(_), Some(r)) = (mesh_ip, internal_route) {
            allowed_ips_remote.push(r.to_string());
        }

        NodeFacts {
            name: Arc::from(node.name.as_str()),
            key,
            bad_key,
            nat,
            public_ip,
            hosts,
            internal,
            srflx,
            public_ep,
            punch_target,
            prflx,
            fallback_peers,
            mesh_ip,
            mesh_ip_text: mesh_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            allowed_ips,
            allowed_ips_remote,
            pod_cidrs: node.pod_cidrs.iter().map(IpNet::to_string).collect(),
            external_ips: node
                .addresses
                .iter()
                .filter(|a| a.kind == NodeAddressKind::ExternalIp)
                .map(|a| a.ip.to_string())
                .collect(),
            routed,
            internal_route,
        }
    }

    /// What `peer` routes to this node: the InternalIP is carried only for peers at
    /// other sites, since nodes on one LAN reach each other's InternalIP directly.
    pub fn allowed_ips_for(&self, peer: &NodeFacts) -> &[String] {
        if self.internal_route.is_some() && !same_lan(self, peer) {
            &self.allowed_ips_remote
        } else {
            &self.allowed_ips
        }
    }

    /// Index in `prflx` of `peer`'s address as this node's WireGuard saw its packets arrive.
    pub fn observed_address_of(&self, peer: &str) -> Option<u8> {
        self.prflx
            .binary_search_by(|(of, _)| of.as_str().cmp(peer))
            .ok()
            .and_then(|i| u8::try_from(i).ok())
    }

    /// This node's agent reports that its direct path to `peer` failed.
    pub fn reports_fallback_to(&self, peer: &str) -> bool {
        !self.fallback_peers.is_empty()
            && self
                .fallback_peers
                .binary_search_by(|p| p.as_str().cmp(peer))
                .is_ok()
    }
}

/// Addresses that can never be a path between two machines.
fn usable_host(ip: IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_broadcast(),
        IpAddr::V6(v6) => !v6.is_unicast_link_local(),
    }
}

/// The two nodes reported host candidates on one LAN.
pub(crate) fn same_lan(a: &NodeFacts, b: &NodeFacts) -> bool {
    a.hosts
        .iter()
        .any(|ha| b.hosts.iter().any(|hb| share_subnet(ha, hb)))
}

/// The two host candidates sit on one LAN: each address lies in the other's subnet. Identical
/// addresses prove nothing: every Docker host has `172.17.0.1/16`.
pub(crate) fn share_subnet(a: &HostCandidate, b: &HostCandidate) -> bool {
    match (a.net, b.net) {
        (Some(na), Some(nb)) => a.ip != b.ip && na.contains(&b.ip) && nb.contains(&a.ip),
        _ => false,
    }
}
