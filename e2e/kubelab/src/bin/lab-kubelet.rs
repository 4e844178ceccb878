//! `wirekube-lab-kubelet`: the lab kubelet of one lab node (see `wirekube_kubelab::kubelet`).
//! Started by the lab inside the node's network namespace and private mount view.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::info;
use wirekube_kubelab::kubelet::{self, Config, ImageMap, ImageRule};

/// A kubelet for the WireKube network lab: runs the pods bound to one node as local processes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Kubeconfig with the node's client certificate (system:node:<name>).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Node name.
    #[arg(long)]
    node_name: String,
    /// The node's InternalIP.
    #[arg(long)]
    node_ip: Ipv4Addr,
    /// The node's ExternalIP, if it has one.
    #[arg(long)]
    external_ip: Option<Ipv4Addr>,
    /// Extra node label KEY=VALUE (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Image reference (or prefix ending in `*`) = local binary (repeatable).
    #[arg(long = "image")]
    images: Vec<String>,
    /// Directory for pod volumes, logs and CNI state.
    #[arg(long)]
    root_dir: PathBuf,
    /// Prefix of pod network namespace names (`<prefix>-p<uid8>`).
    #[arg(long)]
    netns_prefix: String,
    /// Directory of the CNI plugin binaries.
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_bin_dir: PathBuf,
    /// Take the pod network from the first `*.conflist` here (as runtimes read
    /// `/etc/cni/net.d`); without it, a built-in bridge on the node's podCIDR.
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// NAME=VALUE added to every container's environment (repeatable; test-only knobs).
    #[arg(long = "container-env")]
    container_env: Vec<String>,
    /// Seconds between node heartbeats.
    #[arg(long, default_value_t = 10)]
    heartbeat: u64,
}

async fn client(path: &PathBuf) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .context("loading kubeconfig")?;
    kube::Client::try_from(config).context("building Kubernetes client")
}

async fn signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping all pods"),
        _ = int.recv() => info!("SIGINT: stopping all pods"),
    }
    shutdown.cancel();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube's rustls-tls feature selects no crypto provider: pick ring explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let rules = args
        .images
        .iter()
        .map(|s| ImageRule::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let labels = args
        .labels
        .iter()
        .map(|s| kubelet::parse_label(s))
        .collect::<Result<_, _>>()?;
    let container_env = args
        .container_env
        .iter()
        .map(|s| kubelet::parse_env(s))
        .collect::<Result<_, _>>()?;
    let cfg = Config {
        node_name: args.node_name,
        node_ip: args.node_ip,
        external_ip: args.external_ip,
        labels,
        images: ImageMap::new(rules),
        root_dir: args.root_dir,
        netns_prefix: args.netns_prefix,
        cni_bin_dir: args.cni_bin_dir,
        cni_conf_dir: args.cni_conf_dir,
        heartbeat: Duration::from_secs(args.heartbeat.max(1)),
        container_env,
    };
    let client = client(&args.kubeconfig).await?;
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(signal(shutdown.clone()));
    info!(node = %cfg.node_name, version = kubelet::KUBELET_VERSION, "lab kubelet starting");
    kubelet::run(client, cfg, shutdown).await?;
    signals.abort();
    Ok(())
}
