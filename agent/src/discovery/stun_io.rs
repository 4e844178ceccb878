//! Thin STUN I/O: Binding requests (optionally with CHANGE-REQUEST) over a tokio UDP socket,
//! with retransmissions, and the two measurement rounds the classifier needs.
//!
//! Several transactions run concurrently on one socket and are told apart by transaction ID,
//! not by source address: a CHANGE-REQUEST answer legitimately comes from another address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use stun_rs::attributes::discovery::{ChangeRequest, ChangeRequestFlags, OtherAddress};
use stun_rs::attributes::stun::{ErrorCode, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder, TransactionId,
};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::classifier::{MappingResult, Probe};

#[derive(Debug, thiserror::Error)]
pub enum StunIoError {
    #[error("bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("STUN socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("encode STUN request: {0}")]
    Encode(String),
}

/// Which CHANGE-REQUEST flags to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    None,
    Port,
    IpAndPort,
}

/// What one transaction produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Mapped {
        mapped: SocketAddr,
        /// The responder's OTHER-ADDRESS (RFC 5780), for an extra mapping destination.
        other: Option<SocketAddr>,
        /// Where the answer actually came from.
        from: SocketAddr,
    },
    /// An error response (e.g. 420 when the server cannot change IP).
    Error(u16),
    Timeout,
}

/// Retransmission schedule (RFC 8489 §6.2.1 style, shortened: discovery must not hold up
/// the agent's start for long when UDP is blocked).
#[derive(Clone, Copy, Debug)]
pub struct Retransmit {
    /// First retransmission timeout, doubled each time up to `max_rto`.
    pub rto: Duration,
    pub max_rto: Duration,
    /// Total sends per transaction.
    pub attempts: u32,
}

impl Default for Retransmit {
    fn default() -> Self {
        // 0.25 + 0.5 + 1 + 1 = 2.75 s worst case per round.
        Self {
            rto: Duration::from_millis(250),
            max_rto: Duration::from_secs(1),
            attempts: 4,
        }
    }
}

impl Retransmit {
    /// The schedule for a request to a server whose round-trip time is known (it answered a
    /// first transmission in this round): a first timeout of twice that time (at least
    /// [`RTT_RTO_MIN`], at most the default's longest), doubled once, three sends, so silence
    /// is concluded after five timeouts. The filtering tests wait for answers that a
    /// restricting NAT never lets through; with the default schedule every restricted or
    /// symmetric node spent 2.75 s of its start-up on that silence, now 0.5 s when the server
    /// is within 50 ms (docs/agent.md, "Discovery timing").
    pub fn after_rtt(rtt: Duration) -> Self {
        let base = Self::default();
        let rto = (rtt * 2).clamp(RTT_RTO_MIN, base.max_rto);
        Self {
            rto,
            max_rto: rto * 2,
            attempts: 3,
        }
    }

    /// The timeouts of an unanswered request, one per send.
    fn timeouts(&self) -> impl Iterator<Item = Duration> {
        let max = self.max_rto;
        std::iter::successors(Some(self.rto), move |r| Some((*r * 2).min(max)))
            .take(self.attempts.max(1) as usize)
    }

    /// When the last send of an unanswered request goes out, after the first.
    pub fn last_send(&self) -> Duration {
        self.timeouts()
            .take(self.attempts.max(1) as usize - 1)
            .sum()
    }

    /// How long a request that is never answered is waited for.
    pub fn silence(&self) -> Duration {
        self.timeouts().sum()
    }
}

/// Shortest first retransmission timeout of [`Retransmit::after_rtt`]: a loaded node (or
/// relay) answers a few tens of milliseconds late without that meaning loss.
pub const RTT_RTO_MIN: Duration = Duration::from_millis(100);

fn encode_request(tid: TransactionId, change: Change) -> Result<Vec<u8>, StunIoError> {
    let mut b = StunMessageBuilder::new(BINDING, MessageClass::Request).with_transaction_id(tid);
    match change {
        Change::None => {}
        Change::Port => {
            b = b.with_attribute(ChangeRequest::new(Some(
                ChangeRequestFlags::ChangePort.into(),
            )))
        }
        Change::IpAndPort => {
            b = b.with_attribute(ChangeRequest::new(Some(
                ChangeRequestFlags::ChangeIp | ChangeRequestFlags::ChangePort,
            )))
        }
    }
    let msg = b.build();
    let mut buf = [0u8; 128];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &msg)
        .map_err(|e| StunIoError::Encode(format!("{e:?}")))?;
    Ok(buf[..n].to_vec())
}

/// Parses a response; `None` for anything that is not a Binding response.
fn decode_response(buf: &[u8], from: SocketAddr) -> Option<(TransactionId, Outcome)> {
    let (msg, _) = MessageDecoderBuilder::default().build().decode(buf).ok()?;
    if msg.method() != BINDING {
        return None;
    }
    let tid = *msg.transaction_id();
    match msg.class() {
        MessageClass::SuccessResponse => {
            let mapped = *msg
                .get::<XorMappedAddress>()?
                .as_xor_mapped_address()
                .ok()?
                .socket_address();
            let other = msg
                .get::<OtherAddress>()
                .and_then(|a| a.as_other_address().ok())
                .map(|a| *a.socket_address());
            Some((
                tid,
                Outcome::Mapped {
                    mapped,
                    other,
                    from,
                },
            ))
        }
        MessageClass::ErrorResponse => {
            let code = msg
                .get::<ErrorCode>()
                .and_then(|a| a.as_error_code().ok())
                .map(|e| e.error_code().error_code())
                .unwrap_or(0);
            Some((tid, Outcome::Error(code)))
        }
        _ => None,
    }
}

/// Runs `reqs` concurrently on `sock`, retransmitting unanswered ones, and returns one
/// outcome per request (same order).
pub async fn transact(
    sock: &UdpSocket,
    reqs: &[(SocketAddr, Change)],
    rt: Retransmit,
) -> Result<Vec<Outcome>, StunIoError> {
    Ok(transact_timed(sock, reqs, rt)
        .await?
        .into_iter()
        .map(|(o, _)| o)
        .collect())
}

/// [`transact`], with each answer's round-trip time when it answered the first transmission
/// (after a retransmission the answer cannot be matched to one send: Karn's rule).
pub async fn transact_timed(
    sock: &UdpSocket,
    reqs: &[(SocketAddr, Change)],
    rt: Retransmit,
) -> Result<Vec<(Outcome, Option<Duration>)>, StunIoError> {
    let mut pending: Vec<(TransactionId, Vec<u8>)> = Vec::with_capacity(reqs.len());
    for (_, change) in reqs {
        let tid = TransactionId::default();
        pending.push((tid, encode_request(tid, *change)?));
    }
    let mut out = vec![(Outcome::Timeout, None); reqs.len()];
    let mut done = vec![false; reqs.len()];
    let mut buf = [0u8; 1500];
    let first_send = Instant::now();
    for (attempt, rto) in rt.timeouts().enumerate() {
        for (i, (server, _)) in reqs.iter().enumerate() {
            if !done[i] {
                // A send error (e.g. no route, ICMP unreachable) is the same as silence.
                if let Err(e) = sock.send_to(&pending[i].1, server).await {
                    tracing::debug!(%server, error = %e, "STUN send failed");
                }
            }
        }
        let deadline = Instant::now() + rto;
        while !done.iter().all(|d| *d) {
            let r = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
            let (n, from) = match r {
                Err(_) => break,
                Ok(Ok(x)) => x,
                // ICMP port unreachable surfaces as a per-datagram error on Linux.
                Ok(Err(_)) => continue,
            };
            if let Some((tid, outcome)) = decode_response(&buf[..n], from)
                && let Some(i) = pending.iter().position(|(t, _)| *t == tid)
                && !done[i]
            {
                done[i] = true;
                out[i] = (outcome, (attempt == 0).then(|| first_send.elapsed()));
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
    }
    Ok(out)
}

/// Binds an IPv4 UDP socket on `port` (0 = ephemeral).
pub async fn bind(port: u16) -> Result<UdpSocket, StunIoError> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    UdpSocket::bind(addr)
        .await
        .map_err(|source| StunIoError::Bind { addr, source })
}

/// The mapping test: from `sock`, ask every server for the mapping; when the first answer
/// names an OTHER-ADDRESS not in the list, ask it too (a third, different-IP destination
/// tells address-dependent mapping from endpoint-independent).
pub async fn mapping_test(
    sock: &UdpSocket,
    servers: &[SocketAddr],
    rt: Retransmit,
) -> Result<Mapping, StunIoError> {
    let reqs: Vec<_> = servers.iter().map(|s| (*s, Change::None)).collect();
    let timed = transact_timed(sock, &reqs, rt).await?;
    let rtts: Vec<(SocketAddr, Duration)> = servers
        .iter()
        .zip(&timed)
        .filter_map(|(s, (_, rtt))| Some((*s, (*rtt)?)))
        .collect();
    let outcomes: Vec<Outcome> = timed.into_iter().map(|(o, _)| o).collect();
    let mut results: Vec<MappingResult> = servers
        .iter()
        .zip(&outcomes)
        .map(|(s, o)| MappingResult {
            server: *s,
            mapped: match o {
                Outcome::Mapped { mapped, .. } => Some(*mapped),
                _ => None,
            },
        })
        .collect();
    let other = outcomes.iter().find_map(|o| match o {
        Outcome::Mapped {
            other: Some(other), ..
        } if !servers.contains(other) && !other.ip().is_unspecified() => Some(*other),
        _ => None,
    });
    if let Some(other) = other {
        // The other address is the same server's second interface: as near as the first.
        let rt = (rtts.iter().map(|(_, d)| *d).min()).map_or(rt, Retransmit::after_rtt);
        let o = transact(sock, &[(other, Change::None)], rt).await?;
        if let Outcome::Mapped { mapped, .. } = o[0] {
            results.push(MappingResult {
                server: other,
                mapped: Some(mapped),
            });
        }
    }
    Ok(Mapping { results, rtts })
}

/// The mapping test's answers, and the round-trip time of each server that answered its first
/// request (`netcheck` shows them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub results: Vec<MappingResult>,
    pub rtts: Vec<(SocketAddr, Duration)>,
}

/// The RFC 5780 filtering tests from a fresh socket towards `server`: (change IP+port,
/// change port). Both go to the same server address, so the only hole in the NAT's filter is
/// towards that address; which answers get through shows the filtering.
pub async fn filtering_test(
    server: SocketAddr,
    rt: Retransmit,
) -> Result<(Probe, Probe), StunIoError> {
    let sock = bind(0).await?;
    let o = transact(
        &sock,
        &[(server, Change::IpAndPort), (server, Change::Port)],
        rt,
    )
    .await?;
    let probe = |o: Outcome, want_other_ip: bool| match o {
        Outcome::Mapped { from, .. } => {
            // A server that ignores CHANGE-REQUEST answers from the address we sent to;
            // counting that as "received" would fake endpoint-independent filtering.
            let same_ip = from.ip() == server.ip();
            if from == server || (want_other_ip && same_ip) {
                Probe::Unsupported
            } else {
                Probe::Received
            }
        }
        Outcome::Error(_) => Probe::Unsupported,
        Outcome::Timeout => Probe::NotReceived,
    };
    Ok((probe(o[0], true), probe(o[1], false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny RFC 5780 responder on loopback: answers from `alt` when CHANGE-REQUEST asks for
    /// it, or with 420 when `alt` is `None`.
    async fn responder(main: UdpSocket, alt: Option<UdpSocket>, ignore_change: bool) {
        let mut buf = [0u8; 1500];
        loop {
            let (n, src) = main.recv_from(&mut buf).await.unwrap();
            let (msg, _) = MessageDecoderBuilder::default()
                .build()
                .decode(&buf[..n])
                .unwrap();
            let change = msg
                .get::<ChangeRequest>()
                .and_then(|a| a.as_change_request().ok())
                .map(|c| !c.flags().is_empty())
                .unwrap_or(false);
            let tid = *msg.transaction_id();
            let (class, via_alt) = match (change && !ignore_change, &alt) {
                (true, None) => (MessageClass::ErrorResponse, false),
                (true, Some(_)) => (MessageClass::SuccessResponse, true),
                (false, _) => (MessageClass::SuccessResponse, false),
            };
            let mut b = StunMessageBuilder::new(BINDING, class).with_transaction_id(tid);
            if class == MessageClass::ErrorResponse {
                b = b.with_attribute(stun_rs::attributes::stun::ErrorCode::new(
                    stun_rs::ErrorCode::new(420, "Unknown Attribute").unwrap(),
                ));
            } else {
                b = b.with_attribute(XorMappedAddress::from(src));
            }
            let m = b.build();
            let mut out = [0u8; 256];
            let n = MessageEncoderBuilder::default()
                .build()
                .encode(&mut out, &m)
                .unwrap();
            let s = if via_alt {
                alt.as_ref().unwrap()
            } else {
                &main
            };
            s.send_to(&out[..n], src).await.unwrap();
        }
    }

    fn fast() -> Retransmit {
        Retransmit {
            rto: Duration::from_millis(50),
            max_rto: Duration::from_millis(100),
            attempts: 3,
        }
    }

    /// A responder with an alternate socket on loopback; returns its main address.
    async fn spawn_responder_with_alt() -> SocketAddr {
        let main = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let alt = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = main.local_addr().unwrap();
        tokio::spawn(responder(main, Some(alt), false));
        server
    }

    #[tokio::test]
    async fn mapping_and_filtering_on_loopback() {
        let server = spawn_responder_with_alt().await;
        let sock = bind(0).await.unwrap();
        let port = sock.local_addr().unwrap().port();
        let m = mapping_test(&sock, &[server], fast()).await.unwrap();
        assert_eq!(m.results[0].mapped.unwrap().port(), port);
        // Answered at once on loopback: one round-trip time, well under the first timeout.
        assert_eq!(m.rtts.len(), 1, "{m:?}");
        assert_eq!(m.rtts[0].0, server);
        assert!(m.rtts[0].1 < fast().rto, "{m:?}");
        // No NAT on loopback: both answers get through. The alternate is on the same IP, so
        // the change-IP probe is "unsupported" rather than a fake "received".
        let (cip, cp) = filtering_test(server, fast()).await.unwrap();
        assert_eq!(cip, Probe::Unsupported);
        assert_eq!(cp, Probe::Received);
    }

    #[tokio::test]
    async fn error_and_ignored_change_request_are_unsupported() {
        let main = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = main.local_addr().unwrap();
        tokio::spawn(responder(main, None, false));
        assert_eq!(
            filtering_test(server, fast()).await.unwrap(),
            (Probe::Unsupported, Probe::Unsupported)
        );
        let main = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = main.local_addr().unwrap();
        tokio::spawn(responder(main, None, true));
        assert_eq!(
            filtering_test(server, fast()).await.unwrap(),
            (Probe::Unsupported, Probe::Unsupported)
        );
    }

    #[tokio::test]
    async fn silence_is_a_timeout_not_an_error() {
        // A bound socket that never answers.
        let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = dead.local_addr().unwrap();
        let sock = bind(0).await.unwrap();
        let t = std::time::Instant::now();
        let m = mapping_test(&sock, &[server], fast()).await.unwrap();
        assert_eq!(m.results[0].mapped, None);
        assert!(m.rtts.is_empty(), "{m:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
        let (cip, cp) = filtering_test(server, fast()).await.unwrap();
        assert_eq!((cip, cp), (Probe::NotReceived, Probe::NotReceived));
    }

    #[test]
    fn schedule_after_a_measured_rtt() {
        let ms = Duration::from_millis;
        // (round-trip time, first timeout, longest timeout, silence concluded after)
        let table = [
            (ms(0), ms(100), ms(200), ms(500)),
            (ms(20), ms(100), ms(200), ms(500)),
            (ms(50), ms(100), ms(200), ms(500)),
            (ms(80), ms(160), ms(320), ms(800)),
            (ms(300), ms(600), ms(1200), ms(3000)),
            // A server a second away: the default's longest timeout is the cap.
            (ms(1500), ms(1000), ms(2000), ms(5000)),
        ];
        for (rtt, rto, max_rto, silence) in table {
            let r = Retransmit::after_rtt(rtt);
            assert_eq!((r.rto, r.max_rto, r.attempts), (rto, max_rto, 3), "{rtt:?}");
            assert_eq!(r.silence(), silence, "{rtt:?}");
        }
        assert_eq!(Retransmit::default().silence(), ms(2750));
    }

    #[tokio::test]
    async fn filtering_after_rtt_ends_early_and_still_hears_answers() {
        // A restricting NAT seen from the agent: the change-IP answer never comes. The
        // RTT-based schedule concludes that in half a second instead of 2.75 s, and the
        // change-port answer (sent from the alternate port) is still received.
        let server = spawn_responder_with_alt().await;
        let sock = bind(0).await.unwrap();
        let m = mapping_test(&sock, &[server], Retransmit::default())
            .await
            .unwrap();
        let rt = Retransmit::after_rtt(m.rtts[0].1);
        let (cip, cp) = filtering_test(server, rt).await.unwrap();
        assert_eq!((cip, cp), (Probe::Unsupported, Probe::Received));
        let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t = std::time::Instant::now();
        let (cip, cp) = filtering_test(dead.local_addr().unwrap(), rt)
            .await
            .unwrap();
        assert_eq!((cip, cp), (Probe::NotReceived, Probe::NotReceived));
        let waited = t.elapsed();
        assert!(
            waited >= rt.silence() && waited < Retransmit::default().silence(),
            "{waited:?}"
        );
    }
}
