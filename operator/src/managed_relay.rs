//! The managed relay: desired Deployment, Service and token Secret, and which endpoints to
//! publish (all pure; the controller does the I/O).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use rand::RngCore;
use wirekube_crds::{ServiceType, WireKubeMesh};
use wirekube_relay_proto::flags::RelayFlags;

use crate::error::{Error, Result};
use crate::nodes::{ClusterNode, host_port, ip_port};

/// Annotation carrying a hash of the desired object, so an unchanged object is not rewritten.
pub const HASH_ANNOTATION: &str = "wirekube.io/desired-hash";
/// Key of the token in the Secret.
pub const TOKEN_KEY: &str = "token";
/// Where the Secret is mounted in the relay pod.
pub const TOKEN_DIR: &str = "/etc/wirekube/token";
/// Relay metrics/health port.
pub const METRICS_PORT: u16 = 9090;

/// Name shared by the Deployment, Service and Secret of a mesh's relay.
pub fn relay_name(mesh: &str) -> String {
    format!("wirekube-relay-{mesh}")
}

/// Labels on the relay objects and the pod selector.
/// The relay objects' label naming their mesh (the operator maps relay events to the mesh by
/// it).
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

pub fn relay_labels(mesh: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "wirekube-relay".into()),
        (INSTANCE_LABEL.into(), mesh.into()),
        (
            "app.kubernetes.io/managed-by".into(),
            wirekube_crds::OPERATOR_MANAGER.into(),
        ),
    ])
}

/// Controller owner reference to the mesh (so GC removes the relay with it).
pub fn mesh_owner(mesh: &WireKubeMesh) -> Result<OwnerReference> {
    mesh.controller_owner_ref(&())
        .ok_or_else(|| Error::MissingField(format!("WireKubeMesh {}", mesh.name_any()), "uid"))
}

/// Whether `meta` is owned by this mesh (only such objects are ever deleted).
pub fn owned_by(meta: &ObjectMeta, mesh: &WireKubeMesh) -> bool {
    let uid = mesh.uid();
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| Some(&o.uid) == uid.as_ref() && o.kind == "WireKubeMesh")
}

fn meta(mesh: &WireKubeMesh, namespace: &str) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(relay_name(&mesh.name_any())),
        namespace: Some(namespace.into()),
        labels: Some(relay_labels(&mesh.name_any())),
        owner_references: Some(vec![mesh_owner(mesh)?]),
        ..ObjectMeta::default()
    })
}

/// Bytes the relay may queue for all its clients together (`--total-queue-bytes`).
pub const RELAY_QUEUE_BUDGET_MIB: u64 = 256;
/// The relay container's memory limit: the queue budget, plus what its connections hold
/// outside it at `--max-connections` 10,000 (~24 KiB of state and up to 16 KiB of queue
/// each, ~400 MiB), pre-auth buffers (at most 1,000 × 8 KiB), allocator slack and read
/// buffers of clients sending at full speed (~320 KiB each). See docs/relay.md.
pub const RELAY_MEMORY_LIMIT: &str = "1Gi";
/// What a relay typically uses (a few hundred agents, queues mostly empty).
pub const RELAY_MEMORY_REQUEST: &str = "128Mi";
pub const RELAY_CPU_REQUEST: &str = "100m";

/// The relay binary's arguments, rendered from the relay's typed flags
/// (`wirekube_relay_proto::flags`); a unit test parses them with the relay's own parser.
pub fn relay_args(port: u16) -> Vec<String> {
    let any = std::net::Ipv4Addr::UNSPECIFIED.into();
    RelayFlags {
        listen: Some(SocketAddr::new(any, port)),
        stun_port: Some(port),
        stun_alt_port: Some(port.wrapping_add(1)),
        metrics_listen: Some(SocketAddr::new(any, METRICS_PORT)),
        token_file: Some(format!("{TOKEN_DIR}/{TOKEN_KEY}").into()),
        // Explicit so the memory limit below and the budget cannot drift apart.
        total_queue_bytes: Some((RELAY_QUEUE_BUDGET_MIB << 20) as usize),
        ..RelayFlags::default()
    }
    .to_args()
}

/// Requests and limits of the relay container. No CPU limit: throttling a relay adds
/// latency to every relayed packet, and the request already gives it its share.
pub fn relay_resources() -> ResourceRequirements {
    let q = |v: &str| Quantity(v.to_string());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), q(RELAY_CPU_REQUEST)),
            ("memory".to_string(), q(RELAY_MEMORY_REQUEST)),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            q(RELAY_MEMORY_LIMIT),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The relay Deployment.
pub fn desired_deployment(
    mesh: &WireKubeMesh,
    namespace: &str,
    image_override: Option<&str>,
) -> Result<Deployment> {
    let m = &mesh.spec.relay.managed;
    let name = mesh.name_any();
    let labels = relay_labels(&name);
    let port = |name: &str, p: u16, proto: &str| ContainerPort {
        name: Some(name.into()),
        container_port: p.into(),
        protocol: Some(proto.into()),
        ..ContainerPort::default()
    };
    let probe = |path: &str, period: Option<i32>| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: period,
        ..Probe::default()
    };
    let container = Container {
        name: "relay".into(),
        image: Some(image_override.unwrap_or(&m.image).to_string()),
        args: Some(relay_args(m.port)),
        // The STUN responder must bind and report a concrete address: the pod IP.
        env: Some(vec![EnvVar {
            name: "WIREKUBE_RELAY_STUN_IP".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![
            port("relay", m.port, "TCP"),
            port("stun", m.port, "UDP"),
            port("stun-alt", m.port + 1, "UDP"),
            port("metrics", METRICS_PORT, "TCP"),
        ]),
        resources: Some(relay_resources()),
        // Agents are handed a NodePort relay's node only once its pod is Ready
        // (`placement`), so readiness is how long relayed pairs wait when the pod moves: with
        // the default 10 s period a first probe that came before the relay listened cost
        // 10 s more. A local HTTP GET per second is the price.
        readiness_probe: Some(probe("/readyz", Some(READINESS_PERIOD_SECONDS))),
        liveness_probe: Some(probe("/healthz", None)),
        volume_mounts: Some(vec![VolumeMount {
            name: "token".into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let mut d = Deployment {
        metadata: meta(mesh, namespace)?,
        spec: Some(DeploymentSpec {
            replicas: Some(m.replicas as i32),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        ..PodSecurityContext::default()
                    }),
                    volumes: Some(vec![Volume {
                        name: "token".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some(relay_name(&name)),
                            ..SecretVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    // Unset when empty, so meshes without placement keep their hash and
                    // their relay pods are not rolled on upgrade.
                    node_selector: Some(m.node_selector.clone()).filter(|s| !s.is_empty()),
                    tolerations: Some(m.tolerations.clone()).filter(|t| !t.is_empty()),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    };
    stamp_hash(&mut d.metadata, &d.spec)?;
    Ok(d)
}

/// The relay container's readiness probe period (Kubernetes' default is 10 s).
pub const READINESS_PERIOD_SECONDS: i32 = 1;

/// The relay Service: TCP `port` "relay", UDP `port` "stun", UDP `port+1` "stun-alt".
pub fn desired_service(mesh: &WireKubeMesh, namespace: &str) -> Result<Service> {
    let m = &mesh.spec.relay.managed;
    let node_port = m.service_type == ServiceType::NodePort;
    let sp = |name: &str, p: u16, proto: &str, np: Option<u16>| ServicePort {
        name: Some(name.into()),
        port: p.into(),
        protocol: Some(proto.into()),
        target_port: Some(IntOrString::String(name.into())),
        node_port: np.filter(|_| node_port).map(i32::from),
        ..ServicePort::default()
    };
    let mut metadata = meta(mesh, namespace)?;
    if !m.annotations.is_empty() {
        metadata.annotations = Some(m.annotations.clone());
    }
    let mut s = Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(match m.service_type {
                ServiceType::LoadBalancer => "LoadBalancer".into(),
                ServiceType::NodePort => "NodePort".into(),
            }),
            selector: Some(relay_labels(&mesh.name_any())),
            ports: Some(vec![
                sp("relay", m.port, "TCP", m.node_port),
                sp("stun", m.port, "UDP", None),
                sp("stun-alt", m.port + 1, "UDP", None),
            ]),
            // Local for both types: the relay's STUN responder must see each agent's own
            // public mapping, and with Cluster kube-proxy SNATs forwarded traffic to the
            // node's address, so every agent would be told the node's address and classify
            // its NAT wrongly. The price with NodePort is that only nodes running a relay pod
            // answer on the nodePort; that is why the relay can be pinned (nodeSelector,
            // tolerations) and why `exposure` publishes only the nodes running one.
            external_traffic_policy: Some("Local".into()),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    stamp_hash(&mut s.metadata, &s.spec)?;
    Ok(s)
}

/// A fresh mesh token: 32 bytes from the thread CSPRNG (ChaCha, OS-seeded), base64.
pub fn generate_token() -> String {
    use base64::Engine as _;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The token of an existing Secret, if it holds a non-empty one.
pub fn existing_token(secret: &Secret) -> Option<&[u8]> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_KEY))
        .map(|b| b.0.as_slice())
        .filter(|b| !b.trim_ascii().is_empty())
}

/// The token Secret holding `token`.
pub fn desired_secret(mesh: &WireKubeMesh, namespace: &str, token: &[u8]) -> Result<Secret> {
    Ok(Secret {
        metadata: meta(mesh, namespace)?,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.into(),
            ByteString(token.to_vec()),
        )])),
        ..Secret::default()
    })
}

/// FNV-1a 64 of the JSON of `spec` (stable across releases, unlike `DefaultHasher`).
pub fn hash_json<T: serde::Serialize>(spec: &T) -> Result<String> {
    let bytes = serde_json::to_vec(spec).map_err(|source| Error::Serde {
        what: "desired object".into(),
        source,
    })?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Ok(format!("{h:016x}"))
}

fn stamp_hash<T: serde::Serialize>(meta: &mut ObjectMeta, spec: &T) -> Result<()> {
    let h = hash_json(&(
        spec,
        &meta.labels,
        &meta.annotations,
        &meta.owner_references,
    ))?;
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_ANNOTATION.into(), h);
    Ok(())
}

/// Whether the observed object already carries the desired hash (then nothing is written).
pub fn up_to_date(observed: &ObjectMeta, desired: &ObjectMeta) -> bool {
    let get = |m: &ObjectMeta| {
        m.annotations
            .as_ref()
            .and_then(|a| a.get(HASH_ANNOTATION))
            .cloned()
    };
    observed.deletion_timestamp.is_none()
        && get(observed).is_some()
        && get(observed) == get(desired)
}

/// The endpoints a managed relay exposes now, or why there are none yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exposure {
    Endpoints(Vec<String>),
    /// Condition reason and message.
    Waiting(&'static str, String),
}

/// Endpoints of the relay Service as observed: LoadBalancer ingress (IP or hostname) with the
/// relay port, or for NodePort the address (ExternalIP, else InternalIP) of each node in
/// `relay_hosts` with the nodePort. `relay_hosts` are the nodes running the relay's pods, in
/// publishing order ([`crate::placement::RelayPlacement::hosts`]): with
/// `externalTrafficPolicy: Local` no other node answers on the nodePort.
pub fn exposure(service: Option<&Service>, port: u16, relay_hosts: &[ClusterNode]) -> Exposure {
    let Some(svc) = service else {
        return Exposure::Waiting("WaitingForService", "relay Service not created yet".into());
    };
    if is_node_port(svc) {
        return node_port_exposure(svc, relay_hosts);
    }
    let eps: Vec<String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref().or(i.hostname.as_deref()))
        .filter(|h| !h.is_empty())
        .map(|h| host_port(h, port))
        .collect();
    if eps.is_empty() {
        Exposure::Waiting(
            "WaitingForLoadBalancer",
            format!(
                "Service {} has no load-balancer ingress yet",
                svc.name_any()
            ),
        )
    } else {
        Exposure::Endpoints(eps)
    }
}

fn is_node_port(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("NodePort")
}

/// The nodePort allocated to the Service port named `name`.
fn node_port_of(svc: &Service, name: &str) -> Option<u16> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.iter().find(|p| p.name.as_deref() == Some(name)))
        .and_then(|p| p.node_port)
        .and_then(|n| u16::try_from(n).ok())
}

fn node_port_exposure(svc: &Service, relay_hosts: &[ClusterNode]) -> Exposure {
    let Some(np) = node_port_of(svc, "relay") else {
        return Exposure::Waiting("WaitingForNodePort", "no nodePort allocated yet".into());
    };
    if relay_hosts.is_empty() {
        return Exposure::Waiting(
            "WaitingForRelayPod",
            "no relay pod runs on a node yet, and with externalTrafficPolicy Local only such \
             nodes answer on the nodePort; check that spec.relay.managed.nodeSelector and \
             tolerations match a node and the relay Deployment's events"
                .into(),
        );
    }
    let eps: Vec<String> = relay_hosts
        .iter()
        .filter_map(|n| Some(ip_port(n.reachable_address()?, np)))
        .collect();
    if eps.is_empty() {
        let names: Vec<&str> = relay_hosts.iter().map(ClusterNode::name).collect();
        return Exposure::Waiting(
            "NoNodeAddresses",
            format!(
                "nodes running the relay ({}) report no ExternalIP or InternalIP",
                names.join(", ")
            ),
        );
    }
    Exposure::Endpoints(eps)
}

/// STUN responder addresses of a managed relay: the first published host with the STUN and
/// STUN-alt ports (for NodePort, their nodePorts on the first node in `relay_hosts` with an
/// address).
pub fn managed_stun(
    service: Option<&Service>,
    port: u16,
    relay_hosts: &[ClusterNode],
) -> Vec<String> {
    let Some(svc) = service else {
        return Vec::new();
    };
    if is_node_port(svc) {
        let host = relay_hosts.iter().find_map(|n| n.reachable_address());
        return match (
            host,
            node_port_of(svc, "stun"),
            node_port_of(svc, "stun-alt"),
        ) {
            (Some(h), Some(a), Some(b)) => vec![ip_port(h, a), ip_port(h, b)],
            _ => Vec::new(),
        };
    }
    match exposure(Some(svc), port, relay_hosts) {
        Exposure::Endpoints(eps) => external_stun(&eps[0]),
        Exposure::Waiting(..) => Vec::new(),
    }
}

/// STUN addresses of a relay at `host:port`: the same host on `port` and `port + 1` (the
/// layout of `wirekube-relay`).
pub fn external_stun(endpoint: &str) -> Vec<String> {
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Vec::new();
    };
    let Ok(port) = port.parse::<u16>() else {
        return Vec::new();
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match port.checked_add(1) {
        Some(alt) => vec![host_port(host, port), host_port(host, alt)],
        None => Vec::new(),
    }
}

/// Available replicas of the relay Deployment (0 when unknown).
pub fn available_replicas(d: Option<&Deployment>) -> i32 {
    d.and_then(|d| d.status.as_ref())
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// What the relay part of a reconcile should do for the mesh spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayKind {
    /// `mode: never`: no relay at all (managed objects are removed).
    Disabled,
    /// `provider: external`: publish this endpoint (managed objects are removed).
    External(String),
    /// `provider: managed`: run Deployment, Service and Secret.
    Managed,
}

pub fn relay_kind(spec: &wirekube_crds::WireKubeMeshSpec) -> RelayKind {
    use wirekube_crds::{RelayMode, RelayProvider};
    match (spec.relay.mode, spec.relay.provider) {
        (RelayMode::Never, _) => RelayKind::Disabled,
        (_, RelayProvider::External) => RelayKind::External(
            spec.relay
                .external
                .as_ref()
                .map(|e| e.endpoint.clone())
                .unwrap_or_default(),
        ),
        (_, RelayProvider::Managed) => RelayKind::Managed,
    }
}

/// Published endpoints and the RelayReady condition for a managed relay.
pub fn managed_outcome(
    exposure: Exposure,
    available: i32,
    replicas: u32,
) -> (Vec<String>, crate::status::Cond) {
    use crate::status::relay_cond;
    match exposure {
        Exposure::Waiting(reason, msg) => (Vec::new(), relay_cond(false, reason, msg)),
        Exposure::Endpoints(eps) if available < 1 => {
            let msg = format!(
                "endpoints {} published; 0/{replicas} relay replicas available yet",
                eps.join(", ")
            );
            (eps, relay_cond(false, "RelayUnavailable", msg))
        }
        Exposure::Endpoints(eps) => {
            let msg = format!(
                "relay reachable at {} ({available}/{replicas} replicas available)",
                eps.join(", ")
            );
            (eps, relay_cond(true, "EndpointsPublished", msg))
        }
    }
}

#[cfg(test)]
#[path = "managed_relay_tests.rs"]
mod tests;
