//! Harness for the operator's integration tests: the real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler) in a lab DMZ with WireKube installed as a user does
//! (namespace, CRDs, RBAC; no workloads), Nodes created by the admin, simulated agents, and
//! operator replicas run as library tasks with their own metrics, each authenticated with a
//! TokenRequest token of the shipped `wirekube-operator` ServiceAccount.
//!
//! The API server listens on the DMZ address only, so a test body runs on a tokio runtime whose
//! threads all live in the DMZ network namespace ([`run`]). Needs root.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wirekube_crds::{NatType, WireKubeMesh, WireKubePeer};
use wirekube_e2e::kube_lab::KubeLab;
use wirekube_kubelab::cloud::LabCloud;
use wirekube_operator::{ControllerSettings, Metrics, OperatorSettings};
use wirekube_planner::fixtures::test_key;

pub const NS: &str = "wirekube-system";
/// The lab cloud's LoadBalancer pool (one address).
pub const LB_IP: &str = "203.0.113.10";

/// Starts a lab control plane tagged `tag`, installs WireKube's namespace, CRDs and RBAC, and
/// runs `body` with an [`Env`] on a runtime inside the DMZ. Panics in `body` fail the test;
/// the lab is torn down either way.
pub fn run<F, Fut>(tag: &str, body: F)
where
    F: FnOnce(Env) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let lab = lab(tag);
    let admin_kc = lab.cp.admin_kubeconfig();
    let operator_kc = lab
        .service_account_kubeconfig(NS, "wirekube-operator", None)
        .expect("operator service-account token");
    // What a cloud controller does for `type: LoadBalancer` Services: an address from the pool.
    let cloud = LabCloud::start(
        &admin_kc,
        Some(&wirekube_lab::netns::ns_path(&lab.dmz.ns)),
        vec![LB_IP.parse().unwrap()],
        None,
    )
    .expect("lab cloud");
    in_dmz(&lab, move || async move {
        let admin = client(&admin_kc).await;
        body(Env {
            admin,
            admin_kubeconfig: admin_kc,
            operator_kubeconfig: operator_kc,
        })
        .await
    });
    drop(cloud);
    lab.shutdown().expect("lab shutdown");
}

/// A lab with the control plane running and WireKube installed minus workloads ([`install`]).
pub fn lab(tag: &str) -> KubeLab {
    let lab = KubeLab::start(tag).expect("lab control plane (needs root)");
    install(&lab);
    lab
}

/// Installs WireKube as a user does, minus workloads: `kubectl apply --server-side` of the
/// namespace, `-k config/crd` and `-k config/rbac`, then waits for the CRDs to be Established.
pub fn install(lab: &KubeLab) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    lab.install_api()
        .expect("namespace, CRDs and RBAC installed");
}

/// Runs the future made by `f` to completion on a multi-thread runtime whose threads (workers
/// and blocking pool alike) are created from a thread that joined the DMZ namespace, so every
/// socket it opens is there.
pub fn in_dmz<T, F, Fut>(lab: &KubeLab, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    lab.lab
        .in_host(&lab.dmz, move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(f())
        })
        .expect("thread in the DMZ namespace")
}

/// A client for `kubeconfig` (call on a DMZ runtime).
pub async fn client(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig");
    Client::try_from(cfg).expect("client")
}

pub struct Env {
    pub admin: Client,
    pub admin_kubeconfig: PathBuf,
    /// TokenRequest token of `wirekube-system/wirekube-operator`.
    pub operator_kubeconfig: PathBuf,
}

/// One operator replica running in this process.
pub struct Replica {
    pub metrics: Metrics,
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Replica {
    /// Graceful stop (releases the lease).
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    /// Dies without releasing anything.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    pub fn is_leader(&self) -> bool {
        self.metrics.leader.get() == 1
    }

    pub fn writes(&self) -> u64 {
        self.metrics.total_writes()
    }

    pub fn reconciles(&self) -> u64 {
        self.metrics.reconciles.get()
    }

    /// The mesh's peer writes held back as endpoint records (`deferral`).
    pub fn records_held(&self, mesh: &str) -> i64 {
        let label = wirekube_operator::metrics::MeshLabel { mesh: mesh.into() };
        self.metrics.records_held.get_or_create(&label).get()
    }

    /// The mesh's peer updates held while nodes publish their first keys (`joining`).
    pub fn held_for_keys(&self, mesh: &str) -> i64 {
        let label = wirekube_operator::metrics::MeshLabel { mesh: mesh.into() };
        self.metrics.held_for_keys.get_or_create(&label).get()
    }
}

impl Env {
    pub async fn operator(&self, identity: &str, lease_secs: u64) -> Replica {
        self.operator_with(identity, lease_secs, |_| {}).await
    }

    /// An operator whose controller settings `adjust` changes from the tests' defaults.
    pub async fn operator_with(
        &self,
        identity: &str,
        lease_secs: u64,
        adjust: impl FnOnce(&mut ControllerSettings),
    ) -> Replica {
        // The operator runs with its own service account, so the shipped RBAC is exercised.
        let client = client(&self.operator_kubeconfig).await;
        let metrics = Metrics::default();
        let stop = CancellationToken::new();
        let mut controller = ControllerSettings {
            namespace: NS.into(),
            identity: identity.into(),
            debounce: Duration::from_millis(50),
            ..ControllerSettings::default()
        };
        adjust(&mut controller);
        let settings = OperatorSettings {
            controller,
            lease_name: "wirekube-operator".into(),
            lease_duration: lease_secs,
        };
        let (m, s) = (metrics.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let ready = Arc::new(AtomicBool::new(false));
            if let Err(e) = wirekube_operator::run(client, settings, m, ready, s).await {
                eprintln!("operator exited: {e}");
            }
        });
        Replica {
            metrics,
            stop,
            task,
        }
    }

    pub fn meshes(&self) -> Api<WireKubeMesh> {
        Api::all(self.admin.clone())
    }

    pub fn peers(&self) -> Api<WireKubePeer> {
        Api::all(self.admin.clone())
    }

    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.admin.clone())
    }

    /// Creates a Node as the admin (no kubelet runs in these tests) and sets its addresses.
    pub async fn add_node(&self, name: &str, internal: &str, external: Option<&str>) {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"wirekube.io/enabled": "true"}},
        }))
        .unwrap();
        self.nodes()
            .create(&PostParams::default(), &node)
            .await
            .unwrap();
        let mut addrs = vec![json!({"type": "InternalIP", "address": internal})];
        if let Some(e) = external {
            addrs.push(json!({"type": "ExternalIP", "address": e}));
        }
        self.nodes()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"addresses": addrs}})),
            )
            .await
            .unwrap();
    }

    pub async fn apply_mesh(&self, name: &str, spec: serde_json::Value) {
        let body = json!({
            "apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubeMesh",
            "metadata": {"name": name}, "spec": spec,
        });
        self.meshes()
            .patch(
                name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap();
    }

    /// Reports a status for `node` as its agent would (merge patch of the status subresource,
    /// as the admin). `key` is a key, or a label made into one ([`test_key`]): the CRD refuses
    /// anything that is not the base64 of 32 bytes.
    pub async fn report(
        &self,
        node: &str,
        key: &str,
        nat: NatType,
        host: &str,
        srflx: Option<&str>,
    ) {
        let key = if wirekube_crds::is_public_key(key) {
            key.to_string()
        } else {
            test_key(key)
        };
        let mut candidates = vec![json!({"kind": "host", "address": host, "prefixLength": 24})];
        if let Some(s) = srflx {
            candidates.push(json!({"kind": "srflx", "address": s}));
        }
        let public_ip = srflx.map(|s| s.split(':').next().unwrap().to_string());
        self.peers()
            .patch_status(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "publicKey": key, "natType": nat, "candidates": candidates, "publicIP": public_ip,
                }})),
            )
            .await
            .unwrap();
    }

    /// Runs the pods matching `selector` in `ns` on `nodes`, as the scheduler and the nodes'
    /// kubelets would (none runs here; Nodes without allocatable resources are never picked by
    /// the real scheduler): waits until there are as many live pods as `nodes`, binds each
    /// unbound one to a node that has none yet (Binding subresource), and marks each Running and
    /// Ready. Their ReplicaSet and Deployment then count them available.
    pub async fn run_pods(&self, ns: &str, selector: &str, nodes: &[&str]) {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), ns);
        let lp = ListParams::default().labels(selector);
        let mut live = eventually(Duration::from_secs(30), selector, || async {
            let l: Vec<Pod> = (pods.list(&lp).await.unwrap().items.into_iter())
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            (l.len() >= nodes.len()).then_some(l)
        })
        .await;
        let node_of = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
        // Bound pods first, so they keep their nodes.
        live.sort_by_key(|p| node_of(p).is_none());
        let mut free: Vec<&str> = nodes.to_vec();
        for p in live {
            let name = p.metadata.name.clone().unwrap();
            match node_of(&p) {
                Some(n) => free.retain(|f| *f != n),
                None => {
                    let Some(node) = free.pop() else { continue };
                    let binding = json!({"apiVersion": "v1", "kind": "Binding",
                        "metadata": {"name": name},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
                    pods.create_subresource::<_, serde_json::Value>(
                        "binding",
                        &name,
                        &PostParams::default(),
                        &binding,
                    )
                    .await
                    .unwrap();
                }
            }
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let status = json!({"status": {
                "phase": "Running",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                ],
            }});
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                .await
                .unwrap();
        }
    }

    pub async fn mesh(&self, name: &str) -> WireKubeMesh {
        self.meshes().get(name).await.unwrap()
    }

    pub async fn peer_list(&self) -> Vec<WireKubePeer> {
        let mut v = self.peers().list(&Default::default()).await.unwrap().items;
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        v
    }

    /// The cluster's current resourceVersion (etcd revision), read from a list.
    pub async fn resource_version(&self) -> String {
        let l = self
            .peers()
            .list_metadata(&Default::default())
            .await
            .unwrap();
        l.metadata.resource_version.unwrap_or_default()
    }
}

/// The mesh most tests apply: nodes labelled `wirekube.io/enabled=true`, an external relay.
pub fn mesh_spec() -> serde_json::Value {
    json!({
        "meshCIDR": "10.99.0.0/24",
        "nodeSelector": {"wirekube.io/enabled": "true"},
        "relay": {"provider": "external", "external": {"endpoint": "198.51.100.50:3478"}},
    })
}

/// Polls `f` every 50 ms until it returns `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `counter` has not moved for `quiet`, returning its value; panics if it is still
/// moving after a minute.
pub async fn settled(quiet: Duration, counter: impl Fn() -> u64) -> u64 {
    let mut last = counter();
    let mut since = Instant::now();
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "counter still moving after 60 s (at {last})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = counter();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
    }
}

pub fn condition<'a>(
    m: &'a WireKubeMesh,
    ty: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    m.status.as_ref()?.conditions.iter().find(|c| c.type_ == ty)
}
