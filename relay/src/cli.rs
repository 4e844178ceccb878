//! The relay's command line (clap). Flag names come from `wirekube_relay_proto::flags::names`,
//! the typed form the operator and the test harnesses render ([`RelayFlags`]); the tests here
//! parse what it renders.
//!
//! [`RelayFlags`]: wirekube_relay_proto::flags::RelayFlags

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use wirekube_relay_proto::flags::names;

/// WireKube relay: authenticated WireGuard packet relay over TCP plus a STUN responder.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// TCP relay listen address.
    #[arg(long = names::LISTEN, env = "WIREKUBE_RELAY_LISTEN", default_value = "0.0.0.0:3478")]
    pub listen: SocketAddr,
    /// IP the STUN responder binds and reports; defaults to the --listen IP. Must be a
    /// concrete address of this host (RESPONSE-ORIGIN/OTHER-ADDRESS carry it).
    #[arg(long = names::STUN_IP, env = "WIREKUBE_RELAY_STUN_IP")]
    pub stun_ip: Option<IpAddr>,
    /// STUN primary UDP port.
    #[arg(long = names::STUN_PORT, env = "WIREKUBE_RELAY_STUN_PORT", default_value_t = 3478)]
    pub stun_port: u16,
    /// STUN alternate UDP port (CHANGE-REQUEST change-port).
    #[arg(long = names::STUN_ALT_PORT, env = "WIREKUBE_RELAY_STUN_ALT_PORT", default_value_t = 3479)]
    pub stun_alt_port: u16,
    /// Second IP for CHANGE-REQUEST change-IP (RFC 5780 filtering tests).
    #[arg(long = names::STUN_ALT_IP, env = "WIREKUBE_RELAY_STUN_ALT_IP")]
    pub stun_alt_ip: Option<IpAddr>,
    /// STUN answers per second per source (IPv4 address or IPv6 /64), sustained. Requests
    /// over the limit are dropped silently: sources can be spoofed, so every answer can be
    /// a reflection towards a victim. A dropped answer to a CHANGE-REQUEST reads as NAT
    /// filtering to the client, so the limit must stay well above what the agents behind one address send at once (an
    /// agent's discovery sends up to ~12 requests).
    #[arg(long, env = "WIREKUBE_RELAY_STUN_RATE", default_value_t = 100.0)]
    pub stun_rate: f64,
    /// STUN answers per source in a burst.
    #[arg(long, env = "WIREKUBE_RELAY_STUN_BURST", default_value_t = 200)]
    pub stun_burst: u32,
    /// STUN answers per second over all sources.
    #[arg(
        long,
        env = "WIREKUBE_RELAY_STUN_TOTAL_RATE",
        default_value_t = 10_000.0
    )]
    pub stun_total_rate: f64,
    /// Disable the STUN responder.
    #[arg(long = names::NO_STUN, env = "WIREKUBE_RELAY_NO_STUN")]
    pub no_stun: bool,
    /// HTTP address for /metrics, /healthz, /readyz.
    #[arg(
        long = names::METRICS_LISTEN,
        env = "WIREKUBE_RELAY_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_listen: SocketAddr,
    /// File holding the mesh token (the mounted Secret); re-read when it changes.
    #[arg(
        long = names::TOKEN_FILE,
        env = "WIREKUBE_RELAY_TOKEN_FILE",
        default_value = "/etc/wirekube/token"
    )]
    pub token_file: PathBuf,
    /// Seconds between token file change checks.
    #[arg(long, env = "WIREKUBE_RELAY_TOKEN_POLL_SECS", default_value_t = 5)]
    pub token_poll_secs: u64,
    /// Maximum concurrent TCP connections (including unauthenticated ones).
    #[arg(long = names::MAX_CONNECTIONS, env = "WIREKUBE_RELAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Maximum concurrent connections that have not authenticated yet, all sources
    /// together. Capped at half of --max-connections so that the other half is only ever
    /// taken by authenticated agents.
    #[arg(
        long,
        env = "WIREKUBE_RELAY_MAX_UNAUTHENTICATED",
        default_value_t = 1_000
    )]
    pub max_unauthenticated: usize,
    /// Maximum concurrent unauthenticated connections per source (IPv4 address or IPv6
    /// /64). Agents behind one NAT address share it; a handshake takes one round trip.
    #[arg(
        long,
        env = "WIREKUBE_RELAY_MAX_UNAUTHENTICATED_PER_SOURCE",
        default_value_t = 32
    )]
    pub max_unauthenticated_per_source: usize,
    /// Milliseconds a new connection has to send its first frame (Hello).
    #[arg(
        long,
        env = "WIREKUBE_RELAY_FIRST_FRAME_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    pub first_frame_timeout_ms: u64,
    /// Seconds a client has to complete authentication.
    #[arg(long, env = "WIREKUBE_RELAY_AUTH_TIMEOUT", default_value_t = 10)]
    pub auth_timeout: u64,
    /// Frames queued per connection before new ones are dropped.
    #[arg(long, env = "WIREKUBE_RELAY_QUEUE_DEPTH", default_value_t = 512)]
    pub queue_depth: usize,
    /// Bytes queued per connection (including what is being written) before a sender
    /// to it is paused or, when the connection has stalled, its frames are dropped.
    #[arg(long, env = "WIREKUBE_RELAY_QUEUE_BYTES", default_value_t = 2 << 20)]
    pub queue_bytes: usize,
    /// Bytes queued for all connections together (beyond 16 KiB per connection, which
    /// every queue may always hold); frames beyond it are dropped. The relay's memory
    /// limit must cover this plus the per-connection costs (see docs/relay.md).
    #[arg(long = names::TOTAL_QUEUE_BYTES, env = "WIREKUBE_RELAY_TOTAL_QUEUE_BYTES", default_value_t = 256 << 20)]
    pub total_queue_bytes: usize,
    /// Seconds a stalled write may take before the client is disconnected.
    #[arg(long, env = "WIREKUBE_RELAY_WRITE_TIMEOUT", default_value_t = 10)]
    pub write_timeout: u64,
    /// Registrations per second per source IP (sustained).
    #[arg(long = names::REGISTRATION_RATE, env = "WIREKUBE_RELAY_REGISTRATION_RATE", default_value_t = 5.0)]
    pub registration_rate: f64,
    /// Registrations per source IP allowed in a burst.
    #[arg(long = names::REGISTRATION_BURST, env = "WIREKUBE_RELAY_REGISTRATION_BURST", default_value_t = 20)]
    pub registration_burst: u32,
    /// Seconds to wait for connections to drain on shutdown.
    #[arg(long, env = "WIREKUBE_RELAY_DRAIN_TIMEOUT", default_value_t = 5)]
    pub drain_timeout: u64,
    /// Milliseconds without write progress after which a client with queued frames counts
    /// as stalled: frames for it are then dropped at once instead of pausing the sender.
    #[arg(long, env = "WIREKUBE_RELAY_STALL_TIMEOUT_MS", default_value_t = 250)]
    pub stall_timeout_ms: u64,
    /// Seconds an authenticated client may send nothing (not even a Ping) before it is
    /// disconnected; 0 disables. Agents ping every 15 s.
    #[arg(long, env = "WIREKUBE_RELAY_IDLE_TIMEOUT", default_value_t = 60)]
    pub idle_timeout: u64,
    /// Tell a sender (rate-limited, at most once per second per destination) when the
    /// destination of its Data frame is not connected, with a non-fatal Error frame
    /// (code UnknownDestination). Off by default: clients older than this relay treat
    /// any Error frame as fatal and reconnect.
    #[arg(long, env = "WIREKUBE_RELAY_NOTIFY_UNKNOWN_DESTINATION")]
    pub notify_unknown_destination: bool,
}

#[cfg(test)]
mod tests {
    use wirekube_relay_proto::flags::RelayFlags;

    use super::*;

    fn parse(flags: &RelayFlags) -> Args {
        let mut argv = vec!["wirekube-relay".to_string()];
        argv.extend(flags.to_args());
        Args::try_parse_from(argv).expect("the relay parses what RelayFlags renders")
    }

    #[test]
    fn every_typed_flag_reaches_its_field() {
        let f = RelayFlags {
            listen: Some("10.0.0.1:4000".parse().unwrap()),
            stun_ip: Some("10.0.0.2".parse().unwrap()),
            stun_port: Some(4001),
            stun_alt_port: Some(4002),
            stun_alt_ip: Some("10.0.0.3".parse().unwrap()),
            no_stun: true,
            metrics_listen: Some("127.0.0.1:9999".parse().unwrap()),
            token_file: Some("/run/token".into()),
            max_connections: Some(77),
            total_queue_bytes: Some(1 << 20),
            registration_rate: Some(2.5),
            registration_burst: Some(9),
        };
        let a = parse(&f);
        assert_eq!(a.listen, f.listen.unwrap());
        assert_eq!(a.stun_ip, f.stun_ip);
        assert_eq!(a.stun_port, 4001);
        assert_eq!(a.stun_alt_port, 4002);
        assert_eq!(a.stun_alt_ip, f.stun_alt_ip);
        assert!(a.no_stun);
        assert_eq!(a.metrics_listen, f.metrics_listen.unwrap());
        assert_eq!(a.token_file, PathBuf::from("/run/token"));
        assert_eq!(a.max_connections, 77);
        assert_eq!(a.total_queue_bytes, 1 << 20);
        assert_eq!(a.registration_rate, 2.5);
        assert_eq!(a.registration_burst, 9);
    }

    #[test]
    fn unset_flags_keep_the_defaults() {
        let a = parse(&RelayFlags::default());
        assert_eq!(a.listen, "0.0.0.0:3478".parse().unwrap());
        assert_eq!((a.stun_port, a.stun_alt_port), (3478, 3479));
        assert!(!a.no_stun);
    }
}
