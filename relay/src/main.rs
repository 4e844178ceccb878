//! `wirekube-relay` binary: flags, logging, signals.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use wirekube_relay::{Relay, RelayConfig, StunConfig, TokenSource};

/// WireKube relay: authenticated WireGuard packet relay over TCP plus a STUN responder.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TCP relay listen address.
    #[arg(long, env = "WIREKUBE_RELAY_LISTEN", default_value = "0.0.0.0:3478")]
    listen: SocketAddr,
    /// IP the STUN responder binds and reports; defaults to the --listen IP. Must be a
    /// concrete address of this host (RESPONSE-ORIGIN/OTHER-ADDRESS carry it).
    #[arg(long, env = "WIREKUBE_RELAY_STUN_IP")]
    stun_ip: Option<IpAddr>,
    /// STUN primary UDP port.
    #[arg(long, env = "WIREKUBE_RELAY_STUN_PORT", default_value_t = 3478)]
    stun_port: u16,
    /// STUN alternate UDP port (CHANGE-REQUEST change-port).
    #[arg(long, env = "WIREKUBE_RELAY_STUN_ALT_PORT", default_value_t = 3479)]
    stun_alt_port: u16,
    /// Second IP for CHANGE-REQUEST change-IP (RFC 5780 filtering tests).
    #[arg(long, env = "WIREKUBE_RELAY_STUN_ALT_IP")]
    stun_alt_ip: Option<IpAddr>,
    /// STUN answers per second per source (IPv4 address or IPv6 /64), sustained. Requests
    /// over the limit are dropped silently: sources can be spoofed, so every answer can be
    /// a reflection towards a victim. A dropped answer to a CHANGE-REQUEST reads as NAT
    /// filtering to the client, so the limit must stay well above what the agents behind one address send at once (an
    /// agent's discovery sends up to ~12 requests).
    #[arg(long, env = "WIREKUBE_RELAY_STUN_RATE", default_value_t = 100.0)]
    stun_rate: f64,
    /// STUN answers per source in a burst.
    #[arg(long, env = "WIREKUBE_RELAY_STUN_BURST", default_value_t = 200)]
    stun_burst: u32,
    /// STUN answers per second over all sources.
    #[arg(
        long,
        env = "WIREKUBE_RELAY_STUN_TOTAL_RATE",
        default_value_t = 10_000.0
    )]
    stun_total_rate: f64,
    /// Disable the STUN responder.
    #[arg(long, env = "WIREKUBE_RELAY_NO_STUN")]
    no_stun: bool,
    /// HTTP address for /metrics, /healthz, /readyz.
    #[arg(
        long,
        env = "WIREKUBE_RELAY_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    metrics_listen: SocketAddr,
    /// File holding the mesh token (the mounted Secret); re-read when it changes.
    #[arg(
        long,
        env = "WIREKUBE_RELAY_TOKEN_FILE",
        default_value = "/etc/wirekube/token"
    )]
    token_file: PathBuf,
    /// Seconds between token file change checks.
    #[arg(long, env = "WIREKUBE_RELAY_TOKEN_POLL_SECS", default_value_t = 5)]
    token_poll_secs: u64,
    /// Maximum concurrent TCP connections (including unauthenticated ones).
    #[arg(long, env = "WIREKUBE_RELAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Maximum concurrent connections that have not authenticated yet, all sources
    /// together. Capped at half of --max-connections so that the other half is only ever
    /// taken by authenticated agents.
    #[arg(
        long,
        env = "WIREKUBE_RELAY_MAX_UNAUTHENTICATED",
        default_value_t = 1_000
    )]
    max_unauthenticated: usize,
    /// Maximum concurrent unauthenticated connections per source (IPv4 address or IPv6
    /// /64). Agents behind one NAT address share it; a handshake takes one round trip.
    #[arg(
        long,
        env = "WIREKUBE_RELAY_MAX_UNAUTHENTICATED_PER_SOURCE",
        default_value_t = 32
    )]
    max_unauthenticated_per_source: usize,
    /// Milliseconds a new connection has to send its first frame (Hello).
    #[arg(
        long,
        env = "WIREKUBE_RELAY_FIRST_FRAME_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    first_frame_timeout_ms: u64,
    /// Seconds a client has to complete authentication.
    #[arg(long, env = "WIREKUBE_RELAY_AUTH_TIMEOUT", default_value_t = 10)]
    auth_timeout: u64,
    /// Frames queued per connection before new ones are dropped.
    #[arg(long, env = "WIREKUBE_RELAY_QUEUE_DEPTH", default_value_t = 512)]
    queue_depth: usize,
    /// Bytes queued per connection (including what is being written) before a sender
    /// to it is paused or, when the connection has stalled, its frames are dropped.
    #[arg(long, env = "WIREKUBE_RELAY_QUEUE_BYTES", default_value_t = 2 << 20)]
    queue_bytes: usize,
    /// Bytes queued for all connections together (beyond 16 KiB per connection, which
    /// every queue may always hold); frames beyond it are dropped. The relay's memory
    /// limit must cover this plus the per-connection costs (see docs/relay.md).
    #[arg(long, env = "WIREKUBE_RELAY_TOTAL_QUEUE_BYTES", default_value_t = 256 << 20)]
    total_queue_bytes: usize,
    /// Seconds a stalled write may take before the client is disconnected.
    #[arg(long, env = "WIREKUBE_RELAY_WRITE_TIMEOUT", default_value_t = 10)]
    write_timeout: u64,
    /// Registrations per second per source IP (sustained).
    #[arg(long, env = "WIREKUBE_RELAY_REGISTRATION_RATE", default_value_t = 5.0)]
    registration_rate: f64,
    /// Registrations per source IP allowed in a burst.
    #[arg(long, env = "WIREKUBE_RELAY_REGISTRATION_BURST", default_value_t = 20)]
    registration_burst: u32,
    /// Seconds to wait for connections to drain on shutdown.
    #[arg(long, env = "WIREKUBE_RELAY_DRAIN_TIMEOUT", default_value_t = 5)]
    drain_timeout: u64,
    /// Milliseconds without write progress after which a client with queued frames counts
    /// as stalled: frames for it are then dropped at once instead of pausing the sender.
    #[arg(long, env = "WIREKUBE_RELAY_STALL_TIMEOUT_MS", default_value_t = 250)]
    stall_timeout_ms: u64,
    /// Seconds an authenticated client may send nothing (not even a Ping) before it is
    /// disconnected; 0 disables. Agents ping every 15 s.
    #[arg(long, env = "WIREKUBE_RELAY_IDLE_TIMEOUT", default_value_t = 60)]
    idle_timeout: u64,
    /// Tell a sender (rate-limited, at most once per second per destination) when the
    /// destination of its Data frame is not connected, with a non-fatal Error frame
    /// (code UnknownDestination). Off by default: clients older than this relay treat
    /// any Error frame as fatal and reconnect.
    #[arg(long, env = "WIREKUBE_RELAY_NOTIFY_UNKNOWN_DESTINATION")]
    notify_unknown_destination: bool,
}

impl Args {
    fn config(&self) -> anyhow::Result<RelayConfig> {
        let mut c = RelayConfig::new(self.listen, TokenSource::File(self.token_file.clone()));
        if !self.no_stun {
            let ip = self.stun_ip.unwrap_or(self.listen.ip());
            anyhow::ensure!(
                !ip.is_unspecified(),
                "STUN needs a concrete address: set --stun-ip (or --no-stun)"
            );
            c.stun = Some(StunConfig {
                ip,
                port: self.stun_port,
                alt_port: self.stun_alt_port,
                alt_ip: self.stun_alt_ip,
            });
        }
        c.metrics_listen = Some(self.metrics_listen);
        c.token_poll_interval = Duration::from_secs(self.token_poll_secs.max(1));
        c.max_connections = self.max_connections;
        c.max_unauthenticated = self.max_unauthenticated;
        c.max_unauthenticated_per_source = self.max_unauthenticated_per_source;
        c.first_frame_timeout = Duration::from_millis(self.first_frame_timeout_ms);
        c.auth_timeout = Duration::from_secs(self.auth_timeout);
        c.queue_depth = self.queue_depth;
        c.queue_bytes = self.queue_bytes;
        c.total_queue_bytes = self.total_queue_bytes;
        c.write_timeout = Duration::from_secs(self.write_timeout);
        c.registration_rate = self.registration_rate;
        c.registration_burst = self.registration_burst;
        c.drain_timeout = Duration::from_secs(self.drain_timeout);
        c.stall_timeout = Duration::from_millis(self.stall_timeout_ms);
        c.idle_timeout = (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout));
        c.notify_unknown_destination = self.notify_unknown_destination;
        c.stun_rate = self.stun_rate;
        c.stun_burst = self.stun_burst;
        c.stun_total_rate = self.stun_total_rate;
        Ok(c)
    }
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let relay = Relay::start(args.config()?)
        .await
        .context("starting relay")?;
    terminated().await;
    tracing::info!("signal received, draining");
    relay.shutdown().await;
    Ok(())
}
