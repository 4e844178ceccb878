//! One pod's life on the node: sandbox (network namespace, CNI, volumes), containers, status
//! reports, token renewal, and teardown with the kubelet's final delete.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Ctx;
use super::cni::{self, PodNetwork};
use super::env::{self, Objects, PodFacts};
use super::error::{KubeletError, Result};
use super::expand;
use super::probe;
use super::restart::{RestartPolicy, next_delay};
use super::runtime::{self, SpawnSpec};
use super::status::{ContainerObs, PodObs, State};
use super::volfs::{self, TokenFile};
use super::volumes;

/// Longest grace period honoured when a pod is deleted (the lab has no patience for 30 s).
pub const MAX_GRACE: Duration = Duration::from_secs(10);
/// Grace period when the kubelet itself shuts down or the pod vanished without a deletion.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// What the pod manager tells a pod worker.
#[derive(Debug)]
pub enum Msg {
    Update(Box<Pod>),
    Gone,
    Shutdown,
}

/// Why a pod worker ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    Delete(Duration),
    Gone,
    Shutdown,
}

/// `namespace/name`.
pub fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

pub(super) fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

pub(super) fn containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
}

pub(super) fn policy(pod: &Pod) -> RestartPolicy {
    RestartPolicy::from_spec(pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()))
}

/// The grace period of a pod being deleted, or `None` if it is not being deleted.
pub(super) fn deletion_grace(pod: &Pod) -> Option<Duration> {
    pod.metadata.deletion_timestamp.as_ref()?;
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref()?.termination_grace_period_seconds)
        .unwrap_or(30);
    Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)).min(MAX_GRACE))
}

/// What the kubelet reports before anything ran.
pub(super) fn initial_obs(pod: &Pod, node_ip: &str) -> PodObs {
    PodObs {
        host_ip: node_ip.to_owned(),
        pod_ip: host_network(pod).then(|| node_ip.to_owned()),
        start_time: Timestamp::now(),
        sandbox: None,
        containers: containers(pod)
            .iter()
            .map(|c| ContainerObs {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                state: State::waiting("ContainerCreating", None),
                last: None,
                restart_count: 0,
                ready: false,
            })
            .collect(),
    }
}

pub(super) fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

pub(super) fn log_dir(ctx: &Ctx, pod: &Pod) -> PathBuf {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    ctx.root_dir.join("pods").join(format!("{ns}_{name}"))
}

pub(super) fn volumes_dir(ctx: &Ctx, pod: &Pod) -> PathBuf {
    ctx.root_dir.join("volumes").join(uid(pod))
}

pub(super) fn pod_network(ctx: &Ctx, subnet: ipnet::Ipv4Net) -> PodNetwork {
    PodNetwork {
        subnet,
        ipam_dir: ctx.root_dir.join("cni/networks"),
        bin_dir: ctx.cni_bin_dir.clone(),
        conf_dir: ctx.cni_conf_dir.clone(),
    }
}

/// A container ready to supervise, or why it cannot run.
pub(super) struct Planned {
    pub spec: SpawnSpec,
    pub readiness: Option<probe::ProbeSpec>,
    pub liveness: Option<probe::ProbeSpec>,
}

/// What setup produced.
pub(super) struct Sandbox {
    pub tokens: Vec<TokenFile>,
    pub refresh: Option<Duration>,
    pub containers: Vec<Result<Planned>>,
}

fn executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Turns one container spec into a process to start.
fn plan_container(
    ctx: &Ctx,
    pod: &Pod,
    c: &Container,
    facts: &PodFacts,
    objects: &Objects,
    paths: &std::collections::BTreeMap<String, PathBuf>,
) -> Result<Planned> {
    let image = c.image.clone().unwrap_or_default();
    let binary = ctx.images.resolve(&image)?;
    if !executable(binary) {
        return Err(KubeletError::BinaryMissing {
            image,
            binary: binary.to_path_buf(),
        });
    }
    let mut env = env::container_env(pod, c, facts, objects)?;
    env.extend(ctx.container_env.iter().cloned());
    let argv = expand::argv(
        binary,
        c.command.as_deref().unwrap_or_default(),
        c.args.as_deref().unwrap_or_default(),
        &env,
    );
    let hostnet = host_network(pod);
    let probe_ip = if hostnet {
        "127.0.0.1"
    } else {
        facts.pod_ip.as_deref().unwrap_or_default()
    };
    let resolve = |p: Option<&k8s_openapi::api::core::v1::Probe>| {
        p.map(|p| probe::resolve(p, c, probe_ip)).transpose()
    };
    let hostname = if hostnet {
        ctx.node.clone()
    } else {
        pod.metadata.name.clone().unwrap_or_default()
    };
    Ok(Planned {
        spec: SpawnSpec {
            argv,
            env,
            hostname,
            netns: (!hostnet)
                .then(|| runtime::netns_path(&runtime::netns_name(&ctx.netns_prefix, uid(pod)))),
            binds: volumes::binds(c, paths)?,
            log: log_dir(ctx, pod).join(format!("{}.log", c.name)),
        },
        readiness: resolve(c.readiness_probe.as_ref())?,
        liveness: resolve(c.liveness_probe.as_ref())?,
    })
}

/// ClusterIP and port of `default/kubernetes` (cached once found).
async fn api_service(ctx: &Ctx) -> Option<(String, u16)> {
    let fetch = || async {
        let api = Api::<Service>::namespaced(ctx.client.clone(), "default");
        let svc = api.get("kubernetes").await.map_err(|e| e.to_string())?;
        let spec = svc.spec.unwrap_or_default();
        let port = spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("https"));
        let port = port.and_then(|p| u16::try_from(p.port).ok()).unwrap_or(443);
        let ip = spec.cluster_ip.ok_or_else(|| "no clusterIP".to_owned())?;
        Ok::<_, String>((ip, port))
    };
    match ctx.api_service.get_or_try_init(fetch).await {
        Ok(v) => Some(v.clone()),
        Err(e) => {
            warn!(error = %e, "no ClusterIP for default/kubernetes yet");
            None
        }
    }
}

/// Network, volumes, tokens and container plans. Partial state is left for [`cleanup`].
async fn setup(ctx: &Ctx, pod: &Pod, obs: &watch::Sender<PodObs>) -> Result<Sandbox> {
    let pod_ip = if host_network(pod) {
        ctx.node_ip.to_string()
    } else {
        let mut cidr = ctx.pod_cidr.clone();
        let Ok(Some(subnet)) = cidr.wait_for(Option::is_some).await.map(|c| *c) else {
            return Err(KubeletError::PodCidr {
                cidr: String::new(),
                reason: "the node has no spec.podCIDR".into(),
            });
        };
        let name = runtime::netns_name(&ctx.netns_prefix, uid(pod));
        runtime::netns_add(&name).await?;
        cni::add(
            &pod_network(ctx, subnet),
            uid(pod),
            &runtime::netns_path(&name),
        )
        .await?
        .to_string()
    };
    info!(pod_ip = %pod_ip, "pod network ready");
    obs.send_modify(|o| o.pod_ip = Some(pod_ip.clone()));
    let facts = PodFacts {
        node_name: ctx.node.clone(),
        host_ip: ctx.node_ip.to_string(),
        pod_ip: Some(pod_ip),
        api_service: api_service(ctx).await,
    };
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let objects = volfs::fetch_objects(&ctx.client, ns, &env::referenced(pod)).await?;
    let plans = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .map(|v| Ok((v.name.clone(), volumes::plan(pod, v, &objects, &facts)?)))
        .collect::<Result<Vec<_>>>()?;
    let prepared = volfs::prepare(&ctx.client, pod, &plans, &volumes_dir(ctx, pod)).await?;
    let dir = log_dir(ctx, pod);
    std::fs::create_dir_all(&dir)
        .map_err(|e| KubeletError::io(format!("create {}", dir.display()), e))?;
    let planned: Vec<Result<Planned>> = containers(pod)
        .iter()
        .map(|c| plan_container(ctx, pod, c, &facts, &objects, &prepared.paths))
        .collect();
    // Only a missing image is final; anything else (a Secret not there yet...) is retried.
    let mut planned = planned;
    if let Some(i) = planned
        .iter()
        .position(|p| matches!(p, Err(e) if !is_image_error(e)))
    {
        planned.swap_remove(i)?;
    }
    Ok(Sandbox {
        tokens: prepared.tokens,
        refresh: prepared.refresh,
        containers: planned,
    })
}

fn is_image_error(e: &KubeletError) -> bool {
    matches!(
        e,
        KubeletError::ImageNotMapped { .. } | KubeletError::BinaryMissing { .. }
    )
}

/// Setup, retried with back-off until it works; each failure is cleaned up and reported.
pub(super) async fn setup_retrying(ctx: &Ctx, pod: &Pod, obs: &watch::Sender<PodObs>) -> Sandbox {
    let mut delay = None;
    loop {
        match setup(ctx, pod, obs).await {
            Ok(s) => {
                obs.send_modify(|o| o.sandbox = Some(Ok(())));
                return s;
            }
            Err(e) => {
                warn!(error = %e, "pod setup failed; retrying");
                let (reason, msg) = (e.reason().to_owned(), e.to_string());
                obs.send_modify(|o| {
                    o.sandbox = Some(Err((reason.clone(), msg.clone())));
                    for c in &mut o.containers {
                        c.state = State::waiting(&reason, Some(msg.clone()));
                    }
                });
                cleanup(ctx, pod).await;
                let d = next_delay(delay, Duration::ZERO);
                delay = Some(d);
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// Removes what setup made: CNI DEL, the network namespace, the volumes. Safe to repeat;
/// failures are logged (teardown goes on).
pub(super) async fn cleanup(ctx: &Ctx, pod: &Pod) {
    if !host_network(pod) {
        let name = runtime::netns_name(&ctx.netns_prefix, uid(pod));
        let subnet = *ctx.pod_cidr.borrow();
        if let Some(subnet) = subnet {
            let netns = runtime::netns_path(&name);
            if let Err(e) = cni::del(&pod_network(ctx, subnet), uid(pod), &netns).await {
                warn!(error = %e, "CNI DEL failed");
            }
        }
        if let Err(e) = runtime::netns_del(&name).await {
            warn!(error = %e, "removing the pod network namespace failed");
        }
    }
    let dir = volumes_dir(ctx, pod);
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(dir = %dir.display(), error = %e, "removing the pod's volumes failed");
    }
}

#[cfg(test)]
#[path = "pod_tests.rs"]
mod tests;
