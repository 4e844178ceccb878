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
pub mod relay_check;
pub mod schedule;
pub mod stun_io;

use std::net::SocketAddr;
use std::time::Duration;

use wirekube_crds::{NatType, WireKubePeerSpec};

pub use classifier::{Classification, ClassifierInput, MappingResult, Probe, classify};
pub use schedule::{
    FIRST_DISCOVERY_GRACE, FirstRound, RECHECK_MIN_GAP, RECHECK_WINDOW, RoundVerdict,
    after_first_round, judge_round, recheck_now, relay_up_for_round,
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
    // The filtering answers come from the same server's other address and port: as near as
    // its first answer, when that answered a first transmission.
    let filtering_rt = |server: SocketAddr| {
        (rtts.iter().find(|(s, _)| *s == server)).map_or(rt, |(_, d)| Retransmit::after_rtt(*d))
    };
    let (change_ip_port, change_port) = match first_ok {
        Some(server) => stun_io::filtering_test(server, filtering_rt(server))
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

/// When to run discovery next, and the new count of inconclusive rounds. While no STUN server
/// answers (typically: the agents of a new cluster start before the relay pod is ready and its
/// address announced), or only some of its addresses do so that the NAT type stays unknown,
/// re-check after 5 s, doubling up to the regular `interval`, instead of staying "udp-blocked"
/// or "unknown" until the regular re-check. (A managed relay's second NodePort answered before
/// its first in one seed-4 run; the home nodes stayed "unknown", so every pair of theirs on
/// the relay, for the whole 300 s interval.)
pub fn next_check(conclusive: bool, failures: u32, interval: Duration) -> (Duration, u32) {
    if conclusive {
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
mod tests;
