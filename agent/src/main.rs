//! `wirekube-agent` binary: flags (with env fallbacks), logging to stderr, signals.
//!
//! Exit codes: 0 after a graceful shutdown or a successful cleanup; 1 on a runtime error
//! (no kubeconfig, unusable state dir, cleanup failure); 2 on bad flags (clap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use wirekube_agent::identity::Identity;
use wirekube_agent::metrics::{self, Metrics};
use wirekube_agent::reconcile::{Agent, AgentConfig};
use wirekube_agent::spec::LocalSettings;
use wirekube_dataplane::{Dataplane, EngineChoice};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EngineFlag {
    Auto,
    Kernel,
    WireguardGo,
    Embedded,
    /// Kernel WireGuard if the kernel has it, else the userspace daemon of the pod's
    /// `wireguard` container (`userspace-engine`): the agent waits for its socket and never
    /// starts one, so an agent restart keeps the tunnel (config/agent/daemonset.yaml).
    Sidecar,
}

/// How long `--engine sidecar` waits for the `wireguard` container's daemon.
const SIDECAR_WAIT: Duration = Duration::from_secs(60);

/// WireKube node agent: WireGuard mesh with NAT discovery and relay fallback.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// This node's name (its WireKubePeer has the same name).
    #[arg(long, env = "NODE_NAME", global = true)]
    node_name: Option<String>,
    /// Kubeconfig file; default: $KUBECONFIG, then ~/.kube/config, then in-cluster.
    #[arg(long, env = "KUBECONFIG", global = true)]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the relay token Secret.
    #[arg(
        long,
        env = "WIREKUBE_NAMESPACE",
        default_value = "wirekube-system",
        global = true
    )]
    namespace: String,
    /// Directory for the private key (key file 0600). Created 0700 if missing; an existing
    /// one is never chmodded and must be ours and not group/world-writable.
    #[arg(
        long,
        env = "WIREKUBE_STATE_DIR",
        default_value = "/var/lib/wirekube",
        global = true
    )]
    state_dir: PathBuf,
    /// WireGuard engine.
    #[arg(
        long,
        env = "WIREKUBE_ENGINE",
        value_enum,
        default_value = "auto",
        global = true
    )]
    engine: EngineFlag,
    /// wireguard-go executable for --engine wireguard-go.
    #[arg(
        long,
        env = "WIREKUBE_WIREGUARD_GO_BINARY",
        default_value = "wireguard-go",
        global = true
    )]
    wireguard_go_binary: PathBuf,
    /// Address for /metrics and /healthz; "off" disables it.
    #[arg(
        long,
        env = "WIREKUBE_METRICS_LISTEN",
        default_value = "0.0.0.0:9091",
        global = true
    )]
    metrics_listen: String,
    /// fwmark on WireGuard's own packets (they bypass the mesh table).
    #[arg(long, env = "WIREKUBE_FWMARK", default_value_t = wirekube_dataplane::DEFAULT_FWMARK, global = true)]
    fwmark: u32,
    /// Routing table for peer routes, WireKube's alone (not 0, 253-255; not wg-quick's 51820).
    #[arg(
        long,
        env = "WIREKUBE_TABLE",
        default_value_t = wirekube_dataplane::DEFAULT_TABLE,
        value_parser = parse_table,
        global = true
    )]
    table: u32,
    /// Priority of the ip rule selecting the table (2..32766; the bypass rule takes one less).
    #[arg(
        long,
        env = "WIREKUBE_RULE_PRIORITY",
        default_value_t = wirekube_dataplane::DEFAULT_RULE_PRIORITY,
        value_parser = parse_rule_priority,
        global = true
    )]
    rule_priority: u32,
    /// Seconds between WireGuard stats reads (handshake and fallback detection). A dead
    /// direct path is noticed within 0.5 s of silence plus one such tick (docs/agent.md).
    #[arg(
        long,
        env = "WIREKUBE_STATS_INTERVAL",
        default_value_t = 0.5,
        global = true
    )]
    stats_interval: f64,
    /// Seconds between status re-applies when nothing significant changed.
    #[arg(long, env = "WIREKUBE_HEARTBEAT", default_value_t = 60, global = true)]
    heartbeat: u64,
    /// CNI configuration directory, written only when the mesh sets `podNetwork.enabled`.
    #[arg(
        long,
        env = "WIREKUBE_CNI_CONF_DIR",
        default_value = "/etc/cni/net.d",
        global = true
    )]
    cni_conf_dir: PathBuf,
    /// Seconds between NAT re-checks.
    #[arg(
        long,
        env = "WIREKUBE_DISCOVERY_INTERVAL",
        default_value_t = 300,
        global = true
    )]
    discovery_interval: u64,
    /// Seconds before a fallen-back direct path is first probed again; later probes wait
    /// twice as long each time, up to 8x. Probes start on wall-clock multiples of the wait so
    /// that both nodes of a pair probe together; an agent also tells its peer through the relay
    /// when it starts a probe, so clocks that disagree do not keep a pair apart.
    #[arg(
        long,
        env = "WIREKUBE_PROBE_INTERVAL",
        default_value_t = wirekube_agent::pathstate::PROBE_MIN_DEFAULT.as_secs(),
        global = true
    )]
    probe_interval: u64,
    /// TEST ONLY: seconds added to this node's clock for probe slots, so that the lab can
    /// emulate a node whose clock is off (network namespaces share the host clock). Never
    /// set it in production.
    #[arg(
        long,
        env = "WIREKUBE_TEST_CLOCK_OFFSET_SECS",
        default_value_t = 0,
        allow_negative_numbers = true,
        hide = true,
        global = true
    )]
    test_clock_offset_secs: i64,
    /// Interface to remove with `cleanup` (default: the name in this node's spec, else wirekube0).
    #[arg(long, env = "WIREKUBE_INTERFACE", global = true)]
    interface: Option<String>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the agent (default).
    Run,
    /// Remove the interface, routes and rules the agent created (the key stays).
    Cleanup,
    /// The agent pod's `wireguard` container: wireguard-go in the foreground for --interface
    /// (default wirekube0) when the kernel has no WireGuard, else wait for SIGTERM.
    UserspaceEngine,
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn kube_client(args: &Args) -> anyhow::Result<kube::Client> {
    // KUBECONFIG is honoured by try_default itself; an explicit flag wins.
    match &args.kubeconfig {
        Some(path) if std::env::var_os("KUBECONFIG").as_deref() != Some(path.as_os_str()) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .context("kubeconfig")?;
            Ok(with_keepalive(cfg)?)
        }
        _ => with_keepalive(
            kube::Config::infer()
                .await
                .context("no Kubernetes config (KUBECONFIG, ~/.kube/config or in-cluster)")?,
        ),
    }
}

fn with_keepalive(cfg: kube::Config) -> anyhow::Result<kube::Client> {
    wirekube_kubeclient::client(cfg, &wirekube_kubeclient::Keepalive::DEFAULT)
        .context("building Kubernetes client")
}

async fn run(args: Args) -> anyhow::Result<()> {
    let node = args
        .node_name
        .clone()
        .context("--node-name or NODE_NAME is required")?;
    let (id, created) = Identity::load_or_create(&args.state_dir)
        .with_context(|| format!("key store in {}", args.state_dir.display()))?;
    tracing::info!(public_key = %id.public_key(), created, "identity ready");
    let client = kube_client(&args).await?;
    let metrics = Metrics::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    if args.metrics_listen != "off" {
        let addr: SocketAddr = args
            .metrics_listen
            .parse()
            .context("--metrics-listen must be ip:port or off")?;
        let (m, s) = (metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, m, async move { s.cancelled().await }).await {
                tracing::error!(%addr, error = %e, "metrics server failed");
            }
        });
    }
    let engine = match args.engine {
        EngineFlag::Auto => EngineChoice::Auto,
        EngineFlag::Kernel => EngineChoice::Kernel,
        EngineFlag::WireguardGo => EngineChoice::WireguardGo {
            binary: resolve_in_path(&args.wireguard_go_binary),
        },
        EngineFlag::Embedded => EngineChoice::Embedded,
        EngineFlag::Sidecar => EngineChoice::Sidecar { wait: SIDECAR_WAIT },
    };
    let cfg = AgentConfig {
        node,
        namespace: args.namespace.clone(),
        engine,
        local: LocalSettings {
            fwmark: args.fwmark,
            table: args.table,
            rule_priority: args.rule_priority,
        },
        stats_interval: Duration::from_secs_f64(args.stats_interval.clamp(0.1, 60.0)),
        heartbeat: Duration::from_secs(args.heartbeat.max(1)),
        discovery_interval: Duration::from_secs(args.discovery_interval.max(10)),
        probe_min: Duration::from_secs(args.probe_interval.max(1)),
        cni_conf_dir: args.cni_conf_dir.clone(),
        key_created: created,
        test_clock_offset_secs: args.test_clock_offset_secs,
    };
    if cfg.test_clock_offset_secs != 0 {
        tracing::warn!(
            secs = cfg.test_clock_offset_secs,
            "TEST ONLY: probe slots use a clock shifted by WIREKUBE_TEST_CLOCK_OFFSET_SECS"
        );
    }
    Agent::new(cfg, id, client, metrics).run(terminated()).await;
    shutdown.cancel();
    Ok(())
}

async fn cleanup(args: Args) -> anyhow::Result<()> {
    let name = match &args.interface {
        Some(n) => n.clone(),
        None => spec_interface(&args)
            .await
            .unwrap_or_else(|| "wirekube0".into()),
    };
    Dataplane::cleanup(&name, args.table, args.rule_priority)
        .await
        .with_context(|| format!("cleanup of {name}"))?;
    tracing::info!(interface = %name, "removed interface, routes and rules");
    use wirekube_agent::podnet;
    podnet::remove_mss()
        .await
        .context("removing the MSS clamp")?;
    podnet::remove(&args.cni_conf_dir)
        .await
        .context("removing the pod network configuration")?;
    tracing::info!(
        cni_conf_dir = %args.cni_conf_dir.display(),
        "removed the MSS clamp and the pod network's CNI file and rule (if any)"
    );
    Ok(())
}

/// `userspace-engine`: see `wirekube_agent::sidecar`.
async fn userspace_engine(args: Args) -> anyhow::Result<()> {
    use wirekube_agent::sidecar::{Plan, exec_wireguard_go, plan};
    let iface = args.interface.clone().unwrap_or_else(|| "wirekube0".into());
    let probe = wirekube_dataplane::kernel_wireguard_probe().await;
    match plan(probe.map_err(|e| e.to_string())) {
        Plan::Idle => {
            tracing::info!(interface = %iface, "kernel WireGuard available: the agent uses it; idle until stopped");
            terminated().await;
            Ok(())
        }
        Plan::RunWireguardGo { kernel } => {
            let bin = resolve_in_path(&args.wireguard_go_binary);
            tracing::info!(interface = %iface, binary = %bin.display(), reason = %kernel, "no kernel WireGuard: running wireguard-go in the foreground");
            Err(exec_wireguard_go(&bin, &iface).into())
        }
    }
}

/// The interface name from this node's spec, if the API server is reachable.
async fn spec_interface(args: &Args) -> Option<String> {
    let node = args.node_name.as_deref()?;
    let client = kube_client(args).await.ok()?;
    let api = kube::Api::<wirekube_crds::WireKubePeer>::all(client);
    let p = tokio::time::timeout(Duration::from_secs(5), api.get(node))
        .await
        .ok()?
        .ok()?;
    Some(p.spec.interface_name)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube's rustls-tls feature selects no crypto provider, and a workspace build can enable
    // two (ring and aws-lc-rs), in which case rustls refuses to guess: pick one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Plain text when stderr is a file (lab logs, kubectl logs).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut args = Args::parse();
    match args.cmd.take() {
        None | Some(Cmd::Run) => run(args).await,
        Some(Cmd::Cleanup) => cleanup(args).await,
        Some(Cmd::UserspaceEngine) => userspace_engine(args).await,
    }
}

/// Bad routing flags are usage errors (exit 2 at start), not a reconcile error later.
fn parse_table(s: &str) -> Result<u32, String> {
    let t: u32 = s.parse().map_err(|e| format!("{e}"))?;
    wirekube_dataplane::validate_table(t).map_err(|e| e.to_string())?;
    Ok(t)
}

fn parse_rule_priority(s: &str) -> Result<u32, String> {
    let p: u32 = s.parse().map_err(|e| format!("{e}"))?;
    wirekube_dataplane::validate_rule_priority(p).map_err(|e| e.to_string())?;
    Ok(p)
}

/// A bare program name (no `/`) is looked up in `PATH` the way a shell would; the dataplane
/// only checks the path it is given, so `--wireguard-go-binary wireguard-go` (the default)
/// would otherwise be taken relative to the working directory. Unresolvable names are
/// returned unchanged (the dataplane then reports them as not found).
fn resolve_in_path(bin: &std::path::Path) -> PathBuf {
    if bin.components().count() != 1 || bin.is_absolute() {
        return bin.to_path_buf();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .unwrap_or_else(|| bin.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_resolve_through_path() {
        let sh = resolve_in_path(std::path::Path::new("sh"));
        assert!(sh.is_absolute() && sh.is_file(), "{sh:?}");
        let rel = std::path::Path::new("./x/wireguard-go");
        assert_eq!(resolve_in_path(rel), rel);
        let missing = std::path::Path::new("no-such-binary-wk");
        assert_eq!(resolve_in_path(missing), missing);
    }

    #[test]
    fn routing_flags_are_validated_and_default_away_from_wg_quick() {
        let a = Args::try_parse_from(["wirekube-agent"]).unwrap();
        assert_eq!(a.table, wirekube_dataplane::DEFAULT_TABLE);
        assert_ne!(a.table, 51820);
        assert_eq!(a.rule_priority, 5200);
        let a = Args::try_parse_from(["wirekube-agent", "--table", "100", "--rule-priority", "2"])
            .unwrap();
        assert_eq!((a.table, a.rule_priority), (100, 2));
        for bad in [
            ["--table", "254"],
            ["--table", "0"],
            ["--table", "x"],
            ["--rule-priority", "1"],
            ["--rule-priority", "32766"],
        ] {
            let e = Args::try_parse_from(["wirekube-agent", bad[0], bad[1]]).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad:?}: {e}"
            );
        }
    }
}
