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
    /// `provider: managed`, `serviceType: NodePort`: the operator's relay Deployment is pinned
    /// (by the node label [`RELAY_HOST_LABEL`]) to the public node `node`, reached at its address
    /// and `node_port` through kube-proxy. With a `spare` public node the label is on both, so a
    /// recreated relay pod may land on either and the published endpoint moves with it.
    ManagedNodePort {
        node: String,
        node_port: u16,
        spare: Option<String>,
    },
}

/// The node label a managed NodePort relay is pinned by ([`RelaySetup::ManagedNodePort`]).
pub const RELAY_HOST_LABEL: &str = "lab.wirekube.io/relay-host";

impl RelaySetup {
    pub fn describe(&self) -> String {
        match self {
            RelaySetup::None => "no relay".into(),
            RelaySetup::External => "external relay in the DMZ".into(),
            RelaySetup::ManagedLoadBalancer { node } => {
                format!("managed relay, LoadBalancer in front of {node}")
            }
            RelaySetup::ManagedNodePort {
                node,
                node_port,
                spare,
            } => match spare {
                None => format!("managed relay, NodePort {node_port} on {node}"),
                Some(s) => format!("managed relay, NodePort {node_port} on {node} (or {s})"),
            },
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
        if let RelaySetup::ManagedNodePort {
            spare: Some(spare), ..
        } = &self.relay
            && !self.public_nodes.contains(spare)
        {
            return Err(format!(
                "{}: spare relay node {spare} is not a public node",
                self.id
            ));
        }
        Ok(())
    }

    /// Nodes that carry [`RELAY_HOST_LABEL`]: a managed NodePort relay's node and its spare.
    pub fn relay_hosts(&self) -> Vec<&str> {
        match &self.relay {
            RelaySetup::ManagedNodePort { node, spare, .. } => std::iter::once(node.as_str())
                .chain(spare.as_deref())
                .collect(),
            _ => Vec::new(),
        }
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

mod seeds;
pub use seeds::*;

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
