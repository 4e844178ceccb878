//! `wirekube-relay` binary: flags, logging, signals.

#![forbid(unsafe_code)]

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use wirekube_relay::cli::Args;
use wirekube_relay::{Relay, RelayConfig, StunConfig, TokenSource};

/// The relay's configuration from its flags.
fn config(args: &Args) -> anyhow::Result<RelayConfig> {
    let mut c = RelayConfig::new(args.listen, TokenSource::File(args.token_file.clone()));
    if !args.no_stun {
        let ip = args.stun_ip.unwrap_or(args.listen.ip());
        anyhow::ensure!(
            !ip.is_unspecified(),
            "STUN needs a concrete address: set --stun-ip (or --no-stun)"
        );
        c.stun = Some(StunConfig {
            ip,
            port: args.stun_port,
            alt_port: args.stun_alt_port,
            alt_ip: args.stun_alt_ip,
        });
    }
    c.metrics_listen = Some(args.metrics_listen);
    c.token_poll_interval = Duration::from_secs(args.token_poll_secs.max(1));
    c.max_connections = args.max_connections;
    c.max_unauthenticated = args.max_unauthenticated;
    c.max_unauthenticated_per_source = args.max_unauthenticated_per_source;
    c.first_frame_timeout = Duration::from_millis(args.first_frame_timeout_ms);
    c.auth_timeout = Duration::from_secs(args.auth_timeout);
    c.queue_depth = args.queue_depth;
    c.queue_bytes = args.queue_bytes;
    c.total_queue_bytes = args.total_queue_bytes;
    c.write_timeout = Duration::from_secs(args.write_timeout);
    c.registration_rate = args.registration_rate;
    c.registration_burst = args.registration_burst;
    c.drain_timeout = Duration::from_secs(args.drain_timeout);
    c.stall_timeout = Duration::from_millis(args.stall_timeout_ms);
    c.idle_timeout = (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout));
    c.notify_unknown_destination = args.notify_unknown_destination;
    c.stun_rate = args.stun_rate;
    c.stun_burst = args.stun_burst;
    c.stun_total_rate = args.stun_total_rate;
    Ok(c)
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
    let relay = Relay::start(config(&args)?)
        .await
        .context("starting relay")?;
    terminated().await;
    tracing::info!("signal received, draining");
    relay.shutdown().await;
    Ok(())
}
