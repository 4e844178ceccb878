//! Topology descriptions: sites with NAT kinds, nodes, public nodes, how the relay runs, the mesh
//! mode, and the path every pair must end up on (the rows of the seed tables in `docs/topologies.md`).

use std::collections::BTreeSet;
use std::fmt;

use wirekube_crds::{ActualPath, PathReason, RelayMode};
use wirekube_lab::NatKind;

/// One site: a LAN behind a gateway of one [`NatKind`].
#[derive(Clone, Debug)]
pub struct SiteDef {
    /// Lab site name (at most 9 characters).
    pub name: String,
    pub nat: NatKind,
    /// LAN, e.g. `10.1.0.0/24`.
    pub cidr: String,
    /// Kubernetes node names on this LAN (at most 12 characters each).
    pub nodes: Vec<String>,
    /// Nodes on this LAN with an elastic IP (a 1:1 NAT on the gateway, as a cloud's).
    pub elastic: Vec<String>,
    /// The site whose LAN this gateway's WAN is on (double NAT).
    pub behind: Option<String>,
}

/// How the relay is provided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelaySetup {
    /// No relay (only sensible with `mode: never`). A STUN responder still runs in the DMZ.
    None,
    /// `provider: external`: the harness runs `wirekube-relay` in the DMZ.
    External,
    /// `provider: managed`, `serviceType: LoadBalancer`: the operator's relay Deployment is pinned
    /// (`relay.managed.nodeSelector`) to the public node `node`; the lab cloud gives the Service
    /// a public address and announces it from that node, where kube-proxy takes it to the pod.
    ManagedLoadBalancer { node: String },
    /// `provider: managed`, `serviceType: NodePort`: the operator's relay Deployment is pinned to
    /// the public node `node`, reached at its address and `node_port` through kube-proxy.
    ManagedNodePort { node: String, node_port: u16 },
}

impl RelaySetup {
    pub fn describe(&self) -> String {
        match self {
            RelaySetup::None => "no relay".into(),
            RelaySetup::External => "external relay in the DMZ".into(),
            RelaySetup::ManagedLoadBalancer { node } => {
                format!("managed relay, LoadBalancer in front of {node}")
            }
            RelaySetup::ManagedNodePort { node, node_port } => {
                format!("managed relay, NodePort {node_port} on {node}")
            }
        }
    }
}

/// The path a pair must take, in both directions.
#[derive(Clone, Debug)]
pub struct Expect {
    pub a: String,
    pub b: String,
    pub path: ActualPath,
    pub reason: PathReason,
    /// The seed's row (or the lab's reason for deviating), for reports.
    pub why: String,
}

/// A topology to build and the outcome it promises.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Short id, e.g. `seed-1`.
    pub id: String,
    pub title: String,
    pub sites: Vec<SiteDef>,
    /// Nodes with a public address on their NIC.
    pub public_nodes: Vec<String>,
    pub relay: RelaySetup,
    pub mode: RelayMode,
    /// One row per unordered pair.
    pub expect: Vec<Expect>,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.id, self.title)
    }
}

impl Topology {
    pub fn new(id: &str, title: &str) -> Topology {
        Topology {
            id: id.into(),
            title: title.into(),
            sites: Vec::new(),
            public_nodes: Vec::new(),
            relay: RelaySetup::External,
            mode: RelayMode::Auto,
            expect: Vec::new(),
        }
    }

    pub fn site(mut self, name: &str, nat: NatKind, cidr: &str, nodes: &[&str]) -> Topology {
        self.sites.push(SiteDef {
            name: name.into(),
            nat,
            cidr: cidr.into(),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            elastic: Vec::new(),
            behind: None,
        });
        self
    }

    /// Puts the WAN of the last added site on `upstream`'s LAN (declared before it).
    pub fn behind(mut self, upstream: &str) -> Topology {
        if let Some(s) = self.sites.last_mut() {
            s.behind = Some(upstream.into());
        }
        self
    }

    /// Adds `node` with an elastic IP to the last added site's LAN.
    pub fn elastic(mut self, node: &str) -> Topology {
        if let Some(s) = self.sites.last_mut() {
            s.elastic.push(node.into());
        }
        self
    }

    /// Whether `node` has an elastic IP.
    pub fn is_elastic(&self, node: &str) -> bool {
        self.sites
            .iter()
            .any(|s| s.elastic.iter().any(|n| n == node))
    }

    pub fn public(mut self, node: &str) -> Topology {
        self.public_nodes.push(node.into());
        self
    }

    pub fn relay(mut self, relay: RelaySetup) -> Topology {
        self.relay = relay;
        self
    }

    pub fn mode(mut self, mode: RelayMode) -> Topology {
        self.mode = mode;
        self
    }

    pub fn direct(self, a: &str, b: &str, reason: PathReason, why: &str) -> Topology {
        self.expect(a, b, ActualPath::Direct, reason, why)
    }

    pub fn relayed(self, a: &str, b: &str, reason: PathReason, why: &str) -> Topology {
        self.expect(a, b, ActualPath::Relay, reason, why)
    }

    fn expect(
        mut self,
        a: &str,
        b: &str,
        path: ActualPath,
        reason: PathReason,
        why: &str,
    ) -> Topology {
        self.expect.push(Expect {
            a: a.into(),
            b: b.into(),
            path,
            reason,
            why: why.into(),
        });
        self
    }

    /// Every node, sites first, in declaration order.
    pub fn nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .sites
            .iter()
            .flat_map(|s| s.nodes.iter().chain(&s.elastic).cloned())
            .collect();
        v.extend(self.public_nodes.iter().cloned());
        v
    }

    /// The expectation for a pair, in either order.
    pub fn expectation(&self, a: &str, b: &str) -> Option<&Expect> {
        self.expect
            .iter()
            .find(|e| (e.a == a && e.b == b) || (e.a == b && e.b == a))
    }

    /// Checks that every unordered pair has exactly one expectation and names are known.
    pub fn validate(&self) -> Result<(), String> {
        let nodes = self.nodes();
        let set: BTreeSet<&String> = nodes.iter().collect();
        if set.len() != nodes.len() {
            return Err(format!("{}: duplicate node names", self.id));
        }
        for e in &self.expect {
            for n in [&e.a, &e.b] {
                if !set.contains(n) {
                    return Err(format!("{}: expectation names unknown node {n}", self.id));
                }
            }
        }
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[i + 1..] {
                let n = self
                    .expect
                    .iter()
                    .filter(|e| (&e.a == a && &e.b == b) || (&e.a == b && &e.b == a))
                    .count();
                if n != 1 {
                    return Err(format!(
                        "{}: pair {a} <-> {b} has {n} expectations (need exactly 1)",
                        self.id
                    ));
                }
            }
        }
        for (i, s) in self.sites.iter().enumerate() {
            if let Some(up) = &s.behind
                && !self.sites[..i].iter().any(|u| &u.name == up)
            {
                return Err(format!(
                    "{}: site {} is behind {up}, which is not declared before it",
                    self.id, s.name
                ));
            }
        }
        if let RelaySetup::ManagedNodePort { node, .. } | RelaySetup::ManagedLoadBalancer { node } =
            &self.relay
            && !self.public_nodes.contains(node)
            && !self.is_elastic(node)
        {
            return Err(format!(
                "{}: managed relay node {node} has no public address",
                self.id
            ));
        }
        Ok(())
    }

    /// Unordered pairs in node order.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let nodes = self.nodes();
        let mut v = Vec::new();
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[i + 1..] {
                v.push((a.clone(), b.clone()));
            }
        }
        v
    }
}

use PathReason::*;

/// Topology 1, "All Private (Cloud NAT)": two VPCs behind symmetric NAT, an external relay.
pub fn seed_1_all_private() -> Topology {
    Topology::new("seed-1", "All private (cloud NAT)")
        .site(
            "vpc-a",
            NatKind::Symmetric,
            "10.1.0.0/24",
            &["node-1", "node-2"],
        )
        .site("vpc-b", NatKind::Symmetric, "10.2.0.0/24", &["node-3"])
        .relay(RelaySetup::External)
        .direct(
            "node-1",
            "node-2",
            SameSite,
            "same VPC, no NAT between them",
        )
        .relayed(
            "node-1",
            "node-3",
            BothSymmetric,
            "both behind symmetric NAT",
        )
        .relayed(
            "node-2",
            "node-3",
            BothSymmetric,
            "both behind symmetric NAT",
        )
}

/// Topology 2, "Mixed (Private + Public)", with a managed relay behind a LoadBalancer.
///
/// node-2 is in VPC A's subnet and has a public IP, as the seed says: an elastic IP (a 1:1 NAT
/// on the VPC's gateway), so node-1 and node-2 share a LAN (`same-site`) and everyone else
/// reaches node-2 at its public address (`public-peer`).
pub fn seed_2_mixed() -> Topology {
    Topology::new("seed-2", "Mixed (private + public)")
        .site("vpc-a", NatKind::Symmetric, "10.1.0.0/24", &["node-1"])
        .elastic("node-2")
        .site("vpc-b", NatKind::Symmetric, "10.2.0.0/24", &["node-3"])
        .relay(RelaySetup::ManagedLoadBalancer {
            node: "node-2".into(),
        })
        .direct(
            "node-1",
            "node-2",
            SameSite,
            "same subnet (node-2's public IP is an elastic IP)",
        )
        .direct("node-2", "node-3", PublicPeer, "node-2 has a public IP")
        .relayed(
            "node-1",
            "node-3",
            BothSymmetric,
            "both behind symmetric NAT",
        )
}

/// Topology 3, "Multi-Cloud": two clouds behind symmetric NAT, two on-premises sites behind cone
/// NATs that accept the symmetric side's unpredictable port (full cone, address-restricted).
pub fn seed_3_multi_cloud() -> Topology {
    Topology::new("seed-3", "Multi-cloud")
        .site("cloud-a", NatKind::Symmetric, "10.1.0.0/24", &["cloud-a-1"])
        .site("cloud-b", NatKind::Symmetric, "10.2.0.0/24", &["cloud-b-1"])
        .site(
            "onprem-1",
            NatKind::FullCone,
            "192.168.1.0/24",
            &["onprem-1"],
        )
        .site(
            "onprem-2",
            NatKind::AddressRestrictedCone,
            "192.168.2.0/24",
            &["onprem-2"],
        )
        .relay(RelaySetup::External)
        .relayed(
            "cloud-a-1",
            "cloud-b-1",
            BothSymmetric,
            "both behind symmetric NAT",
        )
        .direct(
            "onprem-1",
            "cloud-a-1",
            ConeSymmetric,
            "full cone <-> symmetric",
        )
        .direct(
            "onprem-1",
            "cloud-b-1",
            ConeSymmetric,
            "full cone <-> symmetric",
        )
        .direct(
            "onprem-2",
            "cloud-a-1",
            ConeSymmetric,
            "address-restricted cone <-> symmetric",
        )
        .direct(
            "onprem-2",
            "cloud-b-1",
            ConeSymmetric,
            "address-restricted cone <-> symmetric",
        )
        .direct(
            "onprem-1",
            "onprem-2",
            ConeCone,
            "both cone, STUN endpoints stable",
        )
}

/// Topology 3 with Linux's default cone (port-restricted): the seed's "Cone ↔ Symmetric: Direct"
/// does not hold (docs/lab-findings.md §4), so those pairs are relayed; cone ↔ cone stays direct.
pub fn seed_3_port_restricted() -> Topology {
    Topology::new("seed-3-prc", "Multi-cloud, port-restricted cones")
        .site("cloud-a", NatKind::Symmetric, "10.1.0.0/24", &["cloud-a-1"])
        .site(
            "onprem-1",
            NatKind::PortRestrictedCone,
            "192.168.1.0/24",
            &["onprem-1"],
        )
        .site(
            "onprem-2",
            NatKind::PortRestrictedCone,
            "192.168.2.0/24",
            &["onprem-2"],
        )
        .relay(RelaySetup::External)
        .relayed(
            "onprem-1",
            "cloud-a-1",
            PortRestrictedSymmetric,
            "port-restricted cone drops the symmetric side's unpredicted port",
        )
        .relayed(
            "onprem-2",
            "cloud-a-1",
            PortRestrictedSymmetric,
            "port-restricted cone drops the symmetric side's unpredicted port",
        )
        .direct("onprem-1", "onprem-2", ConeCone, "both cone, both punch")
}

/// Topology 4, "Home Lab + Cloud", with a managed relay on a NodePort of the public cloud node.
pub fn seed_4_home_lab_cloud() -> Topology {
    Topology::new("seed-4", "Home lab + cloud")
        .site(
            "home",
            NatKind::FullCone,
            "192.168.1.0/24",
            &["home-1", "home-2"],
        )
        .site("cloud", NatKind::Symmetric, "10.1.0.0/24", &["cloud-1"])
        .public("cloud-2")
        .site("vpc-2", NatKind::Symmetric, "10.2.0.0/24", &["cloud-3"])
        .relay(RelaySetup::ManagedNodePort {
            node: "cloud-2".into(),
            node_port: 30478,
        })
        .direct("home-1", "home-2", SameSite, "home <-> home, same LAN")
        .direct(
            "home-1",
            "cloud-1",
            ConeSymmetric,
            "home (cone) <-> cloud (symmetric)",
        )
        .direct(
            "home-2",
            "cloud-1",
            ConeSymmetric,
            "home (cone) <-> cloud (symmetric)",
        )
        .direct(
            "home-1",
            "cloud-3",
            ConeSymmetric,
            "home (cone) <-> cloud (symmetric)",
        )
        .direct(
            "home-2",
            "cloud-3",
            ConeSymmetric,
            "home (cone) <-> cloud (symmetric)",
        )
        .direct("home-1", "cloud-2", PublicPeer, "home <-> cloud public IP")
        .direct("home-2", "cloud-2", PublicPeer, "home <-> cloud public IP")
        .direct(
            "cloud-1",
            "cloud-2",
            PublicPeer,
            "public IP always reachable",
        )
        .direct(
            "cloud-3",
            "cloud-2",
            PublicPeer,
            "public IP always reachable",
        )
        .relayed(
            "cloud-1",
            "cloud-3",
            BothSymmetric,
            "cloud (symmetric) <-> cloud (symmetric, other VPC)",
        )
}

/// Topology 5, "Air-gapped with outbound TCP": two secure zones whose firewalls allow only
/// outbound TCP; everything across zones goes through the relay in the DMZ.
pub fn seed_5_outbound_tcp_only() -> Topology {
    Topology::new("seed-5", "Air-gapped, outbound TCP only")
        .site(
            "secure-a",
            NatKind::TcpOnlyFirewall,
            "10.6.0.0/24",
            &["node-1", "node-2"],
        )
        .site(
            "secure-b",
            NatKind::TcpOnlyFirewall,
            "10.7.0.0/24",
            &["node-3"],
        )
        .relay(RelaySetup::External)
        .direct(
            "node-1",
            "node-2",
            SameSite,
            "same zone LAN (the firewall is at the edge)",
        )
        .relayed(
            "node-1",
            "node-3",
            UdpBlocked,
            "only outbound TCP: relay over TCP",
        )
        .relayed(
            "node-2",
            "node-3",
            UdpBlocked,
            "only outbound TCP: relay over TCP",
        )
}

/// "All nodes have public IPs? → mode: never": no relay at all.
pub fn mode_never_all_public() -> Topology {
    Topology::new("never", "All public, mode: never")
        .public("pub-1")
        .public("pub-2")
        .public("pub-3")
        .relay(RelaySetup::None)
        .mode(RelayMode::Never)
        .direct("pub-1", "pub-2", ModeNever, "mode: never")
        .direct("pub-1", "pub-3", ModeNever, "mode: never")
        .direct("pub-2", "pub-3", ModeNever, "mode: never")
}

/// `mode: always`: every pair relayed, even on one LAN.
pub fn mode_always() -> Topology {
    Topology::new("always", "mode: always")
        .site(
            "vpc-a",
            NatKind::Symmetric,
            "10.1.0.0/24",
            &["node-1", "node-2"],
        )
        .site("home", NatKind::FullCone, "192.168.1.0/24", &["node-3"])
        .relay(RelaySetup::External)
        .mode(RelayMode::Always)
        .relayed("node-1", "node-2", ModeAlways, "mode: always")
        .relayed("node-1", "node-3", ModeAlways, "mode: always")
        .relayed("node-2", "node-3", ModeAlways, "mode: always")
}

/// Topology by seed number (1-5), for the demo.
pub fn seed(n: u8) -> Option<Topology> {
    Some(match n {
        1 => seed_1_all_private(),
        2 => seed_2_mixed(),
        3 => seed_3_multi_cloud(),
        4 => seed_4_home_lab_cloud(),
        5 => seed_5_outbound_tcp_only(),
        _ => return None,
    })
}

/// Every topology the suite runs.
pub fn all() -> Vec<Topology> {
    vec![
        seed_1_all_private(),
        seed_2_mixed(),
        seed_3_multi_cloud(),
        seed_3_port_restricted(),
        seed_4_home_lab_cloud(),
        seed_5_outbound_tcp_only(),
        mode_never_all_public(),
        mode_always(),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_topology_covers_every_pair_once() {
        for t in super::all() {
            t.validate().unwrap();
            for s in &t.sites {
                assert!(s.name.len() <= 9, "{}", s.name);
            }
            for n in t.nodes() {
                assert!(n.len() <= 12, "{n}");
            }
        }
    }
}
