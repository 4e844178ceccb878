//! Sans-IO NAT classification from STUN results (RFC 4787 vocabulary, RFC 5780 tests).
//!
//! Inputs are what the I/O layer measured: the local addresses, the mapped address that each
//! STUN server address reported for *one* local port (the mapping test), and the outcome of
//! the CHANGE-REQUEST filtering tests run from a *fresh* local port (docs/lab-findings.md §3.2: a port
//! that already talked to the alternate address would have opened the filter for it).

use std::net::{IpAddr, SocketAddr};

use wirekube_crds::NatType;

/// Outcome of one CHANGE-REQUEST probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Probe {
    /// The response sent from the other address/port arrived.
    Received,
    /// Nothing arrived (after retransmits).
    NotReceived,
    /// The server answered with an error (e.g. 420: it has no alternate IP) or lacks
    /// RFC 5780 support, so the test says nothing about the NAT.
    Unsupported,
    #[default]
    NotRun,
}

/// One mapping-test result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappingResult {
    pub server: SocketAddr,
    /// XOR-MAPPED-ADDRESS, or `None` when the server did not answer.
    pub mapped: Option<SocketAddr>,
}

/// Everything the classifier needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassifierInput {
    /// Addresses on local interfaces (to recognise "open": the mapped IP is ours).
    pub local_ips: Vec<IpAddr>,
    /// The node's `ExternalIP`s as its cloud reports them (the spec's `externalIPs`), to
    /// recognise a 1:1 NAT: STUN alone cannot tell an elastic IP from a port-preserving full
    /// cone, the cloud's word that the address belongs to this node can.
    pub external_ips: Vec<IpAddr>,
    /// The local port the mapping test ran from (to see whether the NAT preserved it).
    pub local_port: Option<u16>,
    /// Results from one local port towards ≥ 2 server addresses.
    pub mapping: Vec<MappingResult>,
    /// Response from the other IP *and* port (endpoint-independent filtering test).
    pub change_ip_port: Probe,
    /// Response from the same IP, other port (address-dependent filtering test).
    pub change_port: Probe,
}

/// What the classifier concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    pub nat_type: NatType,
    pub public_ip: Option<IpAddr>,
    /// Server-reflexive candidate of the probed local port (first answer). Reported even for
    /// symmetric NATs, where it only tells the public IP: the port is per-destination.
    pub srflx: Option<SocketAddr>,
    /// Human-readable explanation, for logs and status messages.
    pub detail: String,
}

/// Classifies a NAT. Conservative where evidence is missing: a cone whose filtering could not
/// be tested is reported port-restricted (the most restrictive cone), so the planner never
/// plans a direct path that needs more than what was proven.
pub fn classify(input: &ClassifierInput) -> Classification {
    let answered: Vec<&MappingResult> = input
        .mapping
        .iter()
        .filter(|m| m.mapped.is_some())
        .collect();
    let Some(first) = answered.first().and_then(|m| m.mapped) else {
        return Classification {
            nat_type: NatType::UdpBlocked,
            public_ip: None,
            srflx: None,
            detail: format!(
                "no STUN answer from {} server address(es)",
                input.mapping.len()
            ),
        };
    };
    let base = |nat_type, detail: String| Classification {
        nat_type,
        public_ip: Some(first.ip()),
        srflx: Some(first),
        detail,
    };
    if input.local_ips.contains(&first.ip()) {
        return base(
            NatType::Open,
            format!("mapped address {first} is on a local interface"),
        );
    }
    if let Some(other) = answered
        .iter()
        .filter_map(|m| m.mapped)
        .find(|m| *m != first)
    {
        // Endpoint-dependent mapping (address- or port-dependent): the public port a peer
        // sees cannot be predicted from STUN.
        return base(
            NatType::Symmetric,
            format!("mapping differs per destination ({first} vs {other})"),
        );
    }
    if answered.len() < 2 {
        return base(
            NatType::Unknown,
            format!(
                "only {} of {} STUN server addresses answered; mapping behaviour unknown",
                answered.len(),
                input.mapping.len()
            ),
        );
    }
    if is_one_to_one(input, first) {
        return base(
            NatType::OneToOne,
            format!(
                "1:1 NAT: mapped address {first} is an ExternalIP of this node, port preserved, endpoint-independent filtering"
            ),
        );
    }
    // Endpoint-independent mapping: a cone. Filtering decides which one. Behind two NATs (a
    // home router behind a carrier-grade NAT) the probes cross both, so what is measured is
    // the stricter layer's filtering, which is the one that decides what gets in.
    match (input.change_ip_port, input.change_port) {
        (Probe::Received, _) => base(
            NatType::FullCone,
            "endpoint-independent mapping and filtering".into(),
        ),
        (_, Probe::Received) => {
            let why = if input.change_ip_port == Probe::NotReceived {
                "answer from the other port arrived, from the other IP did not"
            } else {
                // No alternate IP on the server: full cone cannot be told apart; say the
                // weaker type (the planner treats both alike towards symmetric peers).
                "answer from the other port arrived; other-IP test unavailable"
            };
            base(NatType::AddressRestricted, why.into())
        }
        (_, Probe::NotReceived) => base(
            NatType::PortRestricted,
            "endpoint-independent mapping, address-and-port-dependent filtering".into(),
        ),
        (_, Probe::Unsupported | Probe::NotRun) => base(
            NatType::PortRestricted,
            "endpoint-independent mapping; filtering untested (server lacks CHANGE-REQUEST), assuming port-restricted".into(),
        ),
    }
}

/// A 1:1 NAT (a cloud's elastic IP) forwards every port of one public address to one node:
/// the mapping lands on an address the cloud says is this node's, keeps the port, and admits
/// packets from an address and port never contacted. Any of the three missing means a NAT
/// that keeps per-flow state, which the cone rules describe (conservatively).
fn is_one_to_one(input: &ClassifierInput, mapped: SocketAddr) -> bool {
    input.external_ips.contains(&mapped.ip())
        && input.local_port == Some(mapped.port())
        && input.change_ip_port == Probe::Received
}

#[cfg(test)]
mod tests {
    use super::*;
    use Probe::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const A: &str = "198.18.0.51:3478";
    const B: &str = "198.18.0.52:3478";
    const C: &str = "198.18.0.52:3479";

    fn input(mapped: [Option<&str>; 3], cip: Probe, cp: Probe) -> ClassifierInput {
        ClassifierInput {
            local_ips: vec!["10.1.0.11".parse().unwrap(), "127.0.0.1".parse().unwrap()],
            external_ips: Vec::new(),
            local_port: Some(40000),
            mapping: [A, B, C]
                .iter()
                .zip(mapped)
                .map(|(s, m)| MappingResult {
                    server: sa(s),
                    mapped: m.map(sa),
                })
                .collect(),
            change_ip_port: cip,
            change_port: cp,
        }
    }

    /// The node's cloud reports the mapped IP as its ExternalIP.
    fn elastic(mut i: ClassifierInput) -> ClassifierInput {
        i.external_ips = vec!["198.18.0.31".parse().unwrap()];
        i
    }

    /// One row per NAT type (and per way of reaching it).
    #[test]
    fn table() {
        let pub_ = Some("198.18.0.31:40000");
        let rows: Vec<(&str, ClassifierInput, NatType)> = vec![
            (
                "open: mapped IP is local",
                ClassifierInput {
                    local_ips: vec!["198.18.0.41".parse().unwrap()],
                    ..input([Some("198.18.0.41:40000"); 3], Received, Received)
                },
                NatType::Open,
            ),
            (
                "open even with a filtering firewall",
                ClassifierInput {
                    local_ips: vec!["198.18.0.41".parse().unwrap()],
                    ..input([Some("198.18.0.41:40000"); 3], NotReceived, NotReceived)
                },
                NatType::Open,
            ),
            (
                "full cone",
                input([pub_; 3], Received, Received),
                NatType::FullCone,
            ),
            (
                "address-restricted",
                input([pub_; 3], NotReceived, Received),
                NatType::AddressRestricted,
            ),
            (
                "address-restricted, server without alternate IP",
                input([pub_; 3], Unsupported, Received),
                NatType::AddressRestricted,
            ),
            (
                "port-restricted",
                input([pub_; 3], NotReceived, NotReceived),
                NatType::PortRestricted,
            ),
            (
                "cone with untestable filtering is assumed port-restricted",
                input([pub_; 3], NotRun, Unsupported),
                NatType::PortRestricted,
            ),
            (
                "symmetric: port differs",
                input(
                    [
                        Some("198.18.0.11:52078"),
                        Some("198.18.0.11:6928"),
                        Some("198.18.0.11:27939"),
                    ],
                    NotReceived,
                    NotReceived,
                ),
                NatType::Symmetric,
            ),
            (
                "symmetric: only the third destination differs",
                input(
                    [
                        Some("198.18.0.11:5000"),
                        Some("198.18.0.11:5000"),
                        Some("198.18.0.11:5001"),
                    ],
                    NotReceived,
                    NotReceived,
                ),
                NatType::Symmetric,
            ),
            (
                "symmetric: public IP differs (multi-IP NAT pool)",
                input(
                    [Some("198.18.0.11:5000"), Some("198.18.0.12:5000"), None],
                    NotRun,
                    NotRun,
                ),
                NatType::Symmetric,
            ),
            (
                "symmetric even if a lost answer hides a server",
                input(
                    [Some("198.18.0.11:1"), None, Some("198.18.0.11:2")],
                    NotRun,
                    NotRun,
                ),
                NatType::Symmetric,
            ),
            (
                "1:1 NAT: ExternalIP, port preserved, endpoint-independent filtering",
                elastic(input([pub_; 3], Received, Received)),
                NatType::OneToOne,
            ),
            (
                "ExternalIP but the port was not preserved: a full cone in front of it",
                elastic(ClassifierInput {
                    local_port: Some(51820),
                    ..input([pub_; 3], Received, Received)
                }),
                NatType::FullCone,
            ),
            (
                "port-preserving full cone without the cloud's word: not 1:1",
                input([pub_; 3], Received, Received),
                NatType::FullCone,
            ),
            (
                "ExternalIP, port preserved, filtered (a security group): a cone",
                elastic(input([pub_; 3], NotReceived, Received)),
                NatType::AddressRestricted,
            ),
            (
                "ExternalIP but endpoint-dependent mapping: symmetric",
                elastic(input(
                    [pub_, Some("198.18.0.31:40001"), None],
                    Received,
                    Received,
                )),
                NatType::Symmetric,
            ),
            (
                "double NAT: full cone behind an address-restricted CGNAT",
                input([pub_; 3], NotReceived, Received),
                NatType::AddressRestricted,
            ),
            (
                "double NAT: full cone behind a port-restricted CGNAT",
                input([pub_; 3], NotReceived, NotReceived),
                NatType::PortRestricted,
            ),
            (
                "udp blocked",
                input([None; 3], NotRun, NotRun),
                NatType::UdpBlocked,
            ),
            (
                "single answer: unknown mapping",
                input([pub_, None, None], Received, Received),
                NatType::Unknown,
            ),
        ];
        for (name, inp, want) in rows {
            let got = classify(&inp);
            assert_eq!(got.nat_type, want, "{name}: {}", got.detail);
            if want == NatType::UdpBlocked {
                assert_eq!(got.public_ip, None, "{name}");
                assert_eq!(got.srflx, None, "{name}");
            } else {
                let first = inp.mapping.iter().find_map(|m| m.mapped).unwrap();
                assert_eq!(got.srflx, Some(first), "{name}");
                assert_eq!(got.public_ip, Some(first.ip()), "{name}");
            }
        }
    }

    #[test]
    fn empty_input_is_udp_blocked_not_a_panic() {
        let got = classify(&ClassifierInput::default());
        assert_eq!(got.nat_type, NatType::UdpBlocked);
    }
}
