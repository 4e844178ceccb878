//! Which watch events start a reconcile (pure). The caches see every event; a re-plan is only
//! worth it when something the plan or the mesh status reads has changed.
//!
//! Why: a Node's status is rewritten by every kubelet heartbeat, and an agent patches its
//! status for transfer counters and path changes that the planner never reads. Each such
//! event reset the controller's quiet-time debounce, so during a 30-node start-up the
//! operator sat idle up to 1.5 s between passes while statuses kept arriving
//! (docs/operator.md, "What starts a reconcile").

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::runtime::watcher::Event;
use wirekube_crds::WireKubePeer;

use crate::nodes::ClusterNode;

/// What of a Node the operator reads: its [`ClusterNode`] (name, uid, addresses, labels,
/// pod CIDRs, deletion).
pub fn node_key(node: &Node) -> u64 {
    hash_of(&ClusterNode::from_node(node))
}

/// What of a WireKubePeer the operator reads: the metadata it writes or checks (generation,
/// labels, annotations, owners, deletion), and of the status the key, the candidates, the
/// NAT type and public IP, which peers fell back (`fallback`, `reason`), and the Ready
/// condition (the mesh's ready count). Not the counters, round-trip times, handshake times
/// or actual paths.
pub fn peer_key(p: &WireKubePeer) -> u64 {
    let mut h = DefaultHasher::new();
    let m = &p.metadata;
    m.generation.hash(&mut h);
    m.labels.hash(&mut h);
    m.annotations.hash(&mut h);
    m.deletion_timestamp.as_ref().map(|t| t.0).hash(&mut h);
    for o in p.owner_references() {
        (&o.kind, &o.name, &o.uid).hash(&mut h);
    }
    if let Some(st) = &p.status {
        (&st.public_key, &st.public_ip, st.nat_type).hash(&mut h);
        for c in &st.candidates {
            (c.kind, &c.address, c.prefix_length, &c.observed_by).hash(&mut h);
        }
        for c in &st.connections {
            (&c.name, c.fallback, c.reason).hash(&mut h);
        }
        for c in st.conditions.iter().filter(|c| c.type_ == "Ready") {
            c.status.hash(&mut h);
        }
    }
    h.finish()
}

fn hash_of(v: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Remembers each object's key, by uid (by name when it has none), and lets through what
/// could change a plan: every object of a (re)list, every deletion, and an update only when
/// its key changed.
pub struct TriggerFilter<K> {
    key: fn(&K) -> u64,
    seen: HashMap<String, u64>,
}

impl<K: kube::Resource> TriggerFilter<K> {
    pub fn new(key: fn(&K) -> u64) -> Self {
        Self {
            key,
            seen: HashMap::new(),
        }
    }

    /// The object to trigger on for `ev`, if any.
    pub fn admit(&mut self, ev: Event<K>) -> Option<K> {
        match ev {
            Event::Apply(o) => {
                let k = (self.key)(&o);
                (self.seen.insert(id(&o), k) != Some(k)).then_some(o)
            }
            Event::InitApply(o) => {
                self.seen.insert(id(&o), (self.key)(&o));
                Some(o)
            }
            Event::Delete(o) => {
                self.seen.remove(&id(&o));
                Some(o)
            }
            Event::Init | Event::InitDone => None,
        }
    }
}

fn id<K: kube::Resource>(o: &K) -> String {
    o.meta().uid.clone().unwrap_or_else(|| o.name_any())
}

#[cfg(test)]
#[path = "triggers_tests.rs"]
mod tests;
