//! Loopback UDP sockets that stand in for relayed peers.

use std::collections::HashSet;
use std::net::SocketAddr;

use wirekube_relay_proto::{RelayClient, RelayReceiver};

use crate::error::DataplaneError;

/// Counters of a [`RelayBridge`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayBridgeCounters {
    /// Datagrams from WireGuard forwarded to the relay.
    pub to_relay_packets: u64,
    /// Bytes from WireGuard forwarded to the relay.
    pub to_relay_bytes: u64,
    /// Frames from the relay delivered to WireGuard.
    pub from_relay_packets: u64,
    /// Bytes from the relay delivered to WireGuard.
    pub from_relay_bytes: u64,
    /// Frames from keys not in the authorised set, dropped.
    pub unauthorized_dropped: u64,
    /// Datagrams the relay client refused (queue full, closed).
    pub send_dropped: u64,
}

/// Carries WireGuard datagrams of relayed peers over the relay connection.
pub struct RelayBridge {
    _client: RelayClient,
}

impl RelayBridge {
    /// Starts the bridge on the current tokio runtime.
    pub fn new(client: RelayClient, _receiver: RelayReceiver, _wg_listen_port: u16) -> Self {
        Self { _client: client }
    }

    /// The loopback address to configure as `peer`'s WireGuard endpoint.
    pub async fn endpoint_for(&self, _peer: [u8; 32]) -> Result<SocketAddr, DataplaneError> {
        Err(DataplaneError::Bridge("not implemented".into()))
    }

    /// Keys whose relay frames may be delivered to WireGuard.
    pub fn set_authorized(&self, _keys: HashSet<[u8; 32]>) {}

    /// If `addr` is one of this bridge's peer sockets, the peer it stands for.
    pub fn is_relay_endpoint(&self, _addr: SocketAddr) -> Option<[u8; 32]> {
        None
    }

    /// Traffic counters.
    pub fn counters(&self) -> RelayBridgeCounters {
        RelayBridgeCounters::default()
    }
}
