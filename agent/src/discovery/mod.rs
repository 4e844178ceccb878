//! Endpoint and NAT discovery.
//!
//! * At start-up, **before the dataplane binds the WireGuard port**, the mapping test runs
//!   from that very port (docs/lab-findings.md §7.7), so the server-reflexive candidate is the public
//!   mapping of the WireGuard socket itself (not assumed to be `public-ip:listen-port`: NATs
//!   do not always preserve ports, §3.4).
//! * Afterwards WireGuard owns the port (kernel WireGuard cannot share its socket), so the
//!   periodic re-checks run from ephemeral ports. They re-measure the NAT *type* and the
//!   public IP, which are properties of the NAT; they cannot re-measure the *port* of the
//!   WireGuard mapping. The first srflx is kept while the public IP and a cone type stay the
//!   same, and dropped when the public IP changes (peer-reflexive endpoints then carry it).

pub mod candidates;
pub mod classifier;
pub mod schedule;
pub mod stun_io;

use std::net::SocketAddr;
use std::time::Duration;

use wirekube_crds::{NatType, WireKubePeerSpec};

pub use classifier::{Classification, ClassifierInput, MappingResult, Probe, classify};
pub use schedule::{
    FIRST_DISCOVERY_GRACE, FirstRound, RECHECK_MIN_GAP, RECHECK_WINDOW, RoundVerdict,
    after_first_round, judge_round, recheck_now,
};
pub use stun_io::Retransmit;

/// Default STUN ports of the relay's responder (primary, alternate).
pub const RELAY_STUN_PORTS: [u16; 2] = [3478, 3479];

/// The node's `ExternalIP`s from the spec (unparseable entries are ignored: they cannot match
/// a STUN mapping anyway).
pub fn external_ips(spec: &WireKubePeerSpec) -> Vec<std::net::IpAddr> {
    spec.external_ips
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// STUN server addresses to use: the spec's list, or the relay's responder on ports 3478 and
/// 3479 of every relay endpoint host.
pub fn stun_servers(spec: &WireKubePeerSpec) -> Vec<String> {
    if !spec.stun_servers.is_empty() {
        return spec.stun_servers.clone();
    }
    let mut out = Vec::new();
    for ep in &spec.relay_endpoints {
        let host = match ep.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h,
            _ => ep.as_str(),
        };
        for port in RELAY_STUN_PORTS {
            let s = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// The STUN round-trip times for the StunReachable message (`kubectl wirekube netcheck` shows
/// it): ` (RTT 198.51.100.7:3478 12 ms, ...)`, whole milliseconds (sub-millisecond answers read
/// `<1 ms`), so that a status only changes when the latency does by a millisecond or more.
pub fn rtt_text(rtts: &[(SocketAddr, Duration)]) -> String {
    if rtts.is_empty() {
        return String::new();
    }
    let each: Vec<String> = rtts
        .iter()
        .map(|(s, d)| match d.as_millis() {
            0 => format!("{s} <1 ms"),
            ms => format!("{s} {ms} ms"),
        })
        .collect();
    format!(" (RTT {})", each.join(", "))
}

/// Result of one discovery round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryReport {
    pub classification: Classification,
    /// The mapping of the WireGuard listen port, when the test could run from it.
    pub listen_port_srflx: Option<SocketAddr>,
    /// Whether any STUN server answered.
    pub stun_reachable: bool,
    /// Explanation for the StunReachable condition.
    pub message: String,
}

/// Resolves `host:port` strings to IPv4 socket addresses (the mesh is IPv4 for now), keeping
/// order and dropping duplicates. Unresolvable names are returned as errors for the message.
async fn resolve(servers: &[String]) -> (Vec<SocketAddr>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for s in servers {
        match tokio::net::lookup_host(s.as_str()).await {
            Ok(addrs) => {
                let v4 = addrs.into_iter().find(|a| a.is_ipv4());
                match v4 {
                    Some(a) if !out.contains(&a) => out.push(a),
                    Some(_) => {}
                    None => errors.push(format!("{s}: no IPv4 address")),
                }
            }
            Err(e) => errors.push(format!("{s}: {e}")),
        }
    }
    (out, errors)
}

/// Runs the mapping test (from `mapping_port` when it is free, else from an ephemeral port)
/// and the filtering tests, and classifies. Never fails: every problem becomes part of the
/// report (udp-blocked / unknown with a message).
pub async fn discover(
    servers: &[String],
    mapping_port: Option<u16>,
    local: Vec<candidates::LocalAddr>,
    external_ips: Vec<std::net::IpAddr>,
    rt: Retransmit,
) -> DiscoveryReport {
    let local_ips: Vec<std::net::IpAddr> = local.iter().map(|a| a.ip).collect();
    let (addrs, resolve_errors) = resolve(servers).await;
    let unknown = |message: String| DiscoveryReport {
        classification: Classification {
            nat_type: NatType::Unknown,
            public_ip: None,
            srflx: None,
            detail: message.clone(),
        },
        listen_port_srflx: None,
        stun_reachable: false,
        message,
    };
    if addrs.is_empty() {
        let msg = if servers.is_empty() {
            "no STUN servers: the spec lists none and no relay endpoint is published".to_string()
        } else {
            format!("no STUN server resolved: {}", resolve_errors.join("; "))
        };
        return unknown(msg);
    }
    // Bind the WireGuard port if it is still free (first start); otherwise any port.
    let (sock, from_listen_port) = match mapping_port {
        Some(p) => match stun_io::bind(p).await {
            Ok(s) => (Ok(s), true),
            Err(e) => {
                tracing::debug!(error = %e, "listen port busy; mapping test from an ephemeral port");
                (stun_io::bind(0).await, false)
            }
        },
        None => (stun_io::bind(0).await, false),
    };
    let sock = match sock {
        Ok(s) => s,
        Err(e) => return unknown(format!("cannot open a UDP socket for STUN: {e}")),
    };
    // A STUN server on one of this node's own addresses (its own relay pod behind a NodePort
    // or a LoadBalancer address announced here) is reached by hairpin through kube-proxy,
    // which masquerades it: the answer describes kube-proxy, not the NAT, so it is not asked.
    let (hairpin, addrs) = split_hairpin(&addrs, &local);
    if addrs.is_empty() {
        return hairpin_only(&hairpin);
    }
    let local_port = sock.local_addr().ok().map(|a| a.port());
    let stun_io::Mapping {
        results: mapping,
        rtts,
    } = match stun_io::mapping_test(&sock, &addrs, rt).await {
        Ok(m) => m,
        Err(e) => return unknown(format!("STUN mapping test failed: {e}")),
    };
    // Release the WireGuard port before anything else can want it.
    drop(sock);
    let (looped, mapping) = drop_hairpin_answers(mapping, &local);
    if mapping.iter().all(|m| m.mapped.is_none()) && !looped.is_empty() {
        return hairpin_only(&looped);
    }
    let first_ok = mapping
        .iter()
        .find(|m| m.mapped.is_some())
        .map(|m| m.server);
    let (change_ip_port, change_port) = match first_ok {
        Some(server) => stun_io::filtering_test(server, rt)
            .await
            .unwrap_or((Probe::NotRun, Probe::NotRun)),
        None => (Probe::NotRun, Probe::NotRun),
    };
    let input = ClassifierInput {
        local_ips,
        external_ips,
        local_port,
        mapping,
        change_ip_port,
        change_port,
    };
    let classification = classify(&input);
    let stun_reachable = classification.nat_type != NatType::UdpBlocked;
    let message = if stun_reachable {
        format!(
            "{} of {} STUN server address(es) answered{}: {}",
            input.mapping.iter().filter(|m| m.mapped.is_some()).count(),
            input.mapping.len(),
            rtt_text(&rtts),
            classification.detail
        )
    } else {
        let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        format!(
            "no answer from STUN server(s) {} (UDP blocked or servers down){}",
            list.join(", "),
            if resolve_errors.is_empty() {
                String::new()
            } else {
                format!("; unresolved: {}", resolve_errors.join("; "))
            }
        )
    };
    DiscoveryReport {
        listen_port_srflx: if from_listen_port {
            classification.srflx
        } else {
            None
        },
        classification,
        stun_reachable,
        message,
    }
}

/// First wait before re-checking after a round in which no STUN server answered.
pub const RETRY_FIRST: Duration = Duration::from_secs(5);

/// When to run discovery next, and the new count of rounds without an answer. While no STUN
/// server answers (typically: the agents of a new cluster start before the relay pod is ready
/// and its address announced), re-check after 5 s, doubling up to the regular `interval`,
/// instead of staying "udp-blocked" until the regular re-check.
pub fn next_check(answered: bool, failures: u32, interval: Duration) -> (Duration, u32) {
    if answered {
        return (interval, 0);
    }
    let wait = RETRY_FIRST.saturating_mul(1u32 << failures.min(16));
    (wait.min(interval), failures.saturating_add(1))
}

/// Splits STUN server addresses into those on a local interface (hairpin) and the rest.
pub fn split_hairpin(
    addrs: &[SocketAddr],
    local: &[candidates::LocalAddr],
) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    addrs
        .iter()
        .partition(|a| candidates::is_hairpin(a.ip(), local))
}

/// Drops mapping results that looped through this node: from a server in a local pod subnet
/// (a relay's OTHER-ADDRESS is its pod address), or answering that we came from the server's
/// own address, which no NAT on a path does (the address became local between reading the
/// interfaces and asking: a LoadBalancer address announced on this node meanwhile). Also,
/// when another server saw a NAT's address, an answer that saw one of this node's own
/// addresses: that request bypassed the NAT. A relay's OTHER-ADDRESS in a remote node's pod
/// subnet is routed through the mesh once the mesh is up, so it sees the node's mesh IP;
/// kept, it made a full cone read as "mapping differs per destination" (symmetric) at every
/// re-check after start-up, and the operator moved the node's pairs onto the relay.
pub fn drop_hairpin_answers(
    mapping: Vec<MappingResult>,
    local: &[candidates::LocalAddr],
) -> (Vec<SocketAddr>, Vec<MappingResult>) {
    let is_local = |ip: std::net::IpAddr| local.iter().any(|a| a.ip == ip);
    let (mut looped, kept): (Vec<MappingResult>, Vec<MappingResult>) =
        mapping.into_iter().partition(|r| {
            candidates::is_hairpin(r.server.ip(), local)
                || r.mapped.is_some_and(|m| m.ip() == r.server.ip())
        });
    let natted = kept
        .iter()
        .any(|r| r.mapped.is_some_and(|m| !is_local(m.ip())));
    let (bypassed, kept): (Vec<MappingResult>, Vec<MappingResult>) = kept
        .into_iter()
        .partition(|r| natted && r.mapped.is_some_and(|m| is_local(m.ip())));
    looped.extend(bypassed);
    (looped.into_iter().map(|r| r.server).collect(), kept)
}

/// The report when every STUN server is on this node: nothing sits between the node and the
/// address its relay is published at, so the node is open at its own addresses (its host
/// candidates); no server-reflexive candidate is invented from the hairpin path.
fn hairpin_only(hairpin: &[SocketAddr]) -> DiscoveryReport {
    let list: Vec<String> = hairpin.iter().map(|a| a.to_string()).collect();
    let message = format!(
        "every STUN server ({}) is on this node's own addresses: open, reachable at its host \
         addresses",
        list.join(", ")
    );
    DiscoveryReport {
        classification: Classification {
            nat_type: NatType::Open,
            // A LoadBalancer address announced here is not the node's own: it moves with the
            // relay pod. The node's addresses come from its host candidates and Node object.
            public_ip: None,
            srflx: None,
            detail: message.clone(),
        },
        listen_port_srflx: None,
        stun_reachable: true,
        message,
    }
}

/// Discovery state across rounds: merges a re-check (from an ephemeral port) with the first
/// measurement of the WireGuard port's mapping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryState {
    pub latest: Option<DiscoveryReport>,
    /// The srflx candidate of the WireGuard port that is still believed valid.
    pub srflx: Option<SocketAddr>,
    /// The WireGuard listen port (from the spec), for a port-preserving NAT's new address.
    pub listen_port: Option<u16>,
}

impl DiscoveryState {
    /// Folds a new report in. Returns true when anything published changed.
    pub fn update(&mut self, r: DiscoveryReport) -> bool {
        let before = (
            self.nat_type(),
            self.public_ip(),
            self.srflx,
            self.reachable(),
        );
        if let Some(s) = r.listen_port_srflx {
            self.srflx = Some(s);
        } else if let Some(old) = self.srflx {
            let ip_same = r.classification.public_ip == Some(old.ip());
            // A re-check that saw no answer says nothing about the mapping: keep it. An
            // answer from another public IP means the old mapping is gone. Its port cannot be
            // measured while WireGuard owns the port; a cone NAT that kept the WireGuard port
            // before (srflx port = listen port) is taken to keep it at its new address too (a
            // gateway rebooted onto a new IP starts with an empty mapping table). Without
            // that the operator had no endpoint for the node and planned its pairs Relay.
            if let Some(ip) = r.classification.public_ip
                && !ip_same
            {
                let cone = matches!(
                    r.classification.nat_type,
                    NatType::FullCone | NatType::AddressRestricted | NatType::PortRestricted
                );
                self.srflx = (cone && Some(old.port()) == self.listen_port)
                    .then(|| SocketAddr::new(ip, old.port()));
            }
        }
        self.latest = Some(r);
        before
            != (
                self.nat_type(),
                self.public_ip(),
                self.srflx,
                self.reachable(),
            )
    }

    /// Seeds the srflx from a previous agent run's status, used when the WireGuard port was
    /// already bound at start-up (agent restart with the interface kept).
    pub fn seed_srflx(&mut self, s: SocketAddr) {
        if self.srflx.is_none() {
            self.srflx = Some(s);
        }
    }

    pub fn nat_type(&self) -> NatType {
        self.latest
            .as_ref()
            .map(|r| r.classification.nat_type)
            .unwrap_or_default()
    }

    pub fn public_ip(&self) -> Option<std::net::IpAddr> {
        self.latest
            .as_ref()
            .and_then(|r| r.classification.public_ip)
    }

    pub fn reachable(&self) -> Option<bool> {
        self.latest.as_ref().map(|r| r.stun_reachable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_text_in_whole_milliseconds() {
        let a: SocketAddr = "198.51.100.7:3478".parse().unwrap();
        let b: SocketAddr = "198.51.100.7:3479".parse().unwrap();
        let ms = Duration::from_micros;
        for (rtts, want) in [
            (vec![], ""),
            (vec![(a, ms(400))], " (RTT 198.51.100.7:3478 <1 ms)"),
            (
                vec![(a, ms(12_700)), (b, ms(1_000))],
                " (RTT 198.51.100.7:3478 12 ms, 198.51.100.7:3479 1 ms)",
            ),
        ] {
            assert_eq!(rtt_text(&rtts), want, "{rtts:?}");
        }
    }

    #[test]
    fn answers_that_looped_through_the_node_are_dropped() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let local = vec![candidates::LocalAddr {
            ifname: "cni0".into(),
            ip: "10.244.1.1".parse().unwrap(),
            prefix_len: 24,
            loopback: false,
            up: true,
        }];
        let r = |server: &str, mapped: Option<&str>| MappingResult {
            server: sa(server),
            mapped: mapped.map(sa),
        };
        let mapping = vec![
            r("198.18.0.240:3478", Some("198.18.0.240:51820")), // own LB address, raced
            r("10.244.1.2:3479", Some("10.244.1.1:51820")),     // OTHER-ADDRESS: a local pod
            r("198.18.0.20:3478", Some("198.18.0.10:40000")),   // a real answer
            r("198.18.0.21:3478", None),                        // silent
        ];
        let (looped, kept) = drop_hairpin_answers(mapping.clone(), &local);
        assert_eq!(looped, vec![sa("198.18.0.240:3478"), sa("10.244.1.2:3479")]);
        assert_eq!(kept, mapping[2..].to_vec());
    }

    #[test]
    fn answers_that_bypassed_the_nat_through_the_mesh_are_dropped() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let la = |ifname: &str, ip: &str| candidates::LocalAddr {
            ifname: ifname.into(),
            ip: ip.parse().unwrap(),
            prefix_len: 24,
            loopback: false,
            up: true,
        };
        let r = |server: &str, mapped: &str| MappingResult {
            server: sa(server),
            mapped: Some(sa(mapped)),
        };
        // A cone-NATed node (LAN 192.168.1.10, mesh IP 10.99.0.4): the relay's NodePort saw
        // the NAT's address, its OTHER-ADDRESS (a pod on another node, routed through the
        // mesh) saw the mesh IP.
        let natted = vec![la("eth0", "192.168.1.10"), la("wirekube0", "10.99.0.4")];
        let mapping = vec![
            r("198.18.0.12:30478", "198.18.0.10:58350"),
            r("198.18.0.12:30479", "198.18.0.10:58350"),
            r("10.244.1.4:3479", "10.99.0.4:58350"),
        ];
        let (looped, kept) = drop_hairpin_answers(mapping.clone(), &natted);
        assert_eq!(looped, vec![sa("10.244.1.4:3479")]);
        assert_eq!(kept, mapping[..2].to_vec());
        // An open node: every server saw its own address; nothing is dropped.
        let open = vec![la("eth0", "198.18.0.12"), la("wirekube0", "10.99.0.2")];
        let mapping = vec![
            r("198.18.0.20:3478", "198.18.0.12:51820"),
            r("198.18.0.21:3478", "198.18.0.12:51820"),
        ];
        let (looped, kept) = drop_hairpin_answers(mapping.clone(), &open);
        assert!(looped.is_empty());
        assert_eq!(kept, mapping);
    }

    #[test]
    fn rechecks_soon_while_no_stun_server_answers() {
        let day = Duration::from_secs(300);
        let s = Duration::from_secs;
        // (answered, failures before) -> (wait, failures after)
        for (answered, before, wait, after) in [
            (true, 0, day, 0),
            (true, 7, day, 0),
            (false, 0, s(5), 1),
            (false, 1, s(10), 2),
            (false, 3, s(40), 4),
            (false, 6, day, 7),
            (false, u32::MAX, day, u32::MAX),
        ] {
            assert_eq!(
                next_check(answered, before, day),
                (wait, after),
                "{answered} {before}"
            );
        }
    }

    #[test]
    fn stun_servers_on_own_addresses_are_hairpin_and_not_asked() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let local = vec![candidates::LocalAddr {
            ifname: "eth0".into(),
            ip: "198.18.0.13".parse().unwrap(),
            prefix_len: 24,
            loopback: false,
            up: true,
        }];
        let servers = [
            sa("198.18.0.13:30478"),
            sa("198.18.0.20:3478"),
            sa("198.18.0.13:30540"),
        ];
        let (hairpin, rest) = split_hairpin(&servers, &local);
        assert_eq!(hairpin, vec![servers[0], servers[2]]);
        assert_eq!(rest, vec![servers[1]]);
        let r = hairpin_only(&hairpin);
        assert_eq!(r.classification.nat_type, NatType::Open);
        assert_eq!(
            (r.classification.srflx, r.classification.public_ip),
            (None, None)
        );
        assert!(
            r.stun_reachable && r.message.contains("198.18.0.13:30478"),
            "{}",
            r.message
        );
    }

    fn report(nat: NatType, srflx: Option<&str>, from_listen: bool) -> DiscoveryReport {
        let srflx: Option<SocketAddr> = srflx.map(|s| s.parse().unwrap());
        DiscoveryReport {
            classification: Classification {
                nat_type: nat,
                public_ip: srflx.map(|s| s.ip()),
                srflx,
                detail: String::new(),
            },
            listen_port_srflx: if from_listen { srflx } else { None },
            stun_reachable: nat != NatType::UdpBlocked,
            message: String::new(),
        }
    }

    #[test]
    fn servers_from_spec_or_relay() {
        let mut spec = WireKubePeerSpec {
            relay_endpoints: vec!["relay.example:3478".into(), "198.18.0.51:443".into()],
            ..Default::default()
        };
        assert_eq!(
            stun_servers(&spec),
            vec![
                "relay.example:3478",
                "relay.example:3479",
                "198.18.0.51:3478",
                "198.18.0.51:3479"
            ]
        );
        spec.stun_servers = vec!["a:1".into(), "b:2".into()];
        assert_eq!(stun_servers(&spec), vec!["a:1", "b:2"]);
        spec.stun_servers.clear();
        spec.relay_endpoints.clear();
        assert!(stun_servers(&spec).is_empty());
    }

    #[test]
    fn recheck_keeps_wg_port_srflx_until_public_ip_changes() {
        let mut st = DiscoveryState::default();
        assert!(st.update(report(
            NatType::PortRestricted,
            Some("198.18.0.31:12691"),
            true
        )));
        // Re-check from an ephemeral port: same IP, other port. The WG mapping stays.
        assert!(!st.update(report(
            NatType::PortRestricted,
            Some("198.18.0.31:40000"),
            false
        )));
        assert_eq!(st.srflx, Some("198.18.0.31:12691".parse().unwrap()));
        // UDP blocked for a while: keep it, but the type changes.
        assert!(st.update(report(NatType::UdpBlocked, None, false)));
        assert!(st.srflx.is_some());
        // New public IP: the old mapping is gone.
        assert!(st.update(report(
            NatType::PortRestricted,
            Some("198.18.0.99:40000"),
            false
        )));
        assert_eq!(st.srflx, None);
    }

    #[test]
    fn a_port_preserving_cone_keeps_the_wireguard_port_at_its_new_address() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        // (NAT type after the change, old srflx) -> srflx at the new address 198.18.0.99
        for (nat, old, want) in [
            (
                NatType::FullCone,
                "198.18.0.31:51820",
                Some("198.18.0.99:51820"),
            ),
            (
                NatType::AddressRestricted,
                "198.18.0.31:51820",
                Some("198.18.0.99:51820"),
            ),
            (
                NatType::PortRestricted,
                "198.18.0.31:51820",
                Some("198.18.0.99:51820"),
            ),
            // The NAT had moved the port: the new one is unknown.
            (NatType::FullCone, "198.18.0.31:12691", None),
            // Symmetric now: a srflx means nothing.
            (NatType::Symmetric, "198.18.0.31:51820", None),
        ] {
            let mut st = DiscoveryState {
                listen_port: Some(51820),
                ..Default::default()
            };
            st.update(report(NatType::FullCone, Some(old), true));
            assert!(st.update(report(nat, Some("198.18.0.99:40000"), false)));
            assert_eq!(st.srflx, want.map(sa), "{nat:?} {old}");
        }
    }

    #[tokio::test]
    async fn no_servers_is_unknown_with_message() {
        let r = discover(&[], None, vec![], vec![], Retransmit::default()).await;
        assert_eq!(r.classification.nat_type, NatType::Unknown);
        assert!(!r.stun_reachable);
        assert!(r.message.contains("no STUN servers"), "{}", r.message);
    }
}
