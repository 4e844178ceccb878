//! A minimal kubelet + deployment controller: runs each Deployment's pod template as local
//! processes, creates Pod objects, keeps Pod and Deployment status, restarts exited containers.
//!
//! Images map to local binaries ([`KubeletConfig::images`]); the argv is
//! `placement.command_prefix + [binary] + command[1..] + args` (the image's entrypoint,
//! `command[0]`, is the mapped binary). Secret/ConfigMap volumes and emptyDirs are
//! materialised under a work directory, and every occurrence of a volumeMount's `mountPath`
//! in args and env values is replaced by that directory.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::ops::{self, Ctx, DeleteOpts, Target};
use super::server::Shared;
use super::store::Store;
use super::util;

/// Where and how one pod runs.
#[derive(Debug, Clone, Default)]
pub struct PodPlacement {
    /// `spec.nodeName` of the Pod object.
    pub node_name: Option<String>,
    /// Prepended to the container's argv, e.g. `["ip", "netns", "exec", "dmz"]`.
    pub command_prefix: Vec<String>,
    /// `status.podIP` of the Pod object (and of `status.podIP` fieldRef env).
    pub pod_ip: Option<String>,
}

/// What the placement callback sees.
#[derive(Debug, Clone)]
pub struct PodContext {
    pub namespace: String,
    pub deployment: String,
    pub pod: String,
    /// The pod template (`spec.template`).
    pub template: Value,
}

pub type PlacementFn = Arc<dyn Fn(&PodContext) -> PodPlacement + Send + Sync>;

/// Kubelet configuration.
#[derive(Clone)]
pub struct KubeletConfig {
    /// Image → local binary. A pattern ending in `*` matches by prefix
    /// (`ghcr.io/wirekube/relay:*`), otherwise the image must match exactly.
    pub images: Vec<(String, PathBuf)>,
    pub placement: PlacementFn,
    /// Where volumes and container logs go (a temp dir if `None`).
    pub work_dir: Option<PathBuf>,
    /// Delay before restarting an exited container (doubles per restart, up to 8x).
    pub restart_backoff: Duration,
}

impl std::fmt::Debug for KubeletConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletConfig")
            .field("images", &self.images)
            .field("work_dir", &self.work_dir)
            .finish()
    }
}

impl Default for KubeletConfig {
    fn default() -> Self {
        KubeletConfig {
            images: Vec::new(),
            placement: Arc::new(|_| PodPlacement::default()),
            work_dir: None,
            restart_backoff: Duration::from_millis(500),
        }
    }
}

struct Container {
    name: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    restarts: u32,
    next_start: Instant,
    error: Option<String>,
}

struct Pod {
    name: String,
    dir: PathBuf,
    placement: PodPlacement,
    containers: Vec<Container>,
}

struct Deploy {
    hash: u64,
    pods: Vec<Pod>,
}

/// Runs until aborted; dropping it kills every process (kill_on_drop).
pub async fn run(shared: Arc<Shared>, cfg: KubeletConfig) {
    let tmp = tempfile::tempdir().ok();
    let work = cfg
        .work_dir
        .clone()
        .or_else(|| tmp.as_ref().map(|t| t.path().to_path_buf()))
        .unwrap_or_else(std::env::temp_dir);
    let mut state: HashMap<(String, String), Deploy> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let mut st = shared.store.lock().expect("store lock");
        reconcile(&mut st, &cfg, &work, &mut state);
    }
}

fn template_hash(t: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.to_string().hash(&mut h);
    h.finish()
}

fn reconcile(
    st: &mut Store,
    cfg: &KubeletConfig,
    work: &Path,
    state: &mut HashMap<(String, String), Deploy>,
) {
    let deployments: Vec<Value> = st
        .list("apps/deployments", None)
        .into_iter()
        .cloned()
        .collect();
    let live: Vec<(String, String)> = deployments
        .iter()
        .filter(|d| d.pointer("/metadata/deletionTimestamp").is_none())
        .map(|d| {
            (
                util::meta_namespace(d).to_string(),
                util::meta_name(d).to_string(),
            )
        })
        .collect();
    // Deployments gone: kill their processes (Pod objects go by garbage collection).
    state.retain(|k, _| live.contains(k));
    let mut ctx = Ctx::internal("kubelet");
    for d in deployments
        .iter()
        .filter(|d| d.pointer("/metadata/deletionTimestamp").is_none())
    {
        let key = (
            util::meta_namespace(d).to_string(),
            util::meta_name(d).to_string(),
        );
        let template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let hash = template_hash(&template);
        let entry = state.entry(key.clone()).or_insert(Deploy {
            hash,
            pods: Vec::new(),
        });
        if entry.hash != hash {
            // Template changed: replace every pod.
            for p in entry.pods.drain(..) {
                delete_pod(st, &mut ctx, &key.0, &p.name);
            }
            entry.hash = hash;
        }
        // Pods deleted through the API are replaced.
        entry
            .pods
            .retain(|p| st.get("/pods", &key.0, &p.name).is_some());
        let desired = d
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1) as usize;
        while entry.pods.len() > desired {
            if let Some(p) = entry.pods.pop() {
                delete_pod(st, &mut ctx, &key.0, &p.name);
            }
        }
        while entry.pods.len() < desired {
            match start_pod(st, cfg, work, &mut ctx, d, &template, hash) {
                Some(p) => entry.pods.push(p),
                None => break,
            }
        }
        let mut ready = 0;
        for p in entry.pods.iter_mut() {
            supervise(p, cfg.restart_backoff);
            if update_pod_status(st, &mut ctx, &key.0, p) {
                ready += 1;
            }
        }
        update_deployment_status(st, &mut ctx, d, entry.pods.len(), ready);
    }
}

fn delete_pod(st: &mut Store, ctx: &mut Ctx, ns: &str, name: &str) {
    if let Some(ri) = st.registry.get("", "v1", "pods") {
        let t = Target {
            ri,
            ns: ns.into(),
            name: name.into(),
            sub: None,
        };
        let _ = ops::delete(st, ctx, &t, &DeleteOpts::default());
    }
}

fn image_binary(cfg: &KubeletConfig, image: &str) -> Option<PathBuf> {
    cfg.images.iter().find_map(|(pat, path)| {
        let hit = match pat.strip_suffix('*') {
            Some(prefix) => image.starts_with(prefix),
            None => image == pat,
        };
        hit.then(|| path.clone())
    })
}

fn secret_or_cm(st: &Store, kind: &str, ns: &str, name: &str) -> Option<HashMap<String, Vec<u8>>> {
    let key = if kind == "secret" {
        "/secrets"
    } else {
        "/configmaps"
    };
    let obj = st.get(key, ns, name)?;
    let mut out = HashMap::new();
    for (k, v) in obj
        .get("data")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let s = v.as_str().unwrap_or_default();
        let bytes = if kind == "secret" {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .unwrap_or_default()
        } else {
            s.as_bytes().to_vec()
        };
        out.insert(k.clone(), bytes);
    }
    Some(out)
}

#[allow(clippy::too_many_arguments)]
fn start_pod(
    st: &mut Store,
    cfg: &KubeletConfig,
    work: &Path,
    ctx: &mut Ctx,
    d: &Value,
    template: &Value,
    hash: u64,
) -> Option<Pod> {
    let ns = util::meta_namespace(d).to_string();
    let dname = util::meta_name(d).to_string();
    let name = format!("{dname}-{:08x}-{}", hash as u32, util::random_suffix(5));
    let placement = (cfg.placement)(&PodContext {
        namespace: ns.clone(),
        deployment: dname.clone(),
        pod: name.clone(),
        template: template.clone(),
    });
    let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
    if let Some(n) = &placement.node_name {
        spec["nodeName"] = json!(n);
    }
    let pod_obj = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
            "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": dname,
                "uid": util::str_at(d, "/metadata/uid"), "controller": true, "blockOwnerDeletion": true}]},
        "spec": spec,
        "status": {"phase": "Pending"},
    });
    let ri = st.registry.get("", "v1", "pods")?;
    let t = Target {
        ri,
        ns: ns.clone(),
        name: name.clone(),
        sub: None,
    };
    ops::create(st, ctx, &t, pod_obj, false).ok()?;

    // Volumes.
    let pod_dir = work.join(&name);
    let mut vol_dirs: HashMap<String, PathBuf> = HashMap::new();
    for v in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let vname = util::str_at(v, "/name").to_string();
        let dir = pod_dir.join("volumes").join(&vname);
        let _ = std::fs::create_dir_all(&dir);
        let source = if let Some(s) = v.get("secret") {
            secret_or_cm(st, "secret", &ns, util::str_at(s, "/secretName")).map(|d| (d, s))
        } else if let Some(c) = v.get("configMap") {
            secret_or_cm(st, "configmap", &ns, util::str_at(c, "/name")).map(|d| (d, c))
        } else {
            None
        };
        if let Some((data, src)) = source {
            let items = src.get("items").and_then(Value::as_array);
            for (k, bytes) in &data {
                let path = match items {
                    Some(items) => match items.iter().find(|i| util::str_at(i, "/key") == k) {
                        Some(i) => util::str_at(i, "/path").to_string(),
                        None => continue,
                    },
                    None => k.clone(),
                };
                let _ = std::fs::write(dir.join(path), bytes);
            }
        }
        vol_dirs.insert(vname, dir);
    }

    let mut containers = Vec::new();
    for c in spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let cname = util::str_at(c, "/name").to_string();
        let mut mounts: Vec<(String, String)> = c
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let dir = vol_dirs.get(util::str_at(m, "/name"))?;
                Some((
                    util::str_at(m, "/mountPath").to_string(),
                    dir.display().to_string(),
                ))
            })
            .collect();
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let rewrite = |s: &str| {
            mounts.iter().fold(s.to_string(), |acc, (from, to)| {
                acc.replace(from.as_str(), to)
            })
        };
        let strs = |k: &str| -> Vec<String> {
            c.get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(&rewrite))
                .collect()
        };
        let (command, args) = (strs("command"), strs("args"));
        let mut error = None;
        let mut argv = placement.command_prefix.clone();
        match image_binary(cfg, util::str_at(c, "/image")) {
            Some(bin) => argv.push(bin.display().to_string()),
            None => {
                error = Some(format!(
                    "no local binary for image {}",
                    util::str_at(c, "/image")
                ))
            }
        }
        argv.extend(command.into_iter().skip(1));
        argv.extend(args);
        let env = container_env(st, &ns, &name, &placement, c, &rewrite);
        containers.push(Container {
            name: cname,
            argv,
            env,
            child: None,
            restarts: 0,
            next_start: Instant::now(),
            error,
        });
    }
    let _ = std::fs::create_dir_all(&pod_dir);
    let mut pod = Pod {
        name,
        dir: pod_dir.clone(),
        placement,
        containers,
    };
    for c in pod.containers.iter_mut() {
        spawn(c, &pod_dir);
    }
    Some(pod)
}

fn container_env(
    st: &Store,
    ns: &str,
    pod: &str,
    placement: &PodPlacement,
    c: &Value,
    rewrite: &dyn Fn(&str) -> String,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    for ef in c
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let src = if let Some(s) = ef.get("secretRef") {
            secret_or_cm(st, "secret", ns, util::str_at(s, "/name"))
        } else if let Some(m) = ef.get("configMapRef") {
            secret_or_cm(st, "configmap", ns, util::str_at(m, "/name"))
        } else {
            None
        };
        let prefix = util::str_at(ef, "/prefix");
        for (k, v) in src.unwrap_or_default() {
            env.push((format!("{prefix}{k}"), text(v)));
        }
    }
    for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        let name = util::str_at(e, "/name").to_string();
        let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
            Some(rewrite(v))
        } else if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
            secret_or_cm(st, "secret", ns, util::str_at(r, "/name"))
                .and_then(|mut d| d.remove(util::str_at(r, "/key")))
                .map(text)
        } else if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
            secret_or_cm(st, "configmap", ns, util::str_at(r, "/name"))
                .and_then(|mut d| d.remove(util::str_at(r, "/key")))
                .map(text)
        } else if let Some(r) = e.pointer("/valueFrom/fieldRef") {
            match util::str_at(r, "/fieldPath") {
                "metadata.name" => Some(pod.to_string()),
                "metadata.namespace" => Some(ns.to_string()),
                "spec.nodeName" => placement.node_name.clone(),
                "status.podIP" => placement.pod_ip.clone(),
                _ => None,
            }
        } else {
            None
        };
        env.push((name, value.unwrap_or_default()));
    }
    env
}

fn spawn(c: &mut Container, pod_dir: &Path) {
    if c.error.is_some() && c.argv.is_empty() {
        return;
    }
    let Some((prog, args)) = c.argv.split_first() else {
        return;
    };
    let log = std::fs::File::create(pod_dir.join(format!("{}.log", c.name))).ok();
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .envs(c.env.iter().cloned())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match log.and_then(|l| l.try_clone().ok().map(|l2| (l, l2))) {
        Some((out, err)) => {
            cmd.stdout(out).stderr(err);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    match cmd.spawn() {
        Ok(child) => {
            c.child = Some(child);
            c.error = None;
        }
        Err(e) => c.error = Some(format!("starting {prog}: {e}")),
    }
}

/// Restarts exited containers after a backoff.
fn supervise(p: &mut Pod, backoff: Duration) {
    let dir = p.dir.clone();
    for c in p.containers.iter_mut() {
        if c.error
            .as_deref()
            .is_some_and(|e| e.starts_with("no local binary"))
        {
            continue;
        }
        if let Some(child) = c.child.as_mut()
            && let Ok(Some(_)) = child.try_wait()
        {
            c.child = None;
            c.restarts += 1;
            c.next_start = Instant::now() + backoff * 2u32.pow(c.restarts.min(4) - 1).min(8);
        }
        if c.child.is_none() && Instant::now() >= c.next_start {
            spawn(c, &dir);
        }
    }
}

/// Writes the Pod's status; returns whether it is ready.
fn update_pod_status(st: &mut Store, ctx: &mut Ctx, ns: &str, p: &Pod) -> bool {
    let ready = !p.containers.is_empty() && p.containers.iter().all(|c| c.child.is_some());
    let statuses: Vec<Value> = p
        .containers
        .iter()
        .map(|c| {
            let state = match (&c.child, &c.error) {
                (Some(_), _) => json!({"running": {}}),
                (None, Some(e)) => json!({"waiting": {"reason": "CreateContainerError", "message": e}}),
                (None, None) => json!({"waiting": {"reason": "CrashLoopBackOff"}}),
            };
            json!({"name": c.name, "ready": c.child.is_some(), "restartCount": c.restarts, "state": state,
                "started": c.child.is_some()})
        })
        .collect();
    let Some(old) = st.get("/pods", ns, &p.name).cloned() else {
        return false;
    };
    let mut new = old.clone();
    let mut status = json!({
        "phase": if ready { "Running" } else { "Pending" },
        "containerStatuses": statuses,
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
    });
    if let Some(ip) = &p.placement.pod_ip {
        status["podIP"] = json!(ip);
    }
    new["status"] = status;
    if new != old
        && let Some(ri) = st.registry.get("", "v1", "pods")
    {
        let t = Target {
            ri,
            ns: ns.into(),
            name: p.name.clone(),
            sub: Some("status".into()),
        };
        let _ = ops::update(st, ctx, &t, new, false);
    }
    ready
}

fn update_deployment_status(
    st: &mut Store,
    ctx: &mut Ctx,
    d: &Value,
    replicas: usize,
    ready: usize,
) {
    let ns = util::meta_namespace(d);
    let name = util::meta_name(d);
    let Some(old) = st.get("apps/deployments", ns, name).cloned() else {
        return;
    };
    let desired = d
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1) as usize;
    let available = ready >= desired;
    let mut new = old.clone();
    new["status"] = json!({
        "observedGeneration": old.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready,
        "availableReplicas": ready, "unavailableReplicas": replicas.saturating_sub(ready),
        "conditions": [{"type": "Available", "status": if available { "True" } else { "False" },
            "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }}],
    });
    if new != old
        && let Some(ri) = st.registry.get("apps", "v1", "deployments")
    {
        let t = Target {
            ri,
            ns: ns.into(),
            name: name.into(),
            sub: Some("status".into()),
        };
        let _ = ops::update(st, ctx, &t, new, false);
    }
}
