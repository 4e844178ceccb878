//! One sample of a peer's WireGuard counters, as the path state machine sees it.

use std::net::SocketAddr;
use std::time::Instant;

use crate::pathtiming::HANDSHAKE_FRESH;

/// One sample of the peer's WireGuard counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// Time of the last handshake on the monotonic clock (converted by the caller).
    pub last_handshake: Option<Instant>,
    pub endpoint: Option<SocketAddr>,
    /// The endpoint is a relay bridge socket (or any loopback address).
    pub via_relay: bool,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl Observation {
    /// A handshake recent enough that its keys still carry data. Without one, only handshake
    /// messages can arrive (a crossed initiation): received bytes then prove no path. A Direct
    /// entered on such bytes failed the stale-keys rule a tick later (a 30-node start-up's
    /// slowest pair took 11 s more through the relay and back).
    pub fn live_session(&self, now: Instant) -> bool {
        self.last_handshake
            .is_some_and(|h| now.saturating_duration_since(h) <= HANDSHAKE_FRESH)
    }
}
