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

use std::time::Duration;

use crate::uapi::PeerState;

/// Below this many seconds `last_handshake_time_sec` cannot be an epoch time of a real
/// handshake (it would be before 2001-09-09), so it is an age. boringtun-cli reports the
/// time *since* the handshake (cloudflare/boringtun#447); wireguard-go, the kernel and the
/// defguard fork report epoch seconds. An age this large (31 years) never occurs because
/// sessions expire after 3 minutes without rekeying.
const EPOCH_THRESHOLD_SECS: u64 = 1_000_000_000;

/// Converts the raw UAPI handshake fields into wall-clock time, accepting both meanings.
pub(crate) fn handshake_time(sec: u64, nsec: u32, now: SystemTime) -> Option<SystemTime> {
    if sec == 0 && nsec == 0 {
        return None;
    }
    let d = Duration::new(sec, nsec.min(999_999_999));
    if sec < EPOCH_THRESHOLD_SECS {
        Some(now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH))
    } else {
        Some(SystemTime::UNIX_EPOCH + d)
    }
}

impl PeerStats {
    pub(crate) fn from_state(p: &PeerState, now: SystemTime) -> Self {
        PeerStats {
            public_key: p.public_key,
            endpoint: p.endpoint,
            last_handshake: handshake_time(p.handshake_sec, p.handshake_nsec, now),
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::parse_get;

    const KEY_HEX: &str = "abababababababababababababababababababababababababababababababab";

    #[test]
    fn wireguard_go_reports_epoch() {
        let text = format!(
            "private_key={KEY_HEX}\nlisten_port=51820\npublic_key={KEY_HEX}\nendpoint=10.0.0.2:51820\nlast_handshake_time_sec=1764000000\nlast_handshake_time_nsec=250000000\ntx_bytes=1000\nrx_bytes=2000\npersistent_keepalive_interval=0\nallowed_ip=100.96.0.2/32\nprotocol_version=1\nerrno=0\n\n"
        );
        let (dev, _) = parse_get(&text).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1764000100);
        let s = PeerStats::from_state(&dev.peers[0], now);
        assert_eq!(
            s.last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1764000000, 250_000_000))
        );
        assert_eq!((s.rx_bytes, s.tx_bytes), (2000, 1000));
        assert_eq!(s.endpoint, Some("10.0.0.2:51820".parse().unwrap()));
    }

    #[test]
    fn boringtun_cli_reports_age() {
        // Captured shape of boringtun-cli 0.7.1 (docs/lab-findings.md §4.1, §9): own_public_key, age in sec.
        let text = format!(
            "own_public_key={KEY_HEX}\nprivate_key={KEY_HEX}\nlisten_port=51820\npublic_key={KEY_HEX}\nendpoint=10.0.0.2:51820\nlast_handshake_time_sec=8\nlast_handshake_time_nsec=500000000\nrx_bytes=92\ntx_bytes=148\npersistent_keepalive_interval=5\nallowed_ip=100.96.0.2/32\nerrno=0\n\n"
        );
        let (dev, _) = parse_get(&text).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1764000100);
        let s = PeerStats::from_state(&dev.peers[0], now);
        assert_eq!(
            s.last_handshake,
            Some(now - Duration::new(8, 500_000_000)),
            "an age of 8.5 s means 8.5 s before now"
        );
    }

    #[test]
    fn no_handshake_is_none() {
        assert_eq!(handshake_time(0, 0, SystemTime::now()), None);
    }
}
