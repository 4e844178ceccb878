//! Public-key hygiene: which nodes must be quarantined because of the key their agent reports.
//!
//! A WireGuard interface cannot hold two peers with one key, and every agent's dataplane
//! refuses a spec that lists one key twice; a key that is not 32 bytes of base64 cannot be a
//! peer at all. So a node whose key is malformed, and every node of a group sharing one key
//! (a VM image cloned with its key inside, or a hostile node copying another's), is left out of
//! every other node's spec and gets no peers itself: listing one of the group would let it
//! impersonate the others, and no choice among them can be made safely from the API alone.
//! The quarantine lifts on the first pass after the keys differ again (one node regenerated).

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use super::facts::NodeFacts;

/// Why a node is quarantined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyProblem {
    /// These nodes (sorted, at least two) report the same public key.
    Duplicate { nodes: Vec<String> },
    /// The node reports a key that is not the base64 of 32 bytes; `detail` says how.
    Malformed { node: String, detail: String },
}

impl KeyProblem {
    /// PascalCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            KeyProblem::Duplicate { .. } => "DuplicatePublicKey",
            KeyProblem::Malformed { .. } => "MalformedPublicKey",
        }
    }

    /// The nodes this problem quarantines.
    pub fn nodes(&self) -> &[String] {
        match self {
            KeyProblem::Duplicate { nodes } => nodes,
            KeyProblem::Malformed { node, .. } => std::slice::from_ref(node),
        }
    }
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyProblem::Duplicate { nodes } => write!(
                f,
                "nodes {} report the same public key; all are left out of the mesh until each \
                 has its own (delete the key in /var/lib/wirekube on all but one and restart \
                 their agents)",
                nodes.join(", ")
            ),
            KeyProblem::Malformed { node, detail } => {
                write!(f, "node {node} is left out of the mesh: its {detail}")
            }
        }
    }
}

/// Groups of nodes that report the same key, each sorted by name, the groups sorted by their
/// first node. `nodes` yields `(name, key)`; names are assumed unique.
pub fn duplicate_keys<'a>(nodes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Vec<String>> {
    let mut by_key: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, key) in nodes {
        by_key.entry(key).or_default().push(name.to_owned());
    }
    let mut groups: Vec<Vec<String>> = by_key
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    groups
}

/// Every key problem among `nodes`, given each node's usable key (`Ok(None)`: none reported
/// yet) or why its reported key is unusable: malformed ones first (by name), then duplicates.
pub fn key_problems<'a>(
    nodes: impl IntoIterator<Item = (&'a str, Result<Option<&'a str>, &'a str>)>,
) -> Vec<KeyProblem> {
    let mut out = Vec::new();
    let mut usable = Vec::new();
    for (name, key) in nodes {
        match key {
            Ok(Some(k)) => usable.push((name, k)),
            Ok(None) => {}
            Err(detail) => out.push(KeyProblem::Malformed {
                node: name.to_owned(),
                detail: detail.to_owned(),
            }),
        }
    }
    out.sort_by(|a, b| a.nodes().cmp(b.nodes()));
    out.extend(
        duplicate_keys(usable)
            .into_iter()
            .map(|nodes| KeyProblem::Duplicate { nodes }),
    );
    out
}

/// Which of `facts` are quarantined (same index), and why.
pub(crate) fn quarantine(facts: &[NodeFacts]) -> (Vec<bool>, Vec<KeyProblem>) {
    let problems = key_problems(facts.iter().map(|f| {
        let key = match &f.bad_key {
            Some(detail) => Err(detail.as_str()),
            None => Ok(f.key.as_deref()),
        };
        (&*f.name, key)
    }));
    let out: HashSet<&str> = problems
        .iter()
        .flat_map(KeyProblem::nodes)
        .map(String::as_str)
        .collect();
    let q = facts.iter().map(|f| out.contains(&*f.name)).collect();
    (q, problems)
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
