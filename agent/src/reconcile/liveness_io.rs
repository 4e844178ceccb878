//! The I/O half of [`crate::liveness`] and [`crate::rtt`]: one connected UDP socket per peer,
//! aimed at port 9 of the peer's mesh IP. The datagram travels through the tunnel; the peer's
//! kernel answers with ICMP port unreachable, which Linux reports on a connected socket as
//! `ECONNREFUSED`. A reader thread blocks on the socket and timestamps each answer when it
//! arrives (the agent's loop runs only every stats tick, far too coarse for a round trip).
//!
//! A thread rather than a Tokio task: a pending ICMP error makes the socket report only
//! error readiness (EPOLLERR), which Tokio's `recv` never wakes for, and Tokio keeps error
//! readiness set once seen, so waiting for it spins. The thread wakes once a second when idle
//! to notice that the socket was dropped.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Port 9 (discard): nothing listens there, so the kernel answers.
const PORT: u16 = 9;
/// Answers kept between two reads (a flood from something on port 9 cannot grow it).
const MAX_PENDING: usize = 64;
/// How often an idle reader checks whether its socket was dropped.
const READER_WAKE: Duration = Duration::from_secs(1);

type Answers = Arc<Mutex<Vec<Instant>>>;

/// What a send observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sent {
    pub at: Instant,
    /// The send itself reported an answer that was pending (its arrival time is unknown).
    pub answered_unknown_time: bool,
}

pub(super) struct LivenessSocket {
    local: IpAddr,
    ip: IpAddr,
    sock: UdpSocket,
    answers: Answers,
    stop: Arc<AtomicBool>,
}

impl Drop for LivenessSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl LivenessSocket {
    /// Bound to our own mesh IP, which must be on the interface already: `connect` fixes the
    /// source address from the route of the moment, and one chosen before the mesh routes
    /// exist (the LAN address) is outside the peer's AllowedIPs, so the peer drops every
    /// request and fast failover never arms.
    pub(super) fn open(local: IpAddr, ip: IpAddr) -> std::io::Result<Self> {
        let sock = UdpSocket::bind(SocketAddr::new(local, 0))?;
        sock.connect(SocketAddr::new(ip, PORT))?;
        sock.set_read_timeout(Some(READER_WAKE))?;
        let raw = sock.try_clone()?;
        let answers: Answers = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, st) = (answers.clone(), stop.clone());
        std::thread::Builder::new()
            .name("wk-liveness".into())
            .spawn(move || read_answers(&raw, &a, &st))?;
        Ok(Self {
            local,
            ip,
            sock,
            answers,
            stop,
        })
    }

    /// Whether this socket runs from `local` to `ip`.
    pub(super) fn is_for(&self, local: IpAddr, ip: IpAddr) -> bool {
        self.local == local && self.ip == ip
    }

    /// Arrival times of the answers since the last call.
    pub(super) fn answers(&self) -> Vec<Instant> {
        let mut a = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *a)
    }

    /// Sends one request (a UDP send does not block for long: no flow control).
    pub(super) fn send(&self) -> Sent {
        let at = Instant::now();
        let answered_unknown_time = match self.sock.send(b"wirekube-liveness") {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                // The pending error was consumed instead of sending: send again.
                let _ = self.sock.send(b"wirekube-liveness");
                true
            }
            _ => false,
        };
        Sent {
            at,
            answered_unknown_time,
        }
    }
}

fn read_answers(sock: &UdpSocket, answers: &Answers, stop: &AtomicBool) {
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        match sock.recv(&mut buf) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                let now = Instant::now();
                let mut a = answers.lock().unwrap_or_else(|e| e.into_inner());
                if a.len() < MAX_PENDING {
                    a.push(now);
                }
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => {
                // Not expected on a connected UDP socket (host unreachable, say, while the
                // route is missing): go on after a pause rather than spin.
                tracing::debug!(error = %e, "liveness socket");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loopback kernel answers port 9 like a peer's does (and does not rate-limit it):
    /// each request gets one timestamped answer, after its send.
    #[tokio::test]
    async fn answers_are_timestamped_on_arrival() {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let s = LivenessSocket::open(lo, lo).expect("open");
        for _ in 0..3 {
            let sent = s.send();
            assert!(!sent.answered_unknown_time);
            let deadline = Instant::now() + Duration::from_secs(5);
            let got = loop {
                let a = s.answers();
                if !a.is_empty() || Instant::now() > deadline {
                    break a;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            assert_eq!(got.len(), 1, "one answer per request");
            assert!(got[0] >= sent.at);
            assert!(
                got[0] - sent.at < Duration::from_secs(1),
                "{:?}",
                got[0] - sent.at
            );
        }
    }
}
