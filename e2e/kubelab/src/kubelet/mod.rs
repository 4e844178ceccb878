//! The lab kubelet: runs the pods the scheduler binds to one lab node as plain processes in
//! that node's network namespace (or in a pod network namespace set up with the standard CNI
//! plugins), and reports to the real API server like a kubelet does.
//!
//! It authenticates as `system:node:<name>`, so the Node authorizer and the NodeRestriction
//! admission plugin apply to everything it does: it registers its Node, keeps it Ready (Lease +
//! Ready heartbeat), watches the pods bound to it, and for each pod:
//!
//! * sets up the network: hostNetwork pods share the node's namespace; others get a namespace
//!   `<prefix>-p<uid8>` and `bridge` + `host-local` (on the node's `spec.podCIDR`) + `loopback`;
//! * prepares volumes (`hostPath`, `emptyDir`, `secret`, `configMap`, `downwardAPI`,
//!   `projected` with `serviceAccountToken` from the TokenRequest API bound to the pod, renewed
//!   at 80 % of its lifetime) and bind-mounts them in a private mount namespace per container;
//! * maps each image to a local binary (`--image PATTERN=BINARY`), expands `$(VAR)` in
//!   command and args, resolves env (literal, fieldRef, secretKeyRef, configMapKeyRef);
//! * supervises the processes (restart policy, back-off 0.5 s → 10 s, probes) and reports the
//!   pod status; on deletion it stops them (TERM, KILL after the grace period capped at 10 s),
//!   removes the network and volumes and makes the final delete.
//!
//! Not emulated: `securityContext` (run-as user, capabilities, seccomp: containers run as root
//! with the kubelet's privileges), resource limits, init and ephemeral containers, image
//! pulls, container root filesystems (a container sees the machine's files plus its mounts),
//! `/etc/hosts` and DNS, HTTPS and gRPC probes, the kubelet's own API (logs, exec, port
//! forwarding). Container logs are appended to `<root>/pods/<ns>_<pod>/<container>.log` and
//! kept after the pod is gone (the lab removes the root dir at teardown).

mod cni;
mod container;
mod env;
mod error;
mod expand;
mod image;
mod manager;
mod node;
mod pod;
mod probe;
mod restart;
mod runtime;
mod status;
mod token;
mod volfs;
mod volumes;
mod worker;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use error::{KubeletError, Result};
pub use image::{ImageMap, ImageRule};
pub use node::KUBELET_VERSION;
pub use runtime::netns_name;

/// Everything the kubelet is told on its command line.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub external_ip: Option<Ipv4Addr>,
    pub labels: BTreeMap<String, String>,
    pub images: ImageMap,
    pub root_dir: PathBuf,
    pub netns_prefix: String,
    pub cni_bin_dir: PathBuf,
    /// Take the pod network's configuration from here (`None`: the built-in bridge).
    pub cni_conf_dir: Option<PathBuf>,
    pub heartbeat: Duration,
    /// Environment added to every container after the pod's own (`--container-env`): a
    /// test-only knob for the workloads of one node, e.g. an agent's clock offset.
    pub container_env: Vec<(String, String)>,
}

/// Parses a `--label` value `KEY=VALUE`.
pub fn parse_label(s: &str) -> Result<(String, String)> {
    parse_pair("--label", s)
}

/// Parses a `--container-env` value `NAME=VALUE`.
pub fn parse_env(s: &str) -> Result<(String, String)> {
    parse_pair("--container-env", s)
}

fn parse_pair(flag: &'static str, s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(KubeletError::Flag {
            flag,
            value: s.to_owned(),
            reason: "expected KEY=VALUE",
        }),
    }
}

/// What every pod worker shares.
pub(crate) struct Ctx {
    pub client: Client,
    pub node: String,
    pub node_ip: Ipv4Addr,
    pub images: ImageMap,
    pub root_dir: PathBuf,
    pub netns_prefix: String,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: Option<PathBuf>,
    pub pod_cidr: watch::Receiver<Option<Ipv4Net>>,
    pub api_service: OnceCell<(String, u16)>,
    pub container_env: Vec<(String, String)>,
}

fn node_facts(cfg: &Config) -> node::NodeFacts {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    node::NodeFacts {
        name: cfg.node_name.clone(),
        internal_ip: cfg.node_ip,
        external_ip: cfg.external_ip,
        labels: cfg.labels.clone(),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        memory_bytes: node::parse_meminfo(&read("/proc/meminfo")).unwrap_or(1 << 30),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        boot_id: read("/proc/sys/kernel/random/boot_id").trim().to_owned(),
    }
}

/// Registers the node (retrying until the API server accepts it or `shutdown`).
async fn register(
    client: &Client,
    facts: &node::NodeFacts,
    since: Timestamp,
    shutdown: &CancellationToken,
) -> Option<Option<String>> {
    let mut delay = Duration::from_millis(200);
    loop {
        match node::register(client, facts, since).await {
            Ok(uid) => return Some(uid),
            Err(e) => warn!(error = %e, "node registration failed; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => delay = (delay * 2).min(Duration::from_secs(5)),
        }
    }
}

/// Runs the kubelet until `shutdown` is cancelled; then stops every pod (containers, pod
/// networks, volumes) and returns.
pub async fn run(client: Client, cfg: Config, shutdown: CancellationToken) -> Result<()> {
    std::fs::create_dir_all(&cfg.root_dir)
        .map_err(|e| KubeletError::io(format!("create {}", cfg.root_dir.display()), e))?;
    let facts = node_facts(&cfg);
    let since = Timestamp::now();
    let Some(uid) = register(&client, &facts, since, &shutdown).await else {
        return Ok(());
    };
    let heartbeat = tokio::spawn(node::heartbeat_loop(
        client.clone(),
        facts,
        uid,
        since,
        cfg.heartbeat,
    ));
    let (cidr_tx, cidr_rx) = watch::channel(None);
    let cidr = tokio::spawn(node::watch_pod_cidr(
        client.clone(),
        cfg.node_name.clone(),
        cidr_tx,
    ));
    let ctx = Arc::new(Ctx {
        client,
        node: cfg.node_name,
        node_ip: cfg.node_ip,
        images: cfg.images,
        root_dir: cfg.root_dir,
        netns_prefix: cfg.netns_prefix,
        cni_bin_dir: cfg.cni_bin_dir,
        cni_conf_dir: cfg.cni_conf_dir,
        container_env: cfg.container_env,
        pod_cidr: cidr_rx,
        api_service: OnceCell::new(),
    });
    manager::run(ctx, shutdown).await;
    heartbeat.abort();
    cidr.abort();
    info!("kubelet stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(parse_label("a=b").unwrap(), ("a".into(), "b".into()));
        assert_eq!(
            parse_label("wirekube.io/x=").unwrap(),
            ("wirekube.io/x".into(), String::new())
        );
        assert!(parse_label("=b").is_err());
        assert!(parse_label("novalue").is_err());
    }

    #[test]
    fn container_env_flags_name_themselves_in_errors() {
        assert_eq!(
            parse_env("WIREKUBE_TEST_CLOCK_OFFSET_SECS=30").unwrap(),
            ("WIREKUBE_TEST_CLOCK_OFFSET_SECS".into(), "30".into())
        );
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        let err = parse_env("=30").unwrap_err().to_string();
        assert!(err.contains("--container-env"), "{err}");
        assert!(
            parse_label("x")
                .unwrap_err()
                .to_string()
                .contains("--label")
        );
    }
}
