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
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use wirekube_relay_client::{RelayClient, RelayReceiver};
use wirekube_relay_proto::PublicKey;

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

/// Frames taken from the relay receiver per delivery round; consecutive frames of one source go
/// to WireGuard in one `sendmmsg`.
const INBOUND_BATCH: usize = 64;

/// Relay → WireGuard, from the source key's socket.
///
/// Under load the relay client queues frames faster than one `send` per frame can drain them;
/// taking whatever is queued and handing each same-source run to the kernel in one call saves a
/// syscall per packet, which on the receiving node was the agent's largest cost.
async fn inbound_loop(shared: Arc<Shared>, mut receiver: RelayReceiver) {
    let mut batch: Vec<(PublicKey, Bytes)> = Vec::with_capacity(INBOUND_BATCH);
    while let Some(first) = receiver.recv().await {
        batch.push(first);
        while batch.len() < INBOUND_BATCH {
            match receiver.try_recv() {
                Some(p) => batch.push(p),
                None => break,
            }
        }
        for run in same_source_runs(&batch) {
            deliver(&shared, run).await;
        }
        batch.clear();
    }
}

/// Splits `batch` into maximal runs of consecutive frames from the same source key.
fn same_source_runs(batch: &[(PublicKey, Bytes)]) -> impl Iterator<Item = &[(PublicKey, Bytes)]> {
    batch.chunk_by(|a, b| a.0 == b.0)
}

/// Delivers frames of one source (`run` is non-empty and has a single key).
async fn deliver(shared: &Arc<Shared>, run: &[(PublicKey, Bytes)]) {
    let c = &shared.counters;
    let Some((src, _)) = run.first() else { return };
    let key = src.0;
    let allowed = shared
        .authorized
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&key);
    if !allowed {
        c.unauthorized_dropped
            .fetch_add(run.len() as u64, Ordering::Relaxed);
        return;
    }
    let sock = match socket_for(shared, key).await {
        Ok((s, _)) => s,
        Err(e) => {
            tracing::warn!(peer = %short(&key), error = %e, "cannot open relay bridge socket");
            c.send_dropped
                .fetch_add(run.len() as u64, Ordering::Relaxed);
            return;
        }
    };
    let sent = send_batch(&sock, run).await;
    let bytes: usize = run[..sent].iter().map(|(_, p)| p.len()).sum();
    c.from_relay_packets
        .fetch_add(sent as u64, Ordering::Relaxed);
    c.from_relay_bytes
        .fetch_add(bytes as u64, Ordering::Relaxed);
    c.send_dropped
        .fetch_add((run.len() - sent) as u64, Ordering::Relaxed);
}

/// How long delivery waits for a WireGuard-bound socket to become writable before the rest of a
/// batch is dropped. A fresh socket is not known writable until the reactor has seen it (its
/// first frames were dropped before this wait existed); a full loopback buffer means WireGuard
/// is not reading, and waiting longer would hold up every other peer's frames.
const WRITABLE_WAIT: Duration = Duration::from_millis(5);

/// Writes `packets` (one datagram each) to the connected `sock` with `sendmmsg`; returns how
/// many the kernel took. What a full socket buffer refuses is dropped like any UDP datagram
/// (the caller counts it).
async fn send_batch(sock: &UdpSocket, packets: &[(PublicKey, Bytes)]) -> usize {
    let mut sent = 0;
    let mut waited = false;
    // A connected UDP socket reports an ICMP error of an *earlier* datagram (WireGuard was
    // restarting its socket) on the next call; that call sent nothing, so try once more.
    let mut refused_retry = true;
    while sent < packets.len() {
        match sendmmsg_once(sock, &packets[sent..]) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && refused_retry => {
                refused_retry = false;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && !waited => {
                waited = true;
                if !matches!(
                    tokio::time::timeout(WRITABLE_WAIT, sock.writable()).await,
                    Ok(Ok(()))
                ) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    sent
}

/// One `sendmmsg` of up to [`INBOUND_BATCH`] of `packets` on `sock`, through tokio's
/// readiness tracking. The message arrays live on the stack: this runs once per batch on the
/// relay → WireGuard hot path.
#[allow(unsafe_code)]
fn sendmmsg_once(sock: &UdpSocket, packets: &[(PublicKey, Bytes)]) -> std::io::Result<usize> {
    let packets = &packets[..packets.len().min(INBOUND_BATCH)];
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is a valid value (null
    // buffers, no address, no control data).
    let mut iovs: [libc::iovec; INBOUND_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; INBOUND_BATCH] = unsafe { std::mem::zeroed() };
    for ((iov, msg), (_, p)) in iovs.iter_mut().zip(msgs.iter_mut()).zip(packets) {
        iov.iov_base = p.as_ptr() as *mut libc::c_void;
        iov.iov_len = p.len();
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    let fd = sock.as_raw_fd();
    sock.try_io(Interest::WRITABLE, || {
        // SAFETY: the first `packets.len()` entries of `msgs` point at `iovs`, which point
        // into `packets`' payloads; all of them outlive the call, and the kernel only reads
        // them.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                msgs.as_mut_ptr(),
                packets.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PublicKey {
        PublicKey([b; 32])
    }

    #[test]
    fn runs_group_consecutive_frames_of_one_source() {
        let f = |k: u8| (key(k), Bytes::from_static(b"x"));
        let batch = vec![f(1), f(1), f(2), f(1), f(3), f(3), f(3)];
        let runs: Vec<(u8, usize)> = same_source_runs(&batch)
            .map(|r| (r[0].0.0[0], r.len()))
            .collect();
        assert_eq!(runs, vec![(1, 2), (2, 1), (1, 1), (3, 3)]);
        assert_eq!(same_source_runs(&[]).count(), 0);
    }

    #[tokio::test]
    async fn send_batch_delivers_every_datagram_in_order_and_intact() {
        // A fresh socket, as for a relayed peer's first frame: tokio does not know it is
        // writable yet, and a plain `try_send` dropped this batch whole.
        let rx = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind receiver");
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        tx.connect(rx.local_addr().expect("addr"))
            .await
            .expect("connect");
        // Sizes from a handshake response to a full 1420-MTU data packet and beyond.
        let packets: Vec<(PublicKey, Bytes)> = (0..INBOUND_BATCH)
            .map(|i| {
                let len = [92, 148, 1452, 32, 4000][i % 5];
                (key(7), Bytes::from(vec![i as u8; len]))
            })
            .collect();
        assert_eq!(send_batch(&tx, &packets).await, packets.len());
        let mut buf = vec![0u8; 65_535];
        for (_, want) in &packets {
            let n = rx.recv(&mut buf).expect("datagram");
            assert_eq!(&buf[..n], &want[..]);
        }
    }

    #[tokio::test]
    async fn send_batch_to_a_closed_port_reports_what_was_not_sent() {
        let gone = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = gone.local_addr().expect("addr");
        drop(gone);
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        tx.connect(addr).await.expect("connect");
        let packets = vec![(key(1), Bytes::from_static(b"hello")); 3];
        // Nothing is pending on a fresh socket: all three go out (the ICMP errors come back
        // afterwards). Later calls see ECONNREFUSED, retry once, and never claim more than
        // offered.
        assert_eq!(send_batch(&tx, &packets).await, packets.len());
        for _ in 0..5 {
            assert!(send_batch(&tx, &packets).await <= packets.len());
        }
    }
}
