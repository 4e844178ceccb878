//! The I/O half of [`crate::liveness`]: one connected UDP socket per peer, aimed at port 9 of
//! the peer's mesh IP. The datagram travels through the tunnel; the peer's kernel answers with
//! ICMP port unreachable, which Linux reports on a connected socket as `ECONNREFUSED`.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// Port 9 (discard): nothing listens there, so the kernel answers.
const PORT: u16 = 9;

pub(super) struct LivenessSocket {
    ip: IpAddr,
    sock: UdpSocket,
}

impl LivenessSocket {
    pub(super) fn open(ip: IpAddr) -> std::io::Result<Self> {
        let any: IpAddr = match ip {
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let sock = UdpSocket::bind(SocketAddr::new(any, 0))?;
        sock.connect(SocketAddr::new(ip, PORT))?;
        sock.set_nonblocking(true)?;
        Ok(Self { ip, sock })
    }

    pub(super) fn ip(&self) -> IpAddr {
        self.ip
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
