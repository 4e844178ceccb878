//! Loopback UDP sockets that stand in for relayed peers.
//!
//! For each relayed peer P the bridge owns a UDP socket on `127.0.0.1:<ephemeral>`,
//! connected to WireGuard's listen port. The agent configures that address as P's
//! endpoint; whatever WireGuard sends there is framed to the relay with destination P.
//! Frames arriving from the relay with source K are written into WireGuard *from K's
//! socket*, so WireGuard sees K's packets coming from K's stand-in address and, if it had a
//! different endpoint for K, roams to it. That is what makes a one-sided fallback converge:
//! when K moved to the relay first, its traffic arrives here even though this side still
//! plans K as direct, and WireGuard's replies follow it back over the relay.
//!
//! Connecting each socket to WireGuard's port means the kernel drops datagrams from any
//! other local process, so no one else can inject into the relay. Delivery needs only
//! 127.0.0.1, which both kernel and userspace WireGuard accept (they bind 0.0.0.0), and
//! loopback routing (local table, priority 0) is never affected by the mesh rules.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use wirekube_relay_proto::{PublicKey, RelayClient, RelayReceiver};

use crate::diff::short;
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
    /// Datagrams the relay client refused (queue full, disconnected, closed).
    pub send_dropped: u64,
    /// Peer sockets currently open.
    pub peer_sockets: u64,
}

#[derive(Default)]
struct Counters {
    to_relay_packets: AtomicU64,
    to_relay_bytes: AtomicU64,
    from_relay_packets: AtomicU64,
    from_relay_bytes: AtomicU64,
    unauthorized_dropped: AtomicU64,
    send_dropped: AtomicU64,
}

struct PeerSocket {
    socket: Arc<UdpSocket>,
    addr: SocketAddr,
    reader: JoinHandle<()>,
}

struct Shared {
    client: RelayClient,
    wg: SocketAddr,
    authorized: RwLock<HashSet<[u8; 32]>>,
    peers: Mutex<HashMap<[u8; 32], PeerSocket>>,
    counters: Counters,
}

/// Carries WireGuard datagrams of relayed peers over the relay connection.
///
/// Dropping the bridge closes every peer socket and stops its tasks (the relay client
/// itself is only a handle; shut it down separately if wanted).
pub struct RelayBridge {
    shared: Arc<Shared>,
    inbound: JoinHandle<()>,
}

impl RelayBridge {
    /// Starts the bridge on the current tokio runtime. `wg_listen_port` is WireGuard's
    /// UDP port on this node; relayed packets are delivered to `127.0.0.1:wg_listen_port`.
    pub fn new(client: RelayClient, receiver: RelayReceiver, wg_listen_port: u16) -> Self {
        let shared = Arc::new(Shared {
            client,
            wg: SocketAddr::from((Ipv4Addr::LOCALHOST, wg_listen_port)),
            authorized: RwLock::new(HashSet::new()),
            peers: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        let inbound = tokio::spawn(inbound_loop(shared.clone(), receiver));
        Self { shared, inbound }
    }

    /// The loopback address to configure as `peer`'s WireGuard endpoint while it is
    /// relayed. Stable for the life of the bridge (the socket is created on first use).
    pub async fn endpoint_for(&self, peer: [u8; 32]) -> Result<SocketAddr, DataplaneError> {
        socket_for(&self.shared, peer).await.map(|(_, a)| a)
    }

    /// Replaces the set of keys whose relay frames may be delivered to WireGuard (normally
    /// every peer of the mesh, relayed or not, so that a peer that fell back on its side
    /// first is heard). Sockets of keys that left the set are closed.
    pub fn set_authorized(&self, keys: HashSet<[u8; 32]>) {
        let mut peers = lock(&self.shared.peers);
        peers.retain(|k, s| {
            let keep = keys.contains(k);
            if !keep {
                s.reader.abort();
            }
            keep
        });
        *self
            .shared
            .authorized
            .write()
            .unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// If `addr` is one of this bridge's peer sockets, the key it stands for. Lets the
    /// agent tell "WireGuard is using the relay for this peer" from its stats.
    pub fn is_relay_endpoint(&self, addr: SocketAddr) -> Option<[u8; 32]> {
        if !addr.ip().is_loopback() {
            return None;
        }
        lock(&self.shared.peers)
            .iter()
            .find(|(_, s)| s.addr == addr)
            .map(|(k, _)| *k)
    }

    /// Traffic counters.
    pub fn counters(&self) -> RelayBridgeCounters {
        let c = &self.shared.counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayBridgeCounters {
            to_relay_packets: r(&c.to_relay_packets),
            to_relay_bytes: r(&c.to_relay_bytes),
            from_relay_packets: r(&c.from_relay_packets),
            from_relay_bytes: r(&c.from_relay_bytes),
            unauthorized_dropped: r(&c.unauthorized_dropped),
            send_dropped: r(&c.send_dropped),
            peer_sockets: lock(&self.shared.peers).len() as u64,
        }
    }
}

impl Drop for RelayBridge {
    fn drop(&mut self) {
        self.inbound.abort();
        for (_, s) in lock(&self.shared.peers).drain() {
            s.reader.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain maps consistent; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn socket_for(
    shared: &Arc<Shared>,
    peer: [u8; 32],
) -> Result<(Arc<UdpSocket>, SocketAddr), DataplaneError> {
    if let Some(s) = lock(&shared.peers).get(&peer) {
        return Ok((s.socket.clone(), s.addr));
    }
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| DataplaneError::io("bind relay bridge socket", e))?;
    sock.connect(shared.wg)
        .await
        .map_err(|e| DataplaneError::io("connect relay bridge socket", e))?;
    let addr = sock
        .local_addr()
        .map_err(|e| DataplaneError::io("relay bridge socket address", e))?;
    let sock = Arc::new(sock);
    let mut peers = lock(&shared.peers);
    // Another task may have raced us; keep the first socket so the endpoint stays stable.
    if let Some(s) = peers.get(&peer) {
        return Ok((s.socket.clone(), s.addr));
    }
    let reader = tokio::spawn(outbound_loop(shared.clone(), sock.clone(), peer));
    peers.insert(
        peer,
        PeerSocket {
            socket: sock.clone(),
            addr,
            reader,
        },
    );
    tracing::debug!(peer = %short(&peer), %addr, "relay bridge socket opened");
    Ok((sock, addr))
}

/// WireGuard → relay for one peer.
async fn outbound_loop(shared: Arc<Shared>, sock: Arc<UdpSocket>, peer: [u8; 32]) {
    let mut buf = vec![0u8; 65_535];
    let c = &shared.counters;
    loop {
        let n = match sock.recv(&mut buf).await {
            Ok(n) => n,
            // ECONNREFUSED after WireGuard restarts its socket; transient.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => {
                tracing::warn!(peer = %short(&peer), error = %e, "relay bridge socket failed");
                return;
            }
        };
        match shared
            .client
            .send(PublicKey(peer), Bytes::copy_from_slice(&buf[..n]))
        {
            Ok(()) => {
                c.to_relay_packets.fetch_add(1, Ordering::Relaxed);
                c.to_relay_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => {
                c.send_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Relay → WireGuard, from the source key's socket.
async fn inbound_loop(shared: Arc<Shared>, mut receiver: RelayReceiver) {
    let c = &shared.counters;
    while let Some((src, payload)) = receiver.recv().await {
        let key = src.0;
        let allowed = shared
            .authorized
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key);
        if !allowed {
            c.unauthorized_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let sock = match socket_for(&shared, key).await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(peer = %short(&key), error = %e, "cannot open relay bridge socket");
                continue;
            }
        };
        // Loopback sends do not block in practice; a full socket buffer drops like UDP.
        match sock.try_send(&payload) {
            Ok(n) => {
                c.from_relay_packets.fetch_add(1, Ordering::Relaxed);
                c.from_relay_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => {
                c.send_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
