//! Relay settings (the binary fills them from flags / environment).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::token::TokenSource;

/// STUN responder addresses.
#[derive(Debug, Clone)]
pub struct StunConfig {
    /// Primary IP to bind and advertise. Must be a concrete address (not 0.0.0.0),
    /// because RESPONSE-ORIGIN and OTHER-ADDRESS report it to clients.
    pub ip: IpAddr,
    /// Primary port (3478).
    pub port: u16,
    /// Alternate port for CHANGE-REQUEST change-port (3479).
    pub alt_port: u16,
    /// Alternate IP for change-IP; without it change-IP requests get error 420.
    pub alt_ip: Option<IpAddr>,
}

/// Everything the relay needs to run.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// TCP relay listen address.
    pub listen: SocketAddr,
    /// STUN responder; `None` disables it.
    pub stun: Option<StunConfig>,
    /// HTTP address for /metrics, /healthz, /readyz; `None` disables it.
    pub metrics_listen: Option<SocketAddr>,
    /// Mesh token.
    pub token: TokenSource,
    /// How often the token file is checked for changes.
    pub token_poll_interval: Duration,
    /// Concurrent TCP connections, including those still authenticating.
    pub max_connections: usize,
    /// Concurrent connections that have not authenticated yet, all sources together.
    /// Capped at half of `max_connections` (at least 1), so the rest is always left for
    /// authenticated agents.
    pub max_unauthenticated: usize,
    /// Concurrent unauthenticated connections per source (IPv4 address or IPv6 /64).
    pub max_unauthenticated_per_source: usize,
    /// Deadline from accept to the first complete frame (Hello).
    pub first_frame_timeout: Duration,
    /// Deadline from accept to AuthOk.
    pub auth_timeout: Duration,
    /// Frames buffered per connection before new ones are dropped.
    pub queue_depth: usize,
    /// Bytes buffered per connection (queued or being written) before the sender waits
    /// or, for a stalled receiver, frames are dropped.
    pub queue_bytes: usize,
    /// Bytes buffered in all connections' queues together; beyond it frames are dropped
    /// (drop reason `memory_budget`).
    pub total_queue_bytes: usize,
    /// A write to a client that makes no progress for this long closes it.
    pub write_timeout: Duration,
    /// Registrations per second allowed per source IP (sustained).
    pub registration_rate: f64,
    /// Registrations allowed per source IP in a burst.
    pub registration_burst: u32,
    /// How long shutdown waits for connections to drain.
    pub drain_timeout: Duration,
    /// A client whose writer made no progress for this long while frames wait for it is
    /// stalled: frames for it are dropped when its queue is full. While it still makes
    /// progress, a sender targeting its full queue is paused instead (TCP back-pressure).
    pub stall_timeout: Duration,
    /// Disconnect an authenticated client that sends nothing for this long; `None`
    /// disables.
    pub idle_timeout: Option<Duration>,
    /// STUN answers per second per source (IPv4 address or IPv6 /64), sustained.
    pub stun_rate: f64,
    /// STUN answers per source in a burst.
    pub stun_burst: u32,
    /// STUN answers per second over all sources.
    pub stun_total_rate: f64,
    /// Answer a Data frame for an unregistered key with a rate-limited, non-fatal
    /// `UnknownDestination` Error frame.
    pub notify_unknown_destination: bool,
}

impl RelayConfig {
    /// Defaults with the given listen address and token.
    pub fn new(listen: SocketAddr, token: TokenSource) -> Self {
        Self {
            listen,
            stun: None,
            metrics_listen: None,
            token,
            token_poll_interval: Duration::from_secs(5),
            max_connections: 10_000,
            max_unauthenticated: 1_000,
            max_unauthenticated_per_source: 32,
            first_frame_timeout: Duration::from_secs(2),
            auth_timeout: Duration::from_secs(10),
            queue_depth: 512,
            queue_bytes: 2 << 20,
            total_queue_bytes: 256 << 20,
            write_timeout: Duration::from_secs(10),
            registration_rate: 5.0,
            registration_burst: 20,
            drain_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_millis(250),
            idle_timeout: Some(Duration::from_secs(60)),
            stun_rate: 100.0,
            stun_burst: 200,
            stun_total_rate: 10_000.0,
            notify_unknown_destination: false,
        }
    }
}
