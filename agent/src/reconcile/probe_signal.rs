//! Probe announcements between the two agents of a fallen-back pair, so that they probe the
//! direct path together whatever their clocks say (docs/agent.md "Probe slots and clocks").
//!
//! An agent starting a probe of its own first sends one datagram to the peer's mesh IP on
//! [`PORT`], while WireGuard still sends to that peer through the relay: it arrives through
//! the tunnel (WireGuard's AllowedIPs authenticate the source address as the peer's) and the
//! peer starts its probe too (`PathState::peer_probing`).

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// UDP port on each node's mesh IP where announcements arrive.
pub(super) const PORT: u16 = 51821;

const MESSAGE: &[u8] = b"wirekube-probe-now";

pub(super) struct ProbeSignal {
    local: IpAddr,
    sock: UdpSocket,
}

impl ProbeSignal {
    /// Bound to our own mesh IP (which must be on the interface already), so announcements
    /// leave from an address inside our AllowedIPs at the peer.
    pub(super) fn open(local: IpAddr) -> std::io::Result<Self> {
        let sock = UdpSocket::bind(SocketAddr::new(local, PORT))?;
        sock.set_nonblocking(true)?;
        Ok(Self { local, sock })
    }

    pub(super) fn is_for(&self, local: IpAddr) -> bool {
        self.local == local
    }

    /// The source addresses of the announcements that arrived since the last call.
    pub(super) fn received(&self) -> Vec<IpAddr> {
        let mut buf = [0u8; 64];
        let mut from = Vec::new();
        // Bounded: a flood cannot keep the agent here.
        for _ in 0..64 {
            match self.sock.recv_from(&mut buf) {
                Ok((n, src)) if &buf[..n] == MESSAGE => {
                    if !from.contains(&src.ip()) {
                        from.push(src.ip());
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
        from
    }

    /// Tells `peer` that we start probing now.
    pub(super) fn announce(&self, peer: IpAddr) {
        if let Err(e) = self.sock.send_to(MESSAGE, SocketAddr::new(peer, PORT)) {
            tracing::debug!(%peer, error = %e, "probe announcement not sent");
        }
    }
}
