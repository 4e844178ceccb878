//! The cluster as scenario tests see it: a kubeconfig, nothing else. In the lab the API server
//! lives in the DMZ namespace, so the client's runtime threads join that namespace; against a
//! real cluster (kind) no namespace is given.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use wirekube_crds::{WireKubeMesh, WireKubePeer};

/// Field manager of everything the harness writes.
pub const MANAGER: &str = "wirekube-e2e";

/// A Kubernetes client bound to one kubeconfig (and, in the lab, one network namespace).
pub struct Cluster {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    kubeconfig: PathBuf,
}

impl Cluster {
    /// Connects with `kubeconfig`. With `netns` (a path such as `/run/netns/<name>`), every thread
    /// of the client's runtime joins that network namespace first.
    pub fn connect(kubeconfig: &Path, netns: Option<&Path>) -> Result<Cluster> {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2).enable_all().thread_name("wk-cluster");
        if let Some(ns) = netns {
            let file = Arc::new(
                std::fs::File::open(ns).with_context(|| format!("open {}", ns.display()))?,
            );
            b.on_thread_start(move || {
                // A runtime thread outside the namespace would open sockets in the wrong
                // network: fail loudly (on_thread_start cannot return an error).
                if let Err(e) = wirekube_lab::netns::join(&file) {
                    panic!("setns for the cluster client: {e}");
                }
            });
        }
        let rt = b.build().context("tokio runtime")?;
        let yaml = std::fs::read_to_string(kubeconfig)
            .with_context(|| format!("read {}", kubeconfig.display()))?;
        let client = rt
            .block_on(rt.spawn(async move {
                let kc = kube::config::Kubeconfig::from_yaml(&yaml)?;
                let cfg = kube::Config::from_custom_kubeconfig(
                    kc,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await?;
                anyhow::Ok(kube::Client::try_from(cfg)?)
            }))
            .map_err(|e| anyhow!("client task: {e}"))??;
        Ok(Cluster {
            rt,
            client,
            kubeconfig: kubeconfig.to_owned(),
        })
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs a future on the client's runtime (so its sockets live in the right namespace).
    pub fn run<T, F>(&self, f: impl FnOnce(kube::Client) -> F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let fut = f(self.client.clone());
        self.rt
            .block_on(self.rt.spawn(fut))
            .map_err(|e| anyhow!("cluster task: {e}"))?
    }

    /// Whether the API server answers (version endpoint).
    pub fn ready(&self) -> bool {
        self.run(|c| async move { Ok(c.apiserver_version().await?) })
            .is_ok()
    }

    /// Creates (or updates) a Node with the given addresses and a Ready condition, the way a
    /// kubelet registers itself.
    pub fn register_node(
        &self,
        name: &str,
        internal_ip: &str,
        external_ip: Option<&str>,
        labels: &[(String, String)],
    ) -> Result<()> {
        let mut addresses = vec![
            json!({"type": "InternalIP", "address": internal_ip}),
            json!({"type": "Hostname", "address": name}),
        ];
        if let Some(e) = external_ip {
            addresses.push(json!({"type": "ExternalIP", "address": e}));
        }
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .chain([("kubernetes.io/hostname".to_string(), json!(name))])
            .collect();
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {},
        });
        let status = json!({
            "status": {
                "addresses": addresses,
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "lab host", "lastHeartbeatTime": now(), "lastTransitionTime": now(),
                }],
                "nodeInfo": {
                    "architecture": "amd64", "operatingSystem": "linux",
                    "kernelVersion": "", "osImage": "wirekube-lab", "containerRuntimeVersion": "",
                    "kubeletVersion": "v1.34.0", "kubeProxyVersion": "", "machineID": "",
                    "systemUUID": "", "bootID": "",
                },
            }
        });
        let name = name.to_owned();
        self.run(move |c| async move {
            let api: Api<Node> = Api::all(c);
            let pp = PatchParams::apply(MANAGER).force();
            api.patch(&name, &pp, &Patch::Apply(&node))
                .await
                .with_context(|| format!("apply node {name}"))?;
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .with_context(|| format!("node {name} status"))?;
            Ok(())
        })
    }

    /// Creates or replaces an Opaque Secret.
    pub fn put_secret(&self, ns: &str, name: &str, data: &[(&str, &[u8])]) -> Result<()> {
        use base64::Engine;
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    json!(base64::engine::general_purpose::STANDARD.encode(v)),
                )
            })
            .collect();
        let obj = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": ns}, "data": data,
        });
        let (ns, name) = (ns.to_owned(), name.to_owned());
        self.run(move |c| async move {
            let api: Api<Secret> = Api::namespaced(c, &ns);
            api.patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .with_context(|| format!("apply secret {ns}/{name}"))?;
            Ok(())
        })
    }

    /// Server-side applies a WireKubeMesh.
    pub fn apply_mesh(&self, mesh: &WireKubeMesh) -> Result<()> {
        let mut obj = serde_json::to_value(mesh)?;
        obj["apiVersion"] = json!("wirekube.io/v1alpha1");
        obj["kind"] = json!("WireKubeMesh");
        let name = mesh
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| "default".into());
        self.run(move |c| async move {
            let api: Api<WireKubeMesh> = Api::all(c);
            api.patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .with_context(|| format!("apply wirekubemesh {name}"))?;
            Ok(())
        })
    }

    pub fn mesh(&self, name: &str) -> Result<Option<WireKubeMesh>> {
        let name = name.to_owned();
        self.run(move |c| async move { Ok(Api::<WireKubeMesh>::all(c).get_opt(&name).await?) })
    }

    pub fn peers(&self) -> Result<Vec<WireKubePeer>> {
        self.run(|c| async move {
            Ok(Api::<WireKubePeer>::all(c)
                .list(&ListParams::default())
                .await?
                .items)
        })
    }

    /// A watch of every WireKubePeer, kept in memory: reading it costs the API server nothing.
    /// Polling `peers()` every 100 ms while 30 nodes start listed ~30 large objects ten times a
    /// second, on the same two cores as the control plane being measured.
    ///
    /// It notes when each version of a peer arrived ([`PeerWatch::received_at`]): a caller
    /// that polls the store stamps a report with that, not with when its poll came round.
    pub fn watch_peers(&self) -> PeerWatch {
        let (store, writer) = reflector::store::<WireKubePeer>();
        let received = Arc::new(Mutex::new(HashMap::new()));
        let (client, noted) = (self.client.clone(), received.clone());
        let task = self.rt.spawn(async move {
            let api = Api::<WireKubePeer>::all(client);
            // Errors are retried by the watcher's backoff; the stream never ends by itself.
            reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
                .default_backoff()
                .applied_objects()
                .for_each(|p| {
                    if let Ok(p) = p {
                        let m = p.metadata;
                        if let (Some(name), Some(rv)) = (m.name, m.resource_version) {
                            let mut noted = noted.lock().unwrap_or_else(|e| e.into_inner());
                            noted.insert(name, (rv, jiff::Timestamp::now()));
                        }
                    }
                    std::future::ready(())
                })
                .await;
        });
        PeerWatch {
            store,
            received,
            task,
        }
    }

    pub fn nodes(&self) -> Result<Vec<Node>> {
        self.run(|c| async move {
            Ok(Api::<Node>::all(c)
                .list(&ListParams::default())
                .await?
                .items)
        })
    }

    /// Creates a Namespace (no error if it exists).
    pub fn create_namespace(&self, name: &str) -> Result<()> {
        let obj: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}}))?;
        self.run(move |c| async move {
            let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c);
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }
}

/// Every WireKubePeer as last seen by a watch ([`Cluster::watch_peers`]); the watch stops when
/// this is dropped.
pub struct PeerWatch {
    store: Store<WireKubePeer>,
    /// Per peer, the resourceVersion last received and when.
    received: Arc<Mutex<HashMap<String, (String, jiff::Timestamp)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PeerWatch {
    /// The peers by name, or `None` until the watch's first list arrived.
    pub fn peers(&self) -> Option<std::collections::BTreeMap<String, WireKubePeer>> {
        if !self.ready() {
            return None;
        }
        Some(
            self.store
                .state()
                .iter()
                .map(|p| (p.metadata.name.clone().unwrap_or_default(), (**p).clone()))
                .collect(),
        )
    }

    /// When the watch received this version of `p` (`None`: another version came since, or
    /// it came before the watch's first list).
    pub fn received_at(&self, p: &WireKubePeer) -> Option<jiff::Timestamp> {
        let (name, rv) = (
            p.metadata.name.as_ref()?,
            p.metadata.resource_version.as_ref()?,
        );
        let received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        let (seen_rv, at) = received.get(name)?;
        (seen_rv == rv).then_some(*at)
    }

    fn ready(&self) -> bool {
        futures::FutureExt::now_or_never(self.store.wait_until_ready()).is_some_and(|r| r.is_ok())
    }
}

impl Drop for PeerWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}
