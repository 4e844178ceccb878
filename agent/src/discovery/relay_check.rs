//! The first round's UDP check against the relay's own host. A node that can only reach the
//! outside over TCP learned so only when its first discovery round had waited out every STUN
//! retransmission (2.4-2.75 s: nobody answers, so no round trip is known to shorten the
//! schedule), and in the NAT grid that wait was on the slowest pair's path in most start-ups
//! (docs/benchmarks.md, "Start-up per size"). Once the relay client has authenticated over
//! TCP, the round trip to the relay's host is bounded by that handshake; the relay process
//! also answers STUN on that host, so a check from a second socket to the round's servers
//! (one of them on the relay's host), scheduled by the handshake time, tells sooner whether
//! UDP gets out. Any answer changes nothing (the round goes on); silence from all of them
//! ends the round as `udp-blocked`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::classifier::{ClassifierInput, MappingResult, classify};
use super::stun_io::{self, Change, Outcome, Retransmit, StunIoError};
use super::{DiscoveryReport, rtt_text};

/// The servers to check: every server of the round (`servers`, as the spec lists them), when
/// one of them is on the relay's host (same IP as `relay_addr`, any port), so that the relay's
/// handshake bounds the round trip to at least one of them. The others (an RFC 5780 responder's
/// alternate address, another relay's host) are asked too: the check concludes only when all
/// stay silent, so one that answers keeps the round going. `None` when a server is given by
/// name (the round resolves it; the check does not guess), when the relay address is not an
/// IP literal (a name may resolve differently for TCP and UDP), or is one of this node's own
/// addresses (a relay reached through this node's own NodePort says nothing about the way out).
pub fn check_servers(
    servers: &[String],
    relay_addr: &str,
    local_ips: &[IpAddr],
) -> Option<Vec<SocketAddr>> {
    let relay = relay_addr.parse::<SocketAddr>().ok()?;
    if local_ips.contains(&relay.ip()) || relay.ip().is_loopback() {
        return None;
    }
    let mut out = Vec::with_capacity(servers.len());
    for s in servers {
        let a = s.parse::<SocketAddr>().ok()?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out.iter().any(|a| a.ip() == relay.ip()).then_some(out)
}

/// Shortest and longest first retransmission timeout of the check.
const RTO_MIN: Duration = Duration::from_millis(100);
const RTO_MAX: Duration = Duration::from_secs(1);

/// The check's schedule: a first timeout of twice the relay's handshake time (which already
/// holds a TCP round trip, two frame exchanges and the relay process's own latency: several
/// round trips), at least 100 ms and at most 1 s, doubled once, four sends like the default
/// round, so a lossy link is as unlikely to look blocked as before. Silence is concluded
/// after seven first timeouts: 0.7 s for a relay that authenticated within 50 ms.
pub fn check_schedule(handshake: Duration) -> Retransmit {
    let rto = (handshake * 2).clamp(RTO_MIN, RTO_MAX);
    Retransmit {
        rto,
        max_rto: rto * 2,
        attempts: 4,
    }
}

/// The round's report when the check stayed silent: what `discover` reports for a round in
/// which no server answered, with the evidence in the message.
pub fn silent_report(
    servers: &[SocketAddr],
    waited: Duration,
    handshake: Duration,
) -> DiscoveryReport {
    let input = ClassifierInput {
        mapping: (servers.iter())
            .map(|s| MappingResult {
                server: *s,
                mapped: None,
            })
            .collect(),
        ..ClassifierInput::default()
    };
    let list: Vec<String> = servers.iter().map(SocketAddr::to_string).collect();
    DiscoveryReport {
        classification: classify(&input),
        listen_port_srflx: None,
        stun_reachable: false,
        message: format!(
            "no answer from STUN server(s) {} in {} ms (one on the relay's host) while the \
             relay answered over TCP (authenticated in {:.1} ms): UDP blocked",
            list.join(", "),
            waited.as_millis(),
            handshake.as_secs_f64() * 1e3
        ),
    }
}

/// Sends one binding request to each of `servers` from a fresh ephemeral socket, on `rt`;
/// `Ok(Some(rtt text))` when any answered (an error response counts: UDP got through),
/// `Ok(None)` when all stayed silent.
pub async fn any_answer(
    servers: &[SocketAddr],
    rt: Retransmit,
) -> Result<Option<String>, StunIoError> {
    let sock = stun_io::bind(0).await?;
    let reqs: Vec<(SocketAddr, Change)> = servers.iter().map(|s| (*s, Change::None)).collect();
    let answers = stun_io::transact_timed(&sock, &reqs, rt).await?;
    let mut answered = false;
    let mut rtts = Vec::new();
    for (server, (outcome, rtt)) in servers.iter().zip(answers) {
        answered |= !matches!(outcome, Outcome::Timeout);
        rtts.extend(rtt.map(|d| (*server, d)));
    }
    Ok(answered.then(|| rtt_text(&rtts)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wirekube_crds::NatType;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    /// (case, servers, relay address, expected)
    type Row<'a> = (&'a str, &'a [String], &'a str, Option<Vec<SocketAddr>>);

    #[test]
    fn a_round_that_asks_the_relays_own_host_is_checked_whole() {
        let local: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap()];
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let relay_ports = strings(&["198.18.0.28:3478", "198.18.0.28:3479", "198.18.0.28:3478"]);
        let with_alternate = strings(&["198.18.0.28:3478", "198.18.0.29:3478"]);
        let elsewhere = strings(&["198.18.0.29:3478", "203.0.113.7:3478"]);
        let with_name = strings(&["198.18.0.28:3478", "stun.example.net:3478"]);
        let rows: Vec<Row<'_>> = vec![
            (
                "the relay's host, both ports (a duplicate once)",
                &relay_ports,
                "198.18.0.28:3478",
                Some(vec![sa("198.18.0.28:3478"), sa("198.18.0.28:3479")]),
            ),
            (
                "the relay's host and its alternate address: both asked",
                &with_alternate,
                "198.18.0.28:3478",
                Some(vec![sa("198.18.0.28:3478"), sa("198.18.0.29:3478")]),
            ),
            (
                "no server on the relay's host",
                &elsewhere,
                "198.18.0.28:3478",
                None,
            ),
            ("a server by name", &with_name, "198.18.0.28:3478", None),
            (
                "relay on a host without STUN",
                &relay_ports,
                "198.18.0.99:443",
                None,
            ),
            (
                "relay by name",
                &relay_ports,
                "relay.example.net:3478",
                None,
            ),
            ("relay on this node", &relay_ports, "10.0.0.5:30478", None),
            ("loopback relay", &relay_ports, "127.0.0.1:3478", None),
            (
                "garbage relay address",
                &relay_ports,
                "not an address",
                None,
            ),
            ("no servers", &[], "198.18.0.28:3478", None),
        ];
        for (case, servers, relay, want) in rows {
            assert_eq!(check_servers(servers, relay, &local), want, "{case}");
        }
    }

    #[test]
    fn the_schedule_follows_the_handshake_within_bounds() {
        let ms = Duration::from_millis;
        // (handshake, first timeout, silence concluded after)
        let rows = [
            (ms(0), ms(100), ms(700)),
            (ms(5), ms(100), ms(700)),
            (ms(50), ms(100), ms(700)),
            (ms(120), ms(240), ms(1680)),
            (ms(500), ms(1000), ms(7000)),
            (Duration::from_secs(30), ms(1000), ms(7000)),
        ];
        for (hs, rto, silence) in rows {
            let rt = check_schedule(hs);
            assert_eq!(rt.rto, rto, "{hs:?}");
            assert_eq!(rt.attempts, 4, "{hs:?}");
            assert_eq!(rt.silence(), silence, "{hs:?}");
        }
    }

    #[test]
    fn a_silent_check_reports_udp_blocked_with_its_evidence() {
        let servers: Vec<SocketAddr> = vec!["198.18.0.28:3478".parse().unwrap()];
        let r = silent_report(
            &servers,
            Duration::from_millis(712),
            Duration::from_millis(9),
        );
        assert_eq!(r.classification.nat_type, NatType::UdpBlocked);
        assert!(!r.stun_reachable);
        assert_eq!(r.listen_port_srflx, None);
        assert_eq!(r.classification.srflx, None);
        for part in ["198.18.0.28:3478", "712 ms", "9.0 ms", "UDP blocked"] {
            assert!(r.message.contains(part), "{part}: {}", r.message);
        }
    }

    fn fast() -> Retransmit {
        check_schedule(Duration::ZERO)
    }

    #[tokio::test]
    async fn silence_and_an_answer_on_loopback() {
        // A bound socket that never answers: silence after the schedule, not an error.
        let dead = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let silent = dead.local_addr().unwrap();
        assert_eq!(any_answer(&[silent], fast()).await.unwrap(), None);
        // A responder that answers its first request: one of two servers is enough.
        let responder = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = responder.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            let (n, from) = responder.recv_from(&mut buf).await.unwrap();
            responder
                .send_to(&binding_success(&buf[..n], from), from)
                .await
                .unwrap();
        });
        let got = any_answer(&[silent, server], fast()).await.unwrap();
        assert!(got.is_some_and(|rtt| rtt.contains(&server.to_string())));
    }

    /// A Binding success response to `request`, mapping `from`.
    fn binding_success(request: &[u8], from: SocketAddr) -> Vec<u8> {
        use stun_rs::attributes::stun::XorMappedAddress;
        use stun_rs::methods::BINDING;
        use stun_rs::{MessageClass, MessageDecoderBuilder, MessageEncoderBuilder};
        let (msg, _) = MessageDecoderBuilder::default()
            .build()
            .decode(request)
            .unwrap();
        let reply = stun_rs::StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(*msg.transaction_id())
            .with_attribute(XorMappedAddress::from(from))
            .build();
        let mut out = [0u8; 256];
        let n = MessageEncoderBuilder::default()
            .build()
            .encode(&mut out, &reply)
            .unwrap();
        out[..n].to_vec()
    }
}
