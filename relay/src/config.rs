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
    /// Deadline from accept to AuthOk.
    pub auth_timeout: Duration,
    /// Frames buffered per connection before new ones are dropped.
    pub queue_depth: usize,
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
            auth_timeout: Duration::from_secs(10),
            queue_depth: 512,
            write_timeout: Duration::from_secs(10),
            registration_rate: 5.0,
            registration_burst: 20,
            drain_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_millis(250),
            idle_timeout: Some(Duration::from_secs(60)),
            notify_unknown_destination: false,
        }
    }
}
