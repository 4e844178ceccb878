//! Per-peer statistics as read from WireGuard.

use std::net::SocketAddr;
use std::time::SystemTime;

/// Live counters of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's public key.
    pub public_key: [u8; 32],
    /// The endpoint WireGuard currently sends to (after roaming, the observed one).
    pub endpoint: Option<SocketAddr>,
    /// Wall-clock time of the last completed handshake; `None` if there never was one.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from this peer.
    pub rx_bytes: u64,
    /// Bytes sent to this peer.
    pub tx_bytes: u64,
}
