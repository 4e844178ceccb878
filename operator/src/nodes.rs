//! Node selection and node facts (pure).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

/// What the operator needs to know about one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    pub uid: String,
    /// `(type, address)` from `status.addresses`, in API order.
    pub addresses: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    /// `spec.podCIDRs` as written by node IPAM.
    pub pod_cidrs: Vec<String>,
    /// The node has a deletionTimestamp.
    pub deleting: bool,
}

impl NodeFacts {
    pub fn from_node(node: &Node) -> NodeFacts {
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|a| {
                a.iter()
                    .map(|x| (x.type_.clone(), x.address.clone()))
                    .collect()
            })
            .unwrap_or_default();
        NodeFacts {
            name: node.name_any(),
            uid: node.uid().unwrap_or_default(),
            addresses,
            labels: node.labels().clone(),
            pod_cidrs: node
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidrs.clone())
                .unwrap_or_default(),
            deleting: node.metadata.deletion_timestamp.is_some(),
        }
    }

    /// The address a relay client outside the cluster should dial: the first ExternalIP,
    /// else the first InternalIP.
    pub fn reachable_address(&self) -> Option<&str> {
        ["ExternalIP", "InternalIP"].iter().find_map(|kind| {
            self.addresses
                .iter()
                .find(|(t, a)| t == kind && !a.is_empty())
                .map(|(_, a)| a.as_str())
        })
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
) -> Vec<NodeFacts> {
    let mut out: Vec<NodeFacts> = nodes
        .into_iter()
        .filter(|n| matches_selector(n.labels(), selector))
        .map(NodeFacts::from_node)
        .filter(|n| !n.deleting && !n.uid.is_empty())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
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
    use crate::fixtures::node;

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
        gone.metadata.deletion_timestamp = Some(crate::fixtures::time(1));
        let nodes = [
            node("b", &[("InternalIP", "10.0.0.2")], &[("mesh", "yes")]),
            node("a", &[("InternalIP", "10.0.0.1")], &[("mesh", "yes")]),
            node("x", &[("InternalIP", "10.0.0.9")], &[]),
            gone,
        ];
        let sel = BTreeMap::from([("mesh".into(), "yes".into())]);
        let names: Vec<_> = select_nodes(&nodes, &sel)
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(select_nodes(&nodes, &BTreeMap::new()).len(), 3);
    }

    #[test]
    fn external_ip_preferred() {
        let n = NodeFacts::from_node(&node(
            "a",
            &[
                ("Hostname", "a"),
                ("InternalIP", "10.0.0.1"),
                ("ExternalIP", "203.0.113.1"),
            ],
            &[],
        ));
        assert_eq!(n.reachable_address(), Some("203.0.113.1"));
        let n = NodeFacts::from_node(&node("a", &[("InternalIP", "10.0.0.1")], &[]));
        assert_eq!(n.reachable_address(), Some("10.0.0.1"));
        let n = NodeFacts::from_node(&node("a", &[("Hostname", "a")], &[]));
        assert_eq!(n.reachable_address(), None);
    }

    #[test]
    fn host_port_brackets_v6() {
        assert_eq!(host_port("10.0.0.1", 3478), "10.0.0.1:3478");
        assert_eq!(host_port("fd00::1", 3478), "[fd00::1]:3478");
        assert_eq!(host_port("lb.example.com", 1), "lb.example.com:1");
    }
}
