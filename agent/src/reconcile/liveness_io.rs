//! The I/O half of [`crate::liveness`]: one connected UDP socket per peer, aimed at port 9 of
//! the peer's mesh IP. The datagram travels through the tunnel; the peer's kernel answers with
//! ICMP port unreachable, which Linux reports on a connected socket as `ECONNREFUSED`.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// Port 9 (discard): nothing listens there, so the kernel answers.
const PORT: u16 = 9;

pub(super) struct LivenessSocket {
    local: IpAddr,
    ip: IpAddr,
    sock: UdpSocket,
}

impl LivenessSocket {
    /// Bound to our own mesh IP, which must be on the interface already: `connect` fixes the
    /// source address from the route of the moment, and one chosen before the mesh routes
    /// exist (the LAN address) is outside the peer's AllowedIPs, so the peer drops every
    /// request and fast failover never arms.
    pub(super) fn open(local: IpAddr, ip: IpAddr) -> std::io::Result<Self> {
        let sock = UdpSocket::bind(SocketAddr::new(local, 0))?;
        sock.connect(SocketAddr::new(ip, PORT))?;
        sock.set_nonblocking(true)?;
        Ok(Self { local, ip, sock })
    }

    /// Whether this socket runs from `local` to `ip`.
    pub(super) fn is_for(&self, local: IpAddr, ip: IpAddr) -> bool {
        self.local == local && self.ip == ip
    }

    /// Whether an answer arrived since the last call (drains what is pending).
    pub(super) fn answered(&self) -> bool {
        let mut buf = [0u8; 64];
        let mut any = false;
        // Bounded: a peer that does run something on port 9 and floods us cannot keep us here.
        for _ in 0..16 {
            match self.sock.recv(&mut buf) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => any = true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        any
    }

    /// Sends one request; true when the send itself reported an answer that was pending.
    pub(super) fn send(&self) -> bool {
        match self.sock.send(b"wirekube-liveness") {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                // The pending error was consumed instead of sending: send again.
                let _ = self.sock.send(b"wirekube-liveness");
                true
            }
            _ => false,
        }
    }
}
