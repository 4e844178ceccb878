//! `wirekube-apiserver`: the test Kubernetes API server as a process.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use wirekube_e2e::apiserver::{ApiServer, ApiServerConfig, Identity, KubeletConfig, PodPlacement};

#[derive(Debug, Parser)]
#[command(
    name = "wirekube-apiserver",
    about = "Test-only Kubernetes API server for WireKube's lab"
)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Directory to write kubeconfigs into (admin.kubeconfig, operator.kubeconfig,
    /// agent-<node>.kubeconfig).
    #[arg(long)]
    kubeconfig_dir: Option<PathBuf>,
    /// Nodes to write agent kubeconfigs for.
    #[arg(long = "agent-node")]
    agent_nodes: Vec<String>,
    /// CRD manifests to preload (file or directory; repeatable).
    #[arg(long)]
    crd_dir: Vec<PathBuf>,
    /// RBAC manifests to preload (file or directory; repeatable).
    #[arg(long)]
    rbac_dir: Vec<PathBuf>,
    /// Other manifests to preload (file or directory; repeatable).
    #[arg(long)]
    manifests: Vec<PathBuf>,
    /// Addresses for LoadBalancer Services (comma-separated).
    #[arg(long, value_delimiter = ',')]
    lb_pool: Vec<IpAddr>,
    /// Authorize every authenticated request (no RBAC).
    #[arg(long)]
    no_rbac: bool,
    /// Run Deployments as local processes.
    #[arg(long)]
    enable_kubelet: bool,
    /// Image to binary mapping for the kubelet, `PATTERN=PATH` (pattern may end in `*`).
    #[arg(long = "image")]
    images: Vec<String>,
    /// Network namespace the kubelet runs pods in (`ip netns exec <NS>`).
    #[arg(long)]
    pod_netns: Option<String>,
    /// Pod IP reported for kubelet pods.
    #[arg(long)]
    pod_ip: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let kubelet = if args.enable_kubelet {
        let mut images = Vec::new();
        for m in &args.images {
            let (pat, path) = m
                .split_once('=')
                .with_context(|| format!("--image {m}: expected PATTERN=PATH"))?;
            images.push((pat.to_string(), PathBuf::from(path)));
        }
        let prefix: Vec<String> = match &args.pod_netns {
            Some(ns) => vec!["ip".into(), "netns".into(), "exec".into(), ns.clone()],
            None => Vec::new(),
        };
        let pod_ip = args.pod_ip.clone();
        Some(KubeletConfig {
            images,
            placement: Arc::new(move |_| PodPlacement {
                node_name: None,
                command_prefix: prefix.clone(),
                pod_ip: pod_ip.clone(),
            }),
            ..KubeletConfig::default()
        })
    } else {
        None
    };
    let preload = args
        .crd_dir
        .iter()
        .chain(&args.rbac_dir)
        .chain(&args.manifests)
        .cloned()
        .collect();
    let config = ApiServerConfig {
        listen: args.listen,
        rbac: !args.no_rbac,
        lb_pool: args.lb_pool.clone(),
        kubelet,
        preload,
        ..ApiServerConfig::default()
    };
    let server = ApiServer::start(config)
        .await
        .context("starting the API server")?;
    if let Some(dir) = &args.kubeconfig_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut ids = vec![Identity::Admin, Identity::Operator];
        ids.extend(args.agent_nodes.iter().cloned().map(Identity::Agent));
        for id in ids {
            let p = dir.join(format!("{}.kubeconfig", id.label()));
            server.write_kubeconfig(&id, &p)?;
        }
    }
    println!("wirekube-apiserver listening on {}", server.url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    server.shutdown().await;
    Ok(())
}
