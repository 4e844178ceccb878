//! Object storage: JSON objects per resource, one global resourceVersion, a bounded event
//! history for watches, and the hooks that keep the registry, RBAC and admission in sync.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::admission::PolicyEngine;
use super::rbac::Authorizer;
use super::resources::{self, Registry, ResourceInfo};
use super::util::{self, meta_mut};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub type_: EventType,
    pub key: String,
    pub namespace: String,
    pub object: Value,
    /// The object before this change (for selector transitions).
    pub old: Option<Value>,
}

pub type ObjKey = (String, String); // (namespace, name)

/// All server state that survives a stop/restart.
pub struct Store {
    pub objects: HashMap<String, BTreeMap<ObjKey, Value>>,
    pub rv: u64,
    pub history: VecDeque<Arc<Event>>,
    pub history_limit: usize,
    /// Events with resourceVersion <= this are no longer in `history`.
    pub compacted_rv: u64,
    pub tx: broadcast::Sender<Arc<Event>>,
    pub registry: Registry,
    pub authorizer: Authorizer,
    pub policies: PolicyEngine,
    pub node_ports: BTreeSet<u16>,
    pub next_cluster_ip: u32,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(65536);
        let mut s = Store {
            objects: HashMap::new(),
            rv: 1,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted_rv: 0,
            tx,
            registry: Registry::new(),
            authorizer: Authorizer::new(),
            policies: PolicyEngine::default(),
            node_ports: BTreeSet::new(),
            next_cluster_ip: 10,
        };
        let ns = s
            .registry
            .get("", "v1", "namespaces")
            .expect("namespaces registered");
        for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            s.insert_new(&ns, obj);
        }
        s
    }

    pub fn get(&self, key: &str, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(key)?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// Objects of a resource, optionally in one namespace, in (namespace, name) order.
    pub fn list(&self, key: &str, ns: Option<&str>) -> Vec<&Value> {
        let Some(m) = self.objects.get(key) else {
            return Vec::new();
        };
        match ns {
            Some(ns) => m
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v)
                .collect(),
            None => m.values().collect(),
        }
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn emit(&mut self, type_: EventType, ri: &ResourceInfo, object: Value, old: Option<Value>) {
        let ev = Arc::new(Event {
            rv: self.rv,
            type_,
            key: ri.storage_key(),
            namespace: util::meta_namespace(&object).to_string(),
            object,
            old,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_limit {
            if let Some(e) = self.history.pop_front() {
                self.compacted_rv = e.rv;
            }
        }
        let _ = self.tx.send(ev);
    }

    /// Drops the whole watch history (tests: force 410 Gone for older resourceVersions).
    pub fn compact(&mut self) {
        self.compacted_rv = self.rv;
        self.history.clear();
    }

    /// Stores a new object: uid, creationTimestamp, generation, resourceVersion.
    pub fn insert_new(&mut self, ri: &ResourceInfo, mut obj: Value) -> Value {
        let rv = self.next_rv();
        let m = meta_mut(&mut obj);
        m.insert("uid".into(), json!(util::new_uid()));
        m.insert("creationTimestamp".into(), json!(util::now_rfc3339()));
        m.insert("generation".into(), json!(1));
        m.insert("resourceVersion".into(), json!(rv.to_string()));
        m.remove("deletionTimestamp");
        let key = (
            util::meta_namespace(&obj).to_string(),
            util::meta_name(&obj).to_string(),
        );
        self.objects
            .entry(ri.storage_key())
            .or_default()
            .insert(key, obj.clone());
        self.after_write(ri, &obj, false);
        self.emit(EventType::Added, ri, obj.clone(), None);
        obj
    }

    /// Replaces an object; a no-op change keeps the old resourceVersion and emits nothing.
    /// An object being deleted whose finalizers became empty is removed.
    pub fn replace(&mut self, ri: &ResourceInfo, old: &Value, mut new: Value) -> Value {
        if strip_volatile(old) == strip_volatile(&new) {
            return old.clone();
        }
        let gen_old = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let spec_changed = if ri.has_status {
            without(old, &["metadata", "status"]) != without(&new, &["metadata", "status"])
        } else {
            without(old, &["metadata"]) != without(&new, &["metadata"])
        };
        let rv = self.next_rv();
        let m = meta_mut(&mut new);
        m.insert(
            "generation".into(),
            json!(if spec_changed { gen_old + 1 } else { gen_old }),
        );
        m.insert("resourceVersion".into(), json!(rv.to_string()));
        let deleting = m.contains_key("deletionTimestamp");
        let finalizers_empty = m
            .get("finalizers")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty())
            && new
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_none_or(|a| a.is_empty() || ri.kind != "Namespace");
        let key = (
            util::meta_namespace(&new).to_string(),
            util::meta_name(&new).to_string(),
        );
        if deleting && finalizers_empty {
            meta_mut(&mut new).remove("finalizers");
            return self.remove_committed(ri, key, new, Some(old.clone()));
        }
        self.objects
            .entry(ri.storage_key())
            .or_default()
            .insert(key, new.clone());
        self.after_write(ri, &new, false);
        self.emit(EventType::Modified, ri, new.clone(), Some(old.clone()));
        new
    }

    /// Removes an object now (no finalizer check); emits DELETED at a new resourceVersion.
    pub fn remove(&mut self, ri: &ResourceInfo, ns: &str, name: &str) -> Option<Value> {
        let key = (ns.to_string(), name.to_string());
        let mut obj = self.objects.get(&ri.storage_key())?.get(&key)?.clone();
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        Some(self.remove_committed(ri, key, obj, None))
    }

    fn remove_committed(
        &mut self,
        ri: &ResourceInfo,
        key: ObjKey,
        obj: Value,
        old: Option<Value>,
    ) -> Value {
        if let Some(m) = self.objects.get_mut(&ri.storage_key()) {
            m.remove(&key);
        }
        self.after_write(ri, &obj, true);
        self.emit(EventType::Deleted, ri, obj.clone(), old);
        if ri.storage_key() == "apiextensions.k8s.io/customresourcedefinitions" {
            self.drop_crd_objects(&obj);
        }
        obj
    }

    /// Registry/RBAC/admission follow the objects that configure them.
    fn after_write(&mut self, ri: &ResourceInfo, obj: &Value, deleted: bool) {
        let name = util::meta_name(obj).to_string();
        match ri.storage_key().as_str() {
            "apiextensions.k8s.io/customresourcedefinitions" => {
                let group = util::str_at(obj, "/spec/group").to_string();
                let plural = util::str_at(obj, "/spec/names/plural").to_string();
                self.registry.remove_group_resource(&group, &plural);
                if !deleted && let Ok(list) = resources::from_crd(obj) {
                    for r in list {
                        self.registry.insert(r);
                    }
                }
            }
            "rbac.authorization.k8s.io/roles"
            | "rbac.authorization.k8s.io/clusterroles"
            | "rbac.authorization.k8s.io/rolebindings"
            | "rbac.authorization.k8s.io/clusterrolebindings" => {
                if deleted {
                    let ns = util::meta_namespace(obj);
                    let ns = if ns.is_empty() { None } else { Some(ns) };
                    self.authorizer.remove(&ri.kind, ns, &name);
                } else {
                    self.authorizer.upsert(obj);
                }
            }
            "admissionregistration.k8s.io/validatingadmissionpolicies"
            | "admissionregistration.k8s.io/validatingadmissionpolicybindings" => {
                if deleted {
                    self.policies.remove(&ri.kind, &name);
                } else {
                    self.policies.upsert(obj);
                }
            }
            _ => {}
        }
    }

    fn drop_crd_objects(&mut self, crd: &Value) {
        let group = util::str_at(crd, "/spec/group");
        let plural = util::str_at(crd, "/spec/names/plural");
        let key = format!("{group}/{plural}");
        let Some(objs) = self.objects.remove(&key) else {
            return;
        };
        let Ok(infos) = resources::from_crd(crd) else {
            return;
        };
        let Some(ri) = infos.into_iter().next() else {
            return;
        };
        for (_, mut obj) in objs {
            let rv = self.next_rv();
            meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
            self.emit(EventType::Deleted, &ri, obj, None);
        }
    }

    /// Every uid currently stored (garbage collection).
    pub fn all_uids(&self) -> BTreeSet<String> {
        self.objects
            .values()
            .flat_map(|m| m.values())
            .map(|o| util::str_at(o, "/metadata/uid").to_string())
            .collect()
    }
}

fn strip_volatile(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("generation");
        if let Some(mf) = m.get_mut("managedFields").and_then(Value::as_array_mut) {
            for e in mf.iter_mut().filter_map(Value::as_object_mut) {
                e.remove("time");
            }
        }
    }
    v
}

fn without(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        for k in keys {
            m.remove(*k);
        }
    }
    v
}
