//! The one translation from Kubernetes `Node` objects to what the operator and the planner
//! know about a node (pure). Node addresses, pod CIDRs and labels are parsed here and
//! nowhere else: the planner (`wirekube-planner`) gets [`NodeInfo`]s and knows no Kubernetes
//! types; the relay part reads the same facts for its NodePort endpoints.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use wirekube_planner::{NodeAddress, NodeAddressKind, NodeInfo};

/// A cluster node as the operator sees it: the planner's facts plus the uid the peer's owner
/// reference needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClusterNode {
    pub uid: String,
    pub info: NodeInfo,
}

impl ClusterNode {
    /// Reads a `Node`. Addresses other than InternalIP/ExternalIP (hostnames) and unparseable
    /// ones are skipped: they can be neither WireGuard nor relay endpoints. Unparseable pod
    /// CIDRs are skipped too.
    pub fn from_node(node: &Node) -> ClusterNode {
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|a| {
                let kind = match a.type_.as_str() {
                    "InternalIP" => NodeAddressKind::InternalIp,
                    "ExternalIP" => NodeAddressKind::ExternalIp,
                    _ => return None,
                };
                Some(NodeAddress {
                    kind,
                    ip: a.address.parse().ok()?,
                })
            })
            .collect();
        let pod_cidrs = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidrs.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.parse().ok())
            .collect();
        ClusterNode {
            uid: node.uid().unwrap_or_default(),
            info: NodeInfo {
                name: node.name_any(),
                addresses,
                labels: node.labels().clone(),
                pod_cidrs,
                deleting: node.metadata.deletion_timestamp.is_some(),
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The address a relay client outside the cluster should dial: the first ExternalIP,
    /// else the first InternalIP.
    pub fn reachable_address(&self) -> Option<IpAddr> {
        (self.info.address(NodeAddressKind::ExternalIp))
            .or_else(|| self.info.address(NodeAddressKind::InternalIp))
    }

    /// Whether the node has an ExternalIP.
    pub fn has_external(&self) -> bool {
        self.info.address(NodeAddressKind::ExternalIp).is_some()
    }
}

/// Whether `labels` has every `key=value` of `selector` (an empty selector matches all).
pub fn matches_selector(
    labels: &BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The mesh's nodes: those matching the selector and not being deleted, sorted by name.
pub fn select_nodes<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    selector: &BTreeMap<String, String>,
) -> Vec<ClusterNode> {
    let mut out: Vec<ClusterNode> = nodes
        .into_iter()
        .filter(|n| matches_selector(n.labels(), selector))
        .map(ClusterNode::from_node)
        .filter(|n| !n.info.deleting && !n.uid.is_empty())
        .collect();
    out.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    out
}

/// `ip:port`, bracketing IPv6.
pub fn ip_port(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// `host:port`, bracketing IPv6 literals.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_objects::node;

    #[test]
    fn selector_matching() {
        let labels = BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
        assert!(matches_selector(&labels, &BTreeMap::new()));
        assert!(matches_selector(
            &labels,
            &BTreeMap::from([("a".into(), "1".into())])
        ));
        assert!(!matches_selector(
            &labels,
            &BTreeMap::from([("a".into(), "2".into())])
        ));
        assert!(!matches_selector(
            &labels,
            &BTreeMap::from([("c".into(), "1".into())])
        ));
    }

    #[test]
    fn selection_filters_sorts_and_skips_deleting() {
        let mut gone = node("c", &[("InternalIP", "10.0.0.3")], &[("mesh", "yes")]);
        gone.metadata.deletion_timestamp = Some(crate::test_objects::time(1));
        let nodes = [
            node("b", &[("InternalIP", "10.0.0.2")], &[("mesh", "yes")]),
            node("a", &[("InternalIP", "10.0.0.1")], &[("mesh", "yes")]),
            node("x", &[("InternalIP", "10.0.0.9")], &[]),
            gone,
        ];
        let sel = BTreeMap::from([("mesh".into(), "yes".into())]);
        let names: Vec<_> = select_nodes(&nodes, &sel)
            .into_iter()
            .map(|n| n.info.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(select_nodes(&nodes, &BTreeMap::new()).len(), 3);
    }

    #[test]
    fn reads_ip_addresses_pod_cidrs_and_uid() {
        let mut n = node(
            "a",
            &[
                ("Hostname", "a"),
                ("InternalIP", "10.0.0.1"),
                ("InternalIP", "not-an-ip"),
                ("ExternalIP", "203.0.113.1"),
            ],
            &[("mesh", "yes")],
        );
        n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            pod_cidrs: Some(vec!["10.244.1.0/24".into(), "nonsense".into()]),
            ..Default::default()
        });
        let c = ClusterNode::from_node(&n);
        assert_eq!(c.uid, "uid-a");
        assert_eq!(c.name(), "a");
        assert_eq!(
            c.info.addresses,
            [
                NodeAddress {
                    kind: NodeAddressKind::InternalIp,
                    ip: "10.0.0.1".parse().unwrap()
                },
                NodeAddress {
                    kind: NodeAddressKind::ExternalIp,
                    ip: "203.0.113.1".parse().unwrap()
                },
            ]
        );
        assert_eq!(c.info.pod_cidrs, ["10.244.1.0/24".parse().unwrap()]);
        assert_eq!(c.info.labels["mesh"], "yes");
        assert!(!c.info.deleting);
    }

    #[test]
    fn external_ip_preferred() {
        type Addresses = &'static [(&'static str, &'static str)];
        let cases: [(Addresses, Option<&str>); 4] = [
            (
                &[
                    ("Hostname", "a"),
                    ("InternalIP", "10.0.0.1"),
                    ("ExternalIP", "203.0.113.1"),
                ],
                Some("203.0.113.1"),
            ),
            (&[("InternalIP", "10.0.0.1")], Some("10.0.0.1")),
            (&[("InternalIP", "fd00::1")], Some("fd00::1")),
            (&[("Hostname", "a")], None),
        ];
        for (addresses, want) in cases {
            let n = ClusterNode::from_node(&node("a", addresses, &[]));
            let want = want.map(|w| w.parse::<IpAddr>().unwrap());
            assert_eq!(n.reachable_address(), want, "{addresses:?}");
            assert_eq!(
                n.has_external(),
                addresses.iter().any(|(t, _)| *t == "ExternalIP")
            );
        }
    }

    #[test]
    fn host_port_brackets_v6() {
        assert_eq!(host_port("10.0.0.1", 3478), "10.0.0.1:3478");
        assert_eq!(host_port("fd00::1", 3478), "[fd00::1]:3478");
        assert_eq!(host_port("lb.example.com", 1), "lb.example.com:1");
        assert_eq!(ip_port("fd00::1".parse().unwrap(), 1), "[fd00::1]:1");
    }
}
