//! API writes: every write is checked against leadership, counted, and (for objects the
//! operator owns) a server-side apply under [`OPERATOR_MANAGER`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use wirekube_crds::{
    MESH_LABEL, OPERATOR_MANAGER, QUARANTINE_ANNOTATION, WireKubeMesh, WireKubeMeshStatus,
    WireKubePeer,
};

use crate::decide::RelayObject;
use crate::diff::DesiredPeer;
use crate::error::{Error, Result};
use crate::leadership::Leadership;
use crate::managed_relay::{self, hash_json};
use crate::metrics::Metrics;

/// Remembers writes whose watch event has not arrived yet, so a reconcile that runs on a
/// stale cache does not write the same thing again. Key: object; value: (resourceVersion
/// observed before the write, hash of what was written).
#[derive(Default)]
pub struct RecentWrites(Mutex<HashMap<String, (Option<String>, String)>>);

impl RecentWrites {
    /// Whether `hash` was written while the cache still shows `observed_rv`.
    pub fn pending(&self, key: &str, observed_rv: Option<&str>, hash: &str) -> bool {
        let mut m = self.0.lock().expect("recent writes lock");
        match m.get(key) {
            Some((rv, h)) if rv.as_deref() == observed_rv => h == hash,
            Some(_) => {
                m.remove(key);
                false
            }
            None => false,
        }
    }

    pub fn record(&self, key: String, observed_rv: Option<String>, hash: String) {
        self.0
            .lock()
            .expect("recent writes lock")
            .insert(key, (observed_rv, hash));
    }
}

/// The writing half of the controller context.
pub struct Writer {
    pub client: Client,
    pub namespace: String,
    pub metrics: Metrics,
    pub leader: Arc<Leadership>,
    pub recent: RecentWrites,
}

fn apply_params() -> PatchParams {
    PatchParams::apply(OPERATOR_MANAGER).force()
}

impl Writer {
    fn guard(&self, what: &str) -> Result<()> {
        if self.leader.may_write(crate::leadership::now_ms()) {
            Ok(())
        } else {
            Err(Error::NotLeader(what.to_string()))
        }
    }

    /// Server-side applies a node's peer: label, owner (the Node), quarantine note and spec.
    /// Applying without the note removes it (the operator owns the annotation).
    pub async fn apply_peer(&self, d: &DesiredPeer<'_>, observed_rv: Option<&str>) -> Result<()> {
        let DesiredPeer {
            mesh,
            node,
            node_uid,
            spec,
            quarantine,
        } = *d;
        let key = format!("peer/{node}");
        let hash = hash_json(&(mesh, node_uid, spec, quarantine))?;
        if self.recent.pending(&key, observed_rv, &hash) {
            return Ok(());
        }
        self.guard(&key)?;
        let mut metadata = json!({
            "name": node,
            "labels": { MESH_LABEL: mesh },
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid
            }],
        });
        if let Some(note) = quarantine {
            metadata["annotations"] = json!({ QUARANTINE_ANNOTATION: note });
        }
        let body = json!({
            "apiVersion": "wirekube.io/v1alpha1",
            "kind": "WireKubePeer",
            "metadata": metadata,
            "spec": spec,
        });
        let api: Api<WireKubePeer> = Api::all(self.client.clone());
        api.patch(node, &apply_params(), &Patch::Apply(&body))
            .await
            .map_err(Error::kube("apply", format!("WireKubePeer {node}")))?;
        self.metrics.write("WireKubePeer", "apply");
        self.recent.record(key, observed_rv.map(String::from), hash);
        Ok(())
    }

    pub async fn delete_peer(&self, name: &str) -> Result<()> {
        self.guard(name)?;
        let api: Api<WireKubePeer> = Api::all(self.client.clone());
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube("delete", format!("WireKubePeer {name}"))(e)),
        }
        self.metrics.write("WireKubePeer", "delete");
        Ok(())
    }

    /// Server-side applies the mesh status subresource.
    pub async fn apply_status(
        &self,
        mesh: &WireKubeMesh,
        status: &WireKubeMeshStatus,
    ) -> Result<()> {
        let name = mesh.name_any();
        let key = format!("mesh-status/{name}");
        let hash = hash_json(status)?;
        if self
            .recent
            .pending(&key, mesh.resource_version().as_deref(), &hash)
        {
            return Ok(());
        }
        self.guard(&key)?;
        let body = json!({
            "apiVersion": "wirekube.io/v1alpha1",
            "kind": "WireKubeMesh",
            "metadata": { "name": name },
            "status": status,
        });
        let api: Api<WireKubeMesh> = Api::all(self.client.clone());
        api.patch_status(&name, &apply_params(), &Patch::Apply(&body))
            .await
            .map_err(Error::kube("apply status", format!("WireKubeMesh {name}")))?;
        self.metrics.write("WireKubeMesh/status", "apply");
        self.recent.record(key, mesh.resource_version(), hash);
        Ok(())
    }

    fn ns_api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn get<K>(&self, name: &str) -> Result<Option<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        self.ns_api::<K>()
            .get_opt(name)
            .await
            .map_err(Error::kube("get", format!("{} {name}", K::kind(&()))))
    }

    /// Applies a relay object unless the observed one carries the same desired hash.
    /// Returns the object as it is now.
    pub async fn apply_relay_object<K>(&self, observed: Option<K>, desired: &K) -> Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        if let Some(o) = observed
            && managed_relay::up_to_date(o.meta(), desired.meta())
        {
            return Ok(o);
        }
        let name = desired.name_any();
        let kind = K::kind(&()).to_string();
        self.guard(&name)?;
        let mut body = serde_json::to_value(desired).map_err(|source| Error::Serde {
            what: format!("{kind} {name}"),
            source,
        })?;
        body["apiVersion"] = json!(K::api_version(&()));
        body["kind"] = json!(kind);
        let out = self
            .ns_api::<K>()
            .patch(&name, &apply_params(), &Patch::Apply(&body))
            .await
            .map_err(Error::kube("apply", format!("{kind} {name}")))?;
        self.metrics.write(&kind, "apply");
        Ok(out)
    }

    /// Creates the token Secret (never overwrites one: a conflict means it exists).
    pub async fn create_secret(&self, secret: &Secret) -> Result<()> {
        let name = secret.name_any();
        self.guard(&name)?;
        match self
            .ns_api::<Secret>()
            .create(&PostParams::default(), secret)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            // The Secret's data must never reach a log line: report only its name.
            Err(e) => return Err(Error::kube("create", format!("Secret {name}"))(e)),
        }
        self.metrics.write("Secret", "create");
        Ok(())
    }

    /// Deletes the named relay objects of `mesh` (the ones [`crate::decide::relay`] found
    /// owned by it). Whether any was deleted (one already gone is not).
    pub async fn delete_relay_objects(
        &self,
        mesh: &WireKubeMesh,
        objects: &[RelayObject],
    ) -> Result<bool> {
        let name = managed_relay::relay_name(&mesh.name_any());
        let mut deleted = false;
        for o in objects {
            deleted |= match o {
                RelayObject::Deployment => self.delete_named::<Deployment>(&name).await?,
                RelayObject::Service => self.delete_named::<Service>(&name).await?,
                RelayObject::Secret => self.delete_named::<Secret>(&name).await?,
            };
        }
        Ok(deleted)
    }

    async fn delete_named<K>(&self, name: &str) -> Result<bool>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let kind = K::kind(&()).to_string();
        self.guard(name)?;
        match self
            .ns_api::<K>()
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(false),
            Err(e) => return Err(Error::kube("delete", format!("{kind} {name}"))(e)),
        }
        self.metrics.write(&kind, "delete");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_writes_skip_only_while_cache_is_stale() {
        let r = RecentWrites::default();
        assert!(!r.pending("k", Some("1"), "h"));
        r.record("k".into(), Some("1".into()), "h".into());
        assert!(r.pending("k", Some("1"), "h"));
        assert!(!r.pending("k", Some("1"), "other"));
        // The cache caught up (new resourceVersion): the entry is dropped.
        assert!(!r.pending("k", Some("2"), "h"));
        assert!(!r.pending("k", Some("1"), "h"));
        r.record("n".into(), None, "h".into());
        assert!(r.pending("n", None, "h"));
    }
}
