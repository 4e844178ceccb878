//! Harness for the operator's integration tests: the in-process API test server (CRDs, the
//! operator's RBAC, LoadBalancer pool), nodes, simulated agents, and operator replicas run as
//! library tasks with their own metrics.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wirekube_crds::{NatType, WireKubeMesh, WireKubePeer};
use wirekube_e2e::apiserver::{ApiServer, ApiServerConfig, ApiServerHandle, Identity};
use wirekube_operator::{ControllerSettings, Metrics, OperatorSettings};

pub const NS: &str = "wirekube-system";
pub const LB_IP: &str = "203.0.113.10";

pub struct Env {
    pub server: ApiServerHandle,
    pub admin: Client,
}

pub async fn start() -> Env {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cfg = ApiServerConfig {
        preload: vec![
            root.join("config/operator/namespace.yaml"),
            root.join("config/crd"),
            root.join("config/rbac"),
        ],
        lb_pool: vec![LB_IP.parse().unwrap()],
        bookmark_interval: Duration::from_secs(1),
        ..ApiServerConfig::default()
    };
    let server = ApiServer::start(cfg).await.expect("API test server");
    let admin = server.client(&Identity::Admin).await.unwrap();
    Env { server, admin }
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
}

impl Env {
    pub async fn operator(&self, identity: &str, lease_secs: u64) -> Replica {
        // The operator runs with its own service account, so the shipped RBAC is exercised.
        let client = self.server.client(&Identity::Operator).await.unwrap();
        let metrics = Metrics::default();
        let stop = CancellationToken::new();
        let settings = OperatorSettings {
            controller: ControllerSettings {
                namespace: NS.into(),
                identity: identity.into(),
                debounce: Duration::from_millis(50),
                ..ControllerSettings::default()
            },
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

    /// Reports a status for `node` as its agent would (merge patch of the status subresource).
    pub async fn report(
        &self,
        node: &str,
        key: &str,
        nat: NatType,
        host: &str,
        srflx: Option<&str>,
    ) {
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

    pub async fn mesh(&self, name: &str) -> WireKubeMesh {
        self.meshes().get(name).await.unwrap()
    }

    pub async fn peer_list(&self) -> Vec<WireKubePeer> {
        let mut v = self.peers().list(&Default::default()).await.unwrap().items;
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        v
    }
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

/// Waits until `counter` has not moved for `quiet`, returning its value.
pub async fn settled(quiet: Duration, counter: impl Fn() -> u64) -> u64 {
    let mut last = counter();
    let mut since = Instant::now();
    loop {
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
