//! `wirekube-operator` binary: flags, logging, signals, HTTP endpoints, leader election.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use wirekube_operator::{ControllerSettings, Metrics, OperatorSettings, http, telemetry};

/// WireKube operator: turns a WireKubeMesh into one WireKubePeer per node and a managed relay.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Namespace of the Lease and the managed relay objects.
    #[arg(long, env = "POD_NAMESPACE", default_value = "wirekube-system")]
    namespace: String,
    /// Lease holder identity (unique per replica).
    #[arg(long, env = "POD_NAME", default_value_t = default_identity())]
    identity: String,
    /// Address of /metrics, /healthz, /readyz.
    #[arg(
        long,
        env = "WIREKUBE_OPERATOR_METRICS_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    metrics_listen: SocketAddr,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "WIREKUBE_OPERATOR_LEASE_NAME",
        default_value = "wirekube-operator"
    )]
    lease_name: String,
    /// Lease duration in seconds (a standby takes over this long after the leader vanished).
    #[arg(long, env = "WIREKUBE_OPERATOR_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Kubeconfig file; in-cluster config (or ~/.kube/config) when unset.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Relay image to run instead of each mesh's relay.managed.image.
    #[arg(long, env = "WIREKUBE_RELAY_IMAGE_OVERRIDE")]
    relay_image_override: Option<String>,
    /// Milliseconds of quiet before a reconcile runs. 0: at once; changes that arrive during a
    /// reconcile are coalesced into the next one either way. The quiet time restarts at every
    /// change, so a busy mesh can hold reconciles back (docs/operator.md).
    #[arg(long, env = "WIREKUBE_OPERATOR_DEBOUNCE_MS", default_value_t = 0)]
    debounce_ms: u64,
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .context("loading kubeconfig")?
        }
        None => kube::Config::infer()
            .await
            .context("inferring Kubernetes config")?,
    };
    wirekube_kubeclient::client(config, &wirekube_kubeclient::Keepalive::DEFAULT)
        .context("building Kubernetes client")
}

async fn signal(shutdown: CancellationToken) {
    let term = async {
        #[cfg(unix)]
        {
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        () = term => info!("SIGTERM: shutting down"),
    }
    shutdown.cancel();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube's rustls-tls feature selects no crypto provider, and a workspace build can enable
    // two (ring and aws-lc-rs), in which case rustls refuses to guess: pick one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    telemetry::init();
    let args = Args::parse();
    let client = client(args.kubeconfig.as_ref()).await?;
    let metrics = Metrics::default();
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    tokio::spawn(signal(shutdown.clone()));
    let http = tokio::spawn(http::serve(
        args.metrics_listen,
        metrics.clone(),
        ready.clone(),
        shutdown.clone(),
    ));
    let settings = OperatorSettings {
        controller: ControllerSettings {
            namespace: args.namespace,
            identity: args.identity,
            relay_image_override: args.relay_image_override,
            debounce: Duration::from_millis(args.debounce_ms),
            ..ControllerSettings::default()
        },
        lease_name: args.lease_name,
        lease_duration: args.lease_duration,
    };
    info!(identity = %settings.controller.identity, namespace = %settings.controller.namespace, "starting");
    let result = wirekube_operator::run(client, settings, metrics, ready, shutdown.clone()).await;
    shutdown.cancel();
    match http.await {
        Ok(Err(e)) => error!(error = %e, "metrics server"),
        Err(e) => error!(error = %e, "metrics server task"),
        Ok(Ok(())) => {}
    }
    result.context("operator")
}
