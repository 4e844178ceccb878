//! Background garbage collection through ownerReferences, and namespace finalization.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use super::ops::{self, Ctx, DeleteOpts, Target};
use super::server::Shared;
use super::store::{EventType, Store};
use super::util;

/// Runs until the store's event channel closes.
pub async fn run(shared: Arc<Shared>) {
    let mut rx = shared.store.lock().expect("store lock").tx.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut dirty = true;
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(ev) => {
                    if ev.type_ == EventType::Deleted
                        || ev.key == "/namespaces"
                        || ev.object.pointer("/metadata/ownerReferences").is_some()
                    {
                        dirty = true;
                    }
                }
                Err(RecvError::Lagged(_)) => dirty = true,
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                if dirty {
                    dirty = false;
                    let mut st = shared.store.lock().expect("store lock");
                    pass(&mut st);
                }
            }
        }
    }
}

fn target(st: &Store, key: &str, ns: &str, name: &str) -> Option<Target> {
    let (g, r) = key.rsplit_once('/')?;
    let ri = st.registry.any_version(g, r)?;
    Some(Target {
        ri,
        ns: ns.to_string(),
        name: name.to_string(),
        sub: None,
    })
}

/// One collection pass: dependents whose owners are all gone are deleted (background
/// propagation); terminating namespaces are emptied and then removed.
pub fn pass(st: &mut Store) {
    let uids = st.all_uids();
    let terminating: Vec<String> = st
        .list("/namespaces", None)
        .iter()
        .filter(|n| n.pointer("/metadata/deletionTimestamp").is_some())
        .map(|n| util::meta_name(n).to_string())
        .collect();
    let mut victims = Vec::new();
    let mut ns_nonempty = std::collections::BTreeSet::new();
    for (key, objs) in &st.objects {
        for o in objs.values() {
            let ns = util::meta_namespace(o);
            if !ns.is_empty() && terminating.iter().any(|t| t == ns) {
                ns_nonempty.insert(ns.to_string());
                if o.pointer("/metadata/deletionTimestamp").is_none() {
                    victims.push((key.clone(), ns.to_string(), util::meta_name(o).to_string()));
                }
                continue;
            }
            let refs = o
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array);
            let orphaned = refs.is_some_and(|r| {
                !r.is_empty() && r.iter().all(|x| !uids.contains(util::str_at(x, "/uid")))
            });
            if orphaned && o.pointer("/metadata/deletionTimestamp").is_none() {
                victims.push((key.clone(), ns.to_string(), util::meta_name(o).to_string()));
            }
        }
    }
    let mut ctx = Ctx::internal("garbage-collector");
    for (key, ns, name) in victims {
        if let Some(t) = target(st, &key, &ns, &name) {
            let _ = ops::delete(st, &mut ctx, &t, &DeleteOpts::default());
        }
    }
    for ns in terminating.into_iter().filter(|n| !ns_nonempty.contains(n)) {
        let Some(old) = st.get("/namespaces", "", &ns).cloned() else {
            continue;
        };
        let Some(t) = target(st, "/namespaces", "", &ns) else {
            continue;
        };
        let mut new = old.clone();
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("finalizers");
        }
        st.replace(&t.ri, &old, new);
    }
}
