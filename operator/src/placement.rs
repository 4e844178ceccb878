//! Where the managed relay's pods run, and so which node addresses a NodePort relay answers
//! on (pure; the controller feeds it the relay pods and the nodes from its caches).
//!
//! The NodePort Service has `externalTrafficPolicy: Local`: a node forwards its nodePort only
//! to relay pods on that node. Publishing the address of any other node would hand agents an
//! endpoint that never answers, so only nodes that run a relay pod are published.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::nodes::ClusterNode;

/// Nodes running the relay's pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayPlacement {
    /// Nodes with a Ready relay pod (these answer on the nodePort now).
    pub ready: BTreeSet<String>,
    /// Nodes a live relay pod is bound to, ready or not (a superset of `ready`).
    pub scheduled: BTreeSet<String>,
}

impl RelayPlacement {
    /// Placement of the given relay pods; pods not bound yet, finished or being deleted are
    /// ignored (kube-proxy does not route to them either).
    pub fn from_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> RelayPlacement {
        let mut p = RelayPlacement::default();
        for pod in pods.into_iter().filter(|pod| live(pod)) {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
                continue;
            };
            if node.is_empty() {
                continue;
            }
            if ready(pod) {
                p.ready.insert(node.to_string());
            }
            p.scheduled.insert(node.to_string());
        }
        p
    }

    /// The nodes whose addresses to publish: those with a ready relay pod; while none is
    /// ready, the nodes whose addresses are already published (`published`, the mesh's
    /// `relayEndpoints`) if any of them is still a node; else (the first start) those a relay
    /// pod is bound to. ExternalIP nodes first (agents dial the first endpoint, and an
    /// InternalIP is usually reachable from its own site only), then by name. Nodes missing
    /// from `nodes` are skipped.
    ///
    /// Why hold the published ones while a relay pod moves: with `externalTrafficPolicy:
    /// Local` a node drops connections to its nodePort until its relay pod is ready (and
    /// kube-proxy has programmed it), and a TCP connect that lost its SYN is retried by the
    /// kernel only 1, 3 and 7 s later. Agents handed the new node's address while its pod
    /// starts would reach the relay only at one of those retries; agents handed it once the
    /// pod is ready connect at once, because a changed endpoint restarts their relay client.
    pub fn hosts<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a Node>,
        published: &[String],
    ) -> Vec<ClusterNode> {
        let nodes: Vec<ClusterNode> = nodes.into_iter().map(ClusterNode::from_node).collect();
        let held;
        let wanted = if !self.ready.is_empty() {
            &self.ready
        } else {
            held = published_nodes(&nodes, published);
            if held.is_empty() {
                &self.scheduled
            } else {
                &held
            }
        };
        let mut hosts: Vec<ClusterNode> = nodes
            .into_iter()
            .filter(|n| wanted.contains(n.name()))
            .collect();
        hosts.sort_by(|a, b| (!a.has_external(), a.name()).cmp(&(!b.has_external(), b.name())));
        hosts
    }
}

/// The nodes whose address is one of the published `ip:port` endpoints (others, such as DNS
/// names of an external relay, name no node).
fn published_nodes(nodes: &[ClusterNode], published: &[String]) -> BTreeSet<String> {
    let ips: BTreeSet<IpAddr> = published
        .iter()
        .filter_map(|e| e.parse::<SocketAddr>().ok())
        .map(|a| a.ip())
        .collect();
    nodes
        .iter()
        .filter(|n| n.reachable_address().is_some_and(|ip| ips.contains(&ip)))
        .map(|n| n.name().to_string())
        .collect()
}

fn live(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::test_objects::{node, time};

    /// A relay pod on `node` (None = unscheduled) in `phase`, Ready or not.
    fn pod(node: Option<&str>, phase: &str, is_ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta::default(),
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if is_ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn placement_from_pods() {
        let mut deleting = pod(Some("d"), "Running", true);
        deleting.metadata.deletion_timestamp = Some(time(1));
        type Case = (
            &'static str,
            Vec<Pod>,
            &'static [&'static str],
            &'static [&'static str],
        );
        let cases: Vec<Case> = vec![
            ("no pods", vec![], &[], &[]),
            ("unscheduled", vec![pod(None, "Pending", false)], &[], &[]),
            (
                "empty node name",
                vec![pod(Some(""), "Pending", false)],
                &[],
                &[],
            ),
            (
                "starting",
                vec![pod(Some("a"), "Running", false)],
                &[],
                &["a"],
            ),
            (
                "ready",
                vec![pod(Some("a"), "Running", true)],
                &["a"],
                &["a"],
            ),
            ("failed", vec![pod(Some("a"), "Failed", false)], &[], &[]),
            ("deleting", vec![deleting], &[], &[]),
            (
                "two nodes, one ready",
                vec![
                    pod(Some("b"), "Running", true),
                    pod(Some("a"), "Pending", false),
                ],
                &["b"],
                &["a", "b"],
            ),
        ];
        for (name, pods, ready, scheduled) in cases {
            let p = RelayPlacement::from_pods(&pods);
            assert_eq!(
                (p.ready, p.scheduled),
                (set(ready), set(scheduled)),
                "{name}"
            );
        }
    }

    #[test]
    fn hosts_prefer_ready_then_external_then_name() {
        let nodes = [
            node("a", &[("InternalIP", "10.0.0.1")], &[]),
            node(
                "b",
                &[("InternalIP", "10.0.0.2"), ("ExternalIP", "198.51.100.2")],
                &[],
            ),
            node("c", &[("InternalIP", "10.0.0.3")], &[]),
            node("d", &[("ExternalIP", "198.51.100.4")], &[]),
        ];
        let names = |p: &RelayPlacement| -> Vec<String> {
            p.hosts(&nodes, &[])
                .into_iter()
                .map(|n| n.info.name)
                .collect()
        };
        let p = |ready: &[&str], scheduled: &[&str]| RelayPlacement {
            ready: set(ready),
            scheduled: set(scheduled),
        };
        let cases: [(RelayPlacement, &[&str]); 5] = [
            (p(&[], &[]), &[]),
            (p(&["c"], &["a", "c"]), &["c"]),
            (p(&[], &["c", "a"]), &["a", "c"]),
            (
                p(&["a", "b", "c", "d"], &["a", "b", "c", "d"]),
                &["b", "d", "a", "c"],
            ),
            (p(&["gone", "c"], &["gone", "c"]), &["c"]),
        ];
        for (placement, want) in cases {
            assert_eq!(names(&placement), want, "{placement:?}");
        }
    }
}
