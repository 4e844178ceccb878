//! Which nodes belong to the mesh (pure).

use std::collections::BTreeMap;

use super::types::NodeInfo;

/// The node carries every label of `selector` with the same value (an empty selector selects
/// every node), like a Kubernetes `matchLabels`.
pub fn selected(selector: &BTreeMap<String, String>, node: &NodeInfo) -> bool {
    selector
        .iter()
        .all(|(k, v)| node.labels.get(k).is_some_and(|have| have == v))
}

/// The nodes of the mesh: selected by `selector` and not being deleted, sorted by name.
pub fn select_nodes<'a>(
    selector: &BTreeMap<String, String>,
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
) -> Vec<&'a NodeInfo> {
    let mut v: Vec<&NodeInfo> = nodes
        .into_iter()
        .filter(|n| !n.deleting && selected(selector, n))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_matches_all_labels() {
        let mut n = NodeInfo::new("a");
        n.labels.insert("role".into(), "edge".into());
        n.labels.insert("zone".into(), "z1".into());
        let mut sel = BTreeMap::new();
        assert!(selected(&sel, &n));
        sel.insert("role".into(), "edge".into());
        assert!(selected(&sel, &n));
        sel.insert("zone".into(), "z2".into());
        assert!(!selected(&sel, &n));
        let mut gone = NodeInfo::new("b");
        gone.deleting = true;
        assert!(select_nodes(&BTreeMap::new(), [&n, &gone]).len() == 1);
    }
}
