//! The Node object: registration, heartbeats (Lease + Ready condition) and the pod CIDR the
//! node IPAM controller assigns.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::error::{KubeletError, Result, api_code};

/// The Kubernetes version the lab kubelet claims to be.
pub const KUBELET_VERSION: &str = "v1.34.4";
/// Pods a lab node accepts.
const MAX_PODS: &str = "110";
/// Lease duration, as a kubelet sets it.
const LEASE_SECONDS: i32 = 40;
/// Namespace of node leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What the kubelet knows about its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    pub internal_ip: Ipv4Addr,
    pub external_ip: Option<Ipv4Addr>,
    pub labels: BTreeMap<String, String>,
    pub cpus: usize,
    pub memory_bytes: u64,
    pub kernel: String,
    pub boot_id: String,
}

/// The node's labels: the well-known ones, then `--label`s (which may override them).
pub fn labels(f: &NodeFacts) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", f.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    l.extend(f.labels.clone());
    l
}

/// The Node to register.
pub fn node_object(f: &NodeFacts) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(f.name.clone()),
            labels: Some(labels(f)),
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

/// Ready plus the three pressure conditions, all healthy.
pub fn conditions(since: Timestamp, now: Timestamp) -> Vec<NodeCondition> {
    let c = |kind: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(since)),
    };
    vec![
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status (wirekube lab kubelet)",
        ),
    ]
}

/// The full status the kubelet reports at registration.
pub fn node_status(f: &NodeFacts, since: Timestamp, now: Timestamp) -> NodeStatus {
    let mut addresses = vec![NodeAddress {
        type_: "InternalIP".into(),
        address: f.internal_ip.to_string(),
    }];
    if let Some(ext) = f.external_ip {
        addresses.push(NodeAddress {
            type_: "ExternalIP".into(),
            address: ext.to_string(),
        });
    }
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: f.name.clone(),
    });
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", f.cpus.to_string()),
        ("memory", format!("{}Ki", f.memory_bytes / 1024)),
        ("pods", MAX_PODS.to_owned()),
        ("ephemeral-storage", "100Gi".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Quantity(v)))
    .collect();
    NodeStatus {
        addresses: Some(addresses),
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(conditions(since, now)),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            boot_id: f.boot_id.clone(),
            container_runtime_version: "lab://0.1.0".into(),
            kernel_version: f.kernel.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: f.name.clone(),
            operating_system: "linux".into(),
            os_image: "WireKube lab".into(),
            system_uuid: f.name.clone(),
            swap: None,
        }),
        ..NodeStatus::default()
    }
}

/// The node's Lease, owned by the Node.
pub fn lease(name: &str, node_uid: Option<&str>, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(LEASE_NAMESPACE.to_owned()),
            owner_references: node_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: name.to_owned(),
                    uid: uid.to_owned(),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.to_owned()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    }
}

/// `MemTotal` in bytes from `/proc/meminfo` text.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => n.checked_mul(1024),
        Some(_) => None,
    }
}

/// Creates the Node (or updates the labels of an existing one) and reports its full status.
/// Returns the Node's uid.
pub async fn register(client: &Client, f: &NodeFacts, since: Timestamp) -> Result<Option<String>> {
    let api: Api<Node> = Api::all(client.clone());
    let node = match api.create(&PostParams::default(), &node_object(f)).await {
        Ok(n) => {
            info!(node = %f.name, "node registered");
            n
        }
        Err(e) if api_code(&e) == Some(409) => {
            let patch = json!({"metadata": {"labels": labels(f)}});
            api.patch(&f.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| KubeletError::api(format!("update labels of node {}", f.name), e))?
        }
        Err(e) => return Err(KubeletError::api(format!("create node {}", f.name), e)),
    };
    let status = json!({"status": node_status(f, since, Timestamp::now())});
    api.patch_status(&f.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|e| KubeletError::api(format!("report status of node {}", f.name), e))?;
    Ok(node.metadata.uid)
}

/// Renews the Lease (creating it if needed) and refreshes the Ready condition's heartbeat.
pub async fn heartbeat(
    client: &Client,
    f: &NodeFacts,
    uid: Option<&str>,
    since: Timestamp,
) -> Result<()> {
    let now = Timestamp::now();
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let what = || format!("renew lease {LEASE_NAMESPACE}/{}", f.name);
    let mut fresh = lease(&f.name, uid, now);
    match leases
        .get_opt(&f.name)
        .await
        .map_err(|e| KubeletError::api(what(), e))?
    {
        None => {
            leases
                .create(&PostParams::default(), &fresh)
                .await
                .map_err(|e| KubeletError::api(what(), e))?;
        }
        Some(old) => {
            fresh.metadata.resource_version = old.metadata.resource_version;
            leases
                .replace(&f.name, &PostParams::default(), &fresh)
                .await
                .map_err(|e| KubeletError::api(what(), e))?;
        }
    }
    let api: Api<Node> = Api::all(client.clone());
    let patch = json!({"status": {"conditions": conditions(since, now)}});
    api.patch_status(&f.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| KubeletError::api(format!("heartbeat of node {}", f.name), e))?;
    debug!(node = %f.name, "heartbeat");
    Ok(())
}

/// Heartbeats every `period` forever (errors are logged; the next beat retries).
pub async fn heartbeat_loop(
    client: Client,
    f: NodeFacts,
    uid: Option<String>,
    since: Timestamp,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = heartbeat(&client, &f, uid.as_deref(), since).await {
            warn!(error = %e, "heartbeat failed");
        }
    }
}

/// Polls the Node until the node IPAM controller has set `spec.podCIDR`, then publishes it.
pub async fn watch_pod_cidr(client: Client, name: String, tx: watch::Sender<Option<Ipv4Net>>) {
    let api: Api<Node> = Api::all(client);
    let mut warned = false;
    loop {
        let cidr = api.get(&name).await.ok().and_then(|n| n.spec?.pod_cidr);
        match cidr.as_deref().map(str::parse::<Ipv4Net>) {
            Some(Ok(net)) => {
                info!(node = %name, pod_cidr = %net, "pod CIDR assigned");
                tx.send_replace(Some(net.trunc()));
                return;
            }
            Some(Err(e)) if !warned => {
                warn!(node = %name, cidr = ?cidr, error = %e, "unusable pod CIDR (IPv4 only)");
                warned = true;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "n1".into(),
            internal_ip: Ipv4Addr::new(10, 1, 0, 11),
            external_ip: Some(Ipv4Addr::new(198, 18, 0, 10)),
            labels: [("wirekube.io/site".to_string(), "a".to_string())].into(),
            cpus: 2,
            memory_bytes: 4 << 30,
            kernel: "6.1.0".into(),
            boot_id: "b".into(),
        }
    }

    #[test]
    fn node_labels_and_status() {
        let f = facts();
        let l = labels(&f);
        for (k, v) in [
            ("kubernetes.io/hostname", "n1"),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("wirekube.io/site", "a"),
        ] {
            assert_eq!(l.get(k).map(String::as_str), Some(v), "{k}");
        }
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let s = node_status(&f, t, t);
        let addrs: Vec<(&str, &str)> = s
            .addresses
            .iter()
            .flatten()
            .map(|a| (a.type_.as_str(), a.address.as_str()))
            .collect();
        assert_eq!(
            addrs,
            [
                ("InternalIP", "10.1.0.11"),
                ("ExternalIP", "198.18.0.10"),
                ("Hostname", "n1")
            ]
        );
        let alloc = s.allocatable.unwrap();
        assert_eq!(alloc["pods"].0, "110");
        assert_eq!(alloc["cpu"].0, "2");
        assert_eq!(alloc["memory"].0, "4194304Ki");
        assert_eq!(s.node_info.unwrap().kubelet_version, "v1.34.4");
        let ready = s
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        let mut no_ext = f.clone();
        no_ext.external_ip = None;
        assert_eq!(node_status(&no_ext, t, t).addresses.unwrap().len(), 2);
    }

    #[test]
    fn heartbeat_conditions_keep_the_transition_time() {
        let since = Timestamp::from_second(1_700_000_000).unwrap();
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        for c in conditions(since, now) {
            assert_eq!(c.last_transition_time, Some(Time(since)), "{}", c.type_);
            assert_eq!(c.last_heartbeat_time, Some(Time(now)), "{}", c.type_);
            let want = if c.type_ == "Ready" { "True" } else { "False" };
            assert_eq!(c.status, want, "{}", c.type_);
        }
    }

    #[test]
    fn lease_is_owned_by_the_node() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let l = lease("n1", Some("uid-1"), now);
        assert_eq!(l.metadata.namespace.as_deref(), Some("kube-node-lease"));
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        let owner = &l.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", "uid-1"));
    }

    #[test]
    fn meminfo() {
        let cases = [
            (
                "MemTotal:        8040124 kB\nMemFree: 1 kB\n",
                Some(8040124 * 1024),
            ),
            ("MemFree: 1 kB\n", None),
            ("MemTotal: lots kB", None),
            ("MemTotal: 5 MB", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_meminfo(text), want, "{text:?}");
        }
    }
}
