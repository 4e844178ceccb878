//! Which prefixes a node's peer entry carries besides its mesh IP (`spec.routing`): its pod
//! CIDRs, the prefixes it fronts (`nodeRoutes`) and, for peers at other sites, its InternalIP.
//!
//! WireGuard routes a destination to the one peer whose AllowedIPs contain it, so two peers
//! must never claim overlapping prefixes: a prefix that overlaps another node's prefix is
//! carried for neither (sites often reuse private ranges; guessing would misroute), and each
//! prefix left out is named with the reason, for the mesh's `RoutesCarried` condition.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use wirekube_crds::RoutingSpec;

/// What the planner knows about one node's prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePrefixes {
    pub name: String,
    /// `Node.spec.podCIDRs`.
    pub pod_cidrs: Vec<IpNet>,
    /// The node's first InternalIP.
    pub internal_ip: Option<IpAddr>,
}

/// Where a candidate prefix came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PrefixKind {
    PodCidr,
    NodeRoute,
    InternalIp,
}

impl fmt::Display for PrefixKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrefixKind::PodCidr => "pod CIDR",
            PrefixKind::NodeRoute => "node route",
            PrefixKind::InternalIp => "InternalIP",
        })
    }
}

/// Why a prefix is not carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Overlaps an `excludeCIDRs` entry.
    Excluded(Ipv4Net),
    /// Overlaps the mesh CIDR (the mesh IPs are routed already).
    OverlapsMesh,
    /// The mesh is IPv4; an IPv6 prefix cannot be carried yet.
    NotIpv4,
    /// Overlaps a prefix of another node.
    Collides { node: String, prefix: IpNet },
    /// `nodeRoutes` names a node that is not in the mesh.
    UnknownNode,
    /// Contains a relay or STUN address, which agents must reach outside the tunnel.
    Underlay(IpAddr),
}

/// A prefix left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedPrefix {
    pub node: String,
    pub prefix: IpNet,
    pub kind: PrefixKind,
    pub reason: DropReason,
}

impl fmt::Display for DroppedPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let DroppedPrefix {
            node, prefix, kind, ..
        } = self;
        write!(f, "{kind} {prefix} of node {node} is not carried: ")?;
        match &self.reason {
            DropReason::Excluded(c) => write!(f, "it overlaps excludeCIDRs entry {c}"),
            DropReason::OverlapsMesh => write!(f, "it overlaps the meshCIDR"),
            DropReason::NotIpv4 => write!(f, "the mesh carries IPv4 only"),
            DropReason::Collides { node, prefix } => write!(
                f,
                "it overlaps {prefix} of node {node} (WireGuard cannot route one address to two \
                 peers; renumber one of them or exclude the range)"
            ),
            DropReason::UnknownNode => write!(f, "no such node in the mesh"),
            DropReason::Underlay(ip) => write!(
                f,
                "it contains {ip}, a relay or STUN address that agents reach outside the mesh"
            ),
        }
    }
}

/// The prefixes carried per node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CarriedRoutes {
    /// Routed to the node by every peer (pod CIDRs, node routes), sorted.
    pub everywhere: BTreeMap<String, Vec<IpNet>>,
    /// The node's InternalIP /32, routed to it by peers at other sites only.
    pub internal: BTreeMap<String, IpNet>,
    /// Everything left out, in a stable order.
    pub dropped: Vec<DroppedPrefix>,
}

struct Candidate {
    node: usize,
    prefix: Ipv4Net,
    kind: PrefixKind,
}

/// Decides what each node carries. `nodes` are the mesh's nodes (any order); `underlay` the
/// relay and STUN addresses, which must stay outside the tunnel (the agents use them to build
/// it).
pub fn carried_routes(
    spec: &RoutingSpec,
    mesh_cidr: Option<IpNet>,
    underlay: &[IpAddr],
    nodes: &[NodePrefixes],
) -> CarriedRoutes {
    let mut out = CarriedRoutes::default();
    let mut cands = Vec::new();
    let index: BTreeMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let mut offer = |node: usize, prefix: IpNet, kind: PrefixKind, out: &mut CarriedRoutes| {
        let drop = |reason| DroppedPrefix {
            node: nodes[node].name.clone(),
            prefix,
            kind,
            reason,
        };
        let IpNet::V4(v4) = prefix.trunc() else {
            out.dropped.push(drop(DropReason::NotIpv4));
            return;
        };
        if mesh_cidr.is_some_and(|m| overlaps(m, IpNet::V4(v4))) {
            out.dropped.push(drop(DropReason::OverlapsMesh));
        } else if let Some(x) = excluded(spec, v4) {
            out.dropped.push(drop(DropReason::Excluded(x)));
        } else if let Some(ip) = underlay.iter().find(|ip| prefix.contains(*ip)) {
            out.dropped.push(drop(DropReason::Underlay(*ip)));
        } else {
            cands.push(Candidate {
                node,
                prefix: v4,
                kind,
            });
        }
    };
    for (i, n) in nodes.iter().enumerate() {
        if spec.pod_cidrs {
            for p in &n.pod_cidrs {
                offer(i, *p, PrefixKind::PodCidr, &mut out);
            }
        }
        if spec.node_internal_ips
            && let Some(ip) = n.internal_ip
        {
            offer(i, IpNet::from(ip), PrefixKind::InternalIp, &mut out);
        }
    }
    for r in &spec.node_routes {
        for c in &r.cidrs {
            // The CRD's CEL rule admits only IPv4 CIDRs; anything else never reaches here.
            let Ok(p) = c.parse::<IpNet>() else { continue };
            match index.get(r.node.as_str()) {
                Some(&i) => offer(i, p, PrefixKind::NodeRoute, &mut out),
                None => out.dropped.push(DroppedPrefix {
                    node: r.node.clone(),
                    prefix: p,
                    kind: PrefixKind::NodeRoute,
                    reason: DropReason::UnknownNode,
                }),
            }
        }
    }
    let colliding = collisions(&cands);
    for (ci, c) in cands.iter().enumerate() {
        let name = &nodes[c.node].name;
        if let Some(&other) = colliding.get(&ci) {
            let o = &cands[other];
            out.dropped.push(DroppedPrefix {
                node: name.clone(),
                prefix: IpNet::V4(c.prefix),
                kind: c.kind,
                reason: DropReason::Collides {
                    node: nodes[o.node].name.clone(),
                    prefix: IpNet::V4(o.prefix),
                },
            });
        } else if c.kind == PrefixKind::InternalIp {
            out.internal.insert(name.clone(), IpNet::V4(c.prefix));
        } else {
            out.everywhere
                .entry(name.clone())
                .or_default()
                .push(IpNet::V4(c.prefix));
        }
    }
    for v in out.everywhere.values_mut() {
        v.sort();
        v.dedup();
    }
    out.dropped
        .sort_by(|a, b| (&a.node, a.kind, a.prefix).cmp(&(&b.node, b.kind, b.prefix)));
    out
}

/// For every candidate that overlaps a candidate of another node: the index of one such
/// other candidate. Sorted sweep: O(n log n) plus the overlaps found.
fn collisions(cands: &[Candidate]) -> BTreeMap<usize, usize> {
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by_key(|&i| (cands[i].prefix.network(), cands[i].prefix.prefix_len()));
    let mut hit = BTreeMap::new();
    for (k, &i) in order.iter().enumerate() {
        let end = cands[i].prefix.broadcast();
        for &j in &order[k + 1..] {
            if cands[j].prefix.network() > end {
                break;
            }
            if cands[i].node != cands[j].node {
                hit.entry(i).or_insert(j);
                hit.entry(j).or_insert(i);
            }
        }
    }
    hit
}

fn excluded(spec: &RoutingSpec, p: Ipv4Net) -> Option<Ipv4Net> {
    spec.exclude_cidrs
        .iter()
        .filter_map(|c| c.parse::<Ipv4Net>().ok())
        .find(|x| overlaps(IpNet::V4(*x), IpNet::V4(p)))
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
