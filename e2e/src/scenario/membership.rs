//! Nodes leaving and joining a running [`Scenario`]: a machine switched off and its Node
//! deleted, and a new machine whose kubelet registers while the mesh runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use wirekube_crds::ActualPath;

use super::hosts::{LabNodes, NodeAccess, wg_dump};
use super::run::{Scenario, start_nodes};
use super::topology::Topology;

/// `topo` with node `old` renamed to `new` (its site and every expectation): the plan for a
/// replacement machine on the same site is the old one's.
pub fn renamed(topo: &Topology, old: &str, new: &str) -> Result<Topology> {
    let mut t = topo.clone();
    let site = t
        .sites
        .iter_mut()
        .find(|s| s.nodes.iter().any(|n| n == old))
        .ok_or_else(|| {
            anyhow!(
                "{old} is no site node of {}: only those can be replaced",
                t.id
            )
        })?;
    for n in &mut site.nodes {
        if n == old {
            *n = new.to_string();
        }
    }
    for e in &mut t.expect {
        for x in [&mut e.a, &mut e.b] {
            if x == old {
                *x = new.to_string();
            }
        }
    }
    Ok(t)
}

impl Scenario {
    /// Node `node` leaves as a machine that is switched off and removed from the cluster: its
    /// kubelet and kube-proxy stop, every process left in its namespace (the agent, any pod)
    /// is SIGKILLed, and its Node object is deleted.
    pub fn remove_node(&mut self, node: &str) -> Result<()> {
        let host = self
            .hosts
            .get(node)
            .ok_or_else(|| anyhow!("no node {node} in this scenario"))?
            .clone();
        let kn = self
            .kube_nodes
            .remove(node)
            .ok_or_else(|| anyhow!("{node} has no kubelet"))?;
        self.lab.stop(&kn.kubelet)?;
        self.lab.stop(&kn.kube_proxy)?;
        for pid in wirekube_lab::netns::pids_in(&host.ns) {
            wirekube_lab::signal(pid, libc::SIGKILL);
        }
        self.kubectl(&["delete", "node", node, "--wait=false"])?;
        self.hosts.remove(node);
        self.nodes = Arc::new(LabNodes::new(self.lab.clone(), self.hosts.clone()));
        Ok(())
    }

    /// Whether `node` is gone everywhere: no WireKubePeer of that name, and no remaining
    /// node's WireGuard interface still has `key`.
    pub fn node_gone(&self, node: &str, key: &str) -> bool {
        let Ok(peers) = self.peers() else {
            return false;
        };
        if peers.contains_key(node) {
            return false;
        }
        peers.iter().all(|(n, p)| {
            if !self.hosts.contains_key(n) {
                return true;
            }
            wg_dump(self.nodes.as_ref(), n, &p.spec.interface_name)
                .is_ok_and(|wg| wg.iter().all(|w| w.public_key != key))
        })
    }

    /// A new machine `new` joins `site`'s LAN and the cluster (its kubelet registers the Node,
    /// the DaemonSet starts its agent); the topology replaces `old` by it, so the same plan
    /// applies. Call after [`Scenario::remove_node`] of `old`.
    pub fn join_node(&mut self, site: &str, old: &str, new: &str) -> Result<()> {
        self.topo = renamed(&self.topo, old, new)?;
        let host = self.lab.add_node(site, new)?;
        self.hosts.insert(new.to_string(), host.clone());
        self.nodes = Arc::new(LabNodes::new(self.lab.clone(), self.hosts.clone()));
        let one = BTreeMap::from([(new.to_string(), host)]);
        let started = start_nodes(
            &self.lab,
            &self.kube,
            &self.topo,
            &one,
            self.pod_network(),
            &BTreeMap::new(),
        )?;
        self.kube_nodes.extend(started);
        Ok(())
    }

    /// Whether every pair with `node` reports a path both ways (direct or relay: a new
    /// cone <-> symmetric pair may take the relay first, as at any start) and `node` answers a
    /// ping from every other node over the mesh. The planned paths are the convergence's
    /// business ([`Scenario::converge`]).
    pub fn node_joined(&self, node: &str) -> bool {
        let Ok(peers) = self.peers() else {
            return false;
        };
        let Some(ip) = self.mesh_ips(&peers).get(node).copied() else {
            return false;
        };
        self.topo
            .pairs()
            .iter()
            .filter(|(a, b)| a == node || b == node)
            .all(|(a, b)| {
                let other = if a == node { b } else { a };
                let path_ok = [(a, b), (b, a)].iter().all(|(x, y)| {
                    matches!(
                        Scenario::reported(&peers, x, y).map(|r| r.0),
                        Some(ActualPath::Direct | ActualPath::Relay)
                    )
                });
                path_ok && self.nodes.ping(other, ip).is_ok()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::topology::seed_3_multi_cloud;

    #[test]
    fn a_replacement_node_takes_over_the_old_ones_site_and_plan() {
        let t = seed_3_multi_cloud();
        let r = renamed(&t, "cloud-a-1", "cloud-a-2").unwrap();
        assert!(r.sites.iter().any(|s| s.nodes == ["cloud-a-2"]));
        assert!(
            !r.pairs()
                .iter()
                .any(|(a, b)| a == "cloud-a-1" || b == "cloud-a-1")
        );
        let e = r.expectation("cloud-a-2", "cloud-b-1").unwrap();
        assert_eq!(e.path, ActualPath::Relay);
        assert_eq!(r.pairs().len(), t.pairs().len());
    }

    #[test]
    fn only_site_nodes_can_be_replaced() {
        let err = renamed(&seed_3_multi_cloud(), "nobody", "x").unwrap_err();
        assert!(err.to_string().contains("nobody"), "{err}");
    }
}
