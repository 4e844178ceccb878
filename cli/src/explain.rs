//! `kubectl wirekube explain A B`: the facts the planner saw about two nodes, the rule of
//! docs/topologies.md that chose their path, and what the agents actually do.

use std::net::Ipv4Addr;

use serde::Serialize;
use wirekube_crds::{CandidateKind, NatType, PathReason, WireKubePeer, conditions};

use crate::error::CliError;
use crate::snapshot::{Snapshot, human_age, is_true, peer_condition};
use crate::status::{actual_str, engine_str, nat_str, planned_str};

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub a: String,
    pub b: String,
    /// What the planner knows about each side and about the pair.
    pub facts: Vec<String>,
    /// Each direction's plan (from that node's spec).
    pub plan: Vec<String>,
    /// The reason code of the plan and the rule behind it, in words.
    pub reason: Option<PathReason>,
    pub rule: String,
    /// What each agent reports, and whether it matches the plan.
    pub actual: Vec<String>,
}

pub fn explain(s: &Snapshot, a: &str, b: &str) -> Result<Explanation, CliError> {
    if a == b {
        return Err(CliError::SameNode(a.to_owned()));
    }
    let pa = find(s, a)?;
    let pb = find(s, b)?;
    let mut facts = vec![side_facts(s, pa), side_facts(s, pb)];
    facts.extend(pair_facts(s, pa, pb));
    let reason = s
        .planned(a, b)
        .or_else(|| s.planned(b, a))
        .map(|e| e.reason);
    let mut plan = vec![plan_line(s, a, b), plan_line(s, b, a)];
    let back = s.planned(b, a).map(|e| e.reason);
    if reason.is_some() && back.is_some() && reason != back {
        plan.push(
            "the two specs give different reasons: the operator wrote one before the other \
             and converges on its next pass"
                .into(),
        );
    }
    let rule = match reason {
        Some(r) => rule_text(r).to_string(),
        None => "no plan yet: the operator has not written this pair into either spec".into(),
    };
    let actual = vec![actual_line(s, a, b), actual_line(s, b, a)];
    Ok(Explanation {
        a: a.to_owned(),
        b: b.to_owned(),
        facts,
        plan,
        reason,
        rule,
        actual,
    })
}

fn find<'a>(s: &'a Snapshot, name: &str) -> Result<&'a WireKubePeer, CliError> {
    s.peer(name).ok_or_else(|| CliError::UnknownNode {
        node: name.to_owned(),
        mesh: s.mesh_name(),
        known: s.node_names().join(", "),
    })
}

/// The rule of docs/topologies.md ("The decision table") behind each reason code.
pub fn rule_text(r: PathReason) -> &'static str {
    match r {
        PathReason::CidrFull => {
            "rule 1 (cidr-full): one side has no mesh IP because the mesh CIDR is full, so nothing can be routed to it; widen spec.meshCIDR (every node is re-addressed)"
        }
        PathReason::KeyMissing => {
            "rule 2 (key-missing): a side has not published its WireGuard public key (its agent has not started or cannot write its status); WireGuard and the relay both address peers by key, so the pair is Down until it does"
        }
        PathReason::ModeAlways => {
            "rule 3 (mode-always): the mesh sets relay.mode: always, so every pair goes through the relay, even two nodes on one LAN"
        }
        PathReason::ModeNever => {
            "rule 4 (mode-never): the mesh sets relay.mode: never, so every pair is planned Direct, with the best endpoint the facts allow (peer-reflexive, public, STUN mapping, LAN address) and no relay fallback"
        }
        PathReason::SameSite => {
            "rule 5 (same-site): the two nodes share a private subnet (each host address inside the other's subnet) or the same public IP, so they talk directly over their LAN and never cross the NAT or firewall at the site's edge"
        }
        PathReason::UdpBlocked => {
            "rule 6 (udp-blocked): a side got no answer from any STUN server, so UDP does not leave its site (e.g. a firewall that allows only outbound TCP); the relay carries the pair over TCP"
        }
        PathReason::NatUnknown => {
            "rule 7 (nat-unknown): a side's NAT type is not known yet, or lacks the address it relies on (open without a public endpoint, a cone without a STUN mapping, symmetric without a public IP); the relay works regardless, and the pair moves to its real rule once the agent has classified its NAT (seconds)"
        }
        PathReason::PublicPeer => {
            "rule 8 (public-peer): a side is reachable unsolicited, with a public IP on its NIC (open) or behind a 1:1 NAT (one-to-one, an elastic IP), so the other side sends first to that public endpoint and the reachable side answers to wherever the packets came from"
        }
        PathReason::ConeCone => {
            "rule 9 (cone-cone): both sides are cones (one public mapping for every destination), so both send at once to each other's STUN mapping and each NAT lets the other in"
        }
        PathReason::ConeSymmetric => {
            "rule 10 (cone-symmetric): a full or address-restricted cone and a symmetric NAT: the symmetric side initiates toward the cone's stable STUN mapping; the cone side sends toward the symmetric side's public IP (punchToward) so an address filter admits the answer"
        }
        PathReason::PortRestrictedSymmetric => {
            "rule 11 (port-restricted-symmetric): a port-restricted cone and a symmetric NAT: the symmetric NAT picks a fresh port per destination and the port-restricted filter admits only ports it has sent to, so direct fails even when both send (measured in the lab); relay"
        }
        PathReason::BothSymmetric => {
            "rule 12 (both-symmetric): both sides are behind symmetric NATs at different sites; neither mapping can be predicted, so the pair is relayed"
        }
        PathReason::NoRelay => {
            "no-relay: the pair needs the relay (rules 3, 6, 7, 11 or 12) but the mesh publishes no relay endpoint, so it is planned Down instead of a path that cannot work; run `kubectl wirekube doctor` to see why the relay is missing"
        }
        PathReason::DirectFailed => {
            "direct-failed: the agent's own report, not a plan: the planned direct path had no handshake within relay.directTimeout, so the agent uses the relay and keeps probing direct with backoff (the plan stays Direct on purpose, see docs/topologies.md)"
        }
    }
}

/// What a NAT type means for reachability, in words.
pub fn nat_words(n: NatType) -> &'static str {
    match n {
        NatType::Open => "no NAT: a public address on its NIC",
        NatType::OneToOne => "1:1 NAT (elastic IP): reachable from anywhere on its public address",
        NatType::FullCone => "full cone: one mapping for every destination, anyone may send to it",
        NatType::AddressRestricted => {
            "address-restricted cone: one mapping, admits addresses it has sent to"
        }
        NatType::PortRestricted => {
            "port-restricted cone: one mapping, admits address:port pairs it has sent to"
        }
        NatType::Symmetric => {
            "symmetric: a new mapping per destination, unpredictable from outside"
        }
        NatType::UdpBlocked => "UDP blocked: no STUN server answered",
        NatType::Unknown => "unknown: not classified yet",
    }
}

fn side_facts(s: &Snapshot, p: &WireKubePeer) -> String {
    let name = p.metadata.name.clone().unwrap_or_default();
    let Some(st) = &p.status else {
        return format!("{name}: its agent has not reported (no status: no key, no NAT type)");
    };
    let mut parts = vec![format!(
        "NAT {} ({})",
        nat_str(st.nat_type),
        nat_words(st.nat_type)
    )];
    if let Some(ip) = &st.public_ip {
        parts.push(format!("public IP {ip}"));
    }
    for c in &st.candidates {
        let addr = match (c.kind, c.prefix_length) {
            (CandidateKind::Host, Some(len)) => format!("{}/{len}", c.address),
            _ => c.address.clone(),
        };
        let what = match c.kind {
            CandidateKind::Host => "LAN address".to_string(),
            CandidateKind::Srflx => "STUN mapping".to_string(),
            CandidateKind::Prflx => {
                format!(
                    "{}'s address as seen from here",
                    c.observed_by.as_deref().unwrap_or("a peer")
                )
            }
        };
        parts.push(format!("{what} {addr}"));
    }
    parts.push(match &st.public_key {
        Some(_) => "key published".into(),
        None => "NO key published".into(),
    });
    if let Some(q) = s.quarantine(&name) {
        parts.push(format!("key QUARANTINED: {q}"));
    }
    parts.push(match is_true(peer_condition(p, conditions::READY)) {
        Some(true) => "agent Ready".into(),
        Some(false) => "agent NOT Ready".into(),
        None => "agent readiness not reported".into(),
    });
    if let Some(e) = st.engine {
        parts.push(format!("engine {}", engine_str(e)));
    }
    format!("{name}: {}", parts.join("; "))
}

/// Facts about the pair itself: mesh mode and relay, shared public IP or subnet.
fn pair_facts(s: &Snapshot, a: &WireKubePeer, b: &WireKubePeer) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(m) = &s.mesh {
        let eps = m
            .status
            .as_ref()
            .map(|st| st.relay_endpoints.join(", "))
            .unwrap_or_default();
        out.push(format!(
            "mesh {}: relay.mode {}, relay endpoints {}",
            s.mesh_name(),
            crate::status::mode_str(m.spec.relay.mode),
            if eps.is_empty() {
                "none published"
            } else {
                &eps
            }
        ));
    }
    let (sa, sb) = (a.status.as_ref(), b.status.as_ref());
    if let (Some(x), Some(y)) = (
        sa.and_then(|s| s.public_ip.as_ref()),
        sb.and_then(|s| s.public_ip.as_ref()),
    ) && x == y
    {
        out.push(format!("both leave through the same public IP {x}"));
    }
    if let Some(subnet) = shared_subnet(a, b) {
        out.push(format!("both have a LAN address in {subnet}"));
    }
    out
}

/// A host subnet that contains an address of each side (different addresses), if any.
fn shared_subnet(a: &WireKubePeer, b: &WireKubePeer) -> Option<String> {
    let hosts = |p: &WireKubePeer| -> Vec<(Ipv4Addr, u8)> {
        p.status
            .iter()
            .flat_map(|s| &s.candidates)
            .filter(|c| c.kind == CandidateKind::Host)
            .filter_map(|c| {
                let ip = c
                    .address
                    .rsplit_once(':')
                    .map_or(c.address.as_str(), |x| x.0);
                Some((ip.parse().ok()?, c.prefix_length?))
            })
            .collect()
    };
    let (ha, hb) = (hosts(a), hosts(b));
    ha.iter().find_map(|&(x, lx)| {
        hb.iter().find_map(|&(y, ly)| {
            (x != y && lx == ly && lx <= 32 && same_net(x, y, lx)).then(|| {
                let net = u32::from(x) & mask(lx);
                format!("{}/{lx}", Ipv4Addr::from(net))
            })
        })
    })
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn same_net(x: Ipv4Addr, y: Ipv4Addr, len: u8) -> bool {
    u32::from(x) & mask(len) == u32::from(y) & mask(len)
}

fn plan_line(s: &Snapshot, from: &str, to: &str) -> String {
    let Some(e) = s.planned(from, to) else {
        return format!("{from} → {to}: not in {from}'s spec yet");
    };
    let mut line = format!("{from} → {to}: {} ({})", planned_str(e.path), e.reason);
    if let Some(ep) = &e.endpoint {
        line.push_str(&format!(", sends to {ep}"));
    }
    if e.initiate {
        line.push_str(&format!(", {from} sends first"));
    }
    if let Some(p) = &e.punch_toward {
        line.push_str(&format!(", punches toward {p}"));
    }
    if e.persistent_keepalive > 0 {
        line.push_str(&format!(", keepalive {}s", e.persistent_keepalive));
    }
    line
}

fn actual_line(s: &Snapshot, from: &str, to: &str) -> String {
    let Some(c) = s.connection(from, to) else {
        return format!("{from} → {to}: {from}'s agent reports nothing for {to} yet");
    };
    let mut line = format!("{from} → {to}: {}", actual_str(c.path));
    if let Some(ep) = &c.endpoint {
        line.push_str(&format!(" via {ep}"));
    }
    match &c.last_handshake {
        Some(t) => {
            let age = s.taken_at.as_second() - t.0.as_second();
            line.push_str(&format!(", last handshake {} ago", human_age(age)));
        }
        None => line.push_str(", no handshake yet"),
    }
    if c.fallback {
        line.push_str(&format!(
            "; FELL BACK: {}",
            rule_text(PathReason::DirectFailed)
        ));
    } else if let Some(e) = s.planned(from, to)
        && !matches_plan(e.path, c.path)
    {
        line.push_str(&format!(
            "; differs from the plan ({})",
            planned_str(e.path)
        ));
    }
    line
}

fn matches_plan(p: wirekube_crds::PlannedPath, a: wirekube_crds::ActualPath) -> bool {
    use wirekube_crds::{ActualPath as A, PlannedPath as P};
    matches!(
        (p, a),
        (P::Direct, A::Direct | A::Connecting)
            | (P::Relay, A::Relay | A::Connecting)
            | (P::Down, A::Down)
    )
}

impl Explanation {
    pub fn to_text(&self) -> String {
        let mut out = format!("{} ↔ {}\n\nFacts:\n", self.a, self.b);
        for f in &self.facts {
            out.push_str(&format!("  - {f}\n"));
        }
        out.push_str("\nPlan (from each node's spec):\n");
        for p in &self.plan {
            out.push_str(&format!("  - {p}\n"));
        }
        out.push_str(&format!(
            "\nWhy: {}\n\nActual (from each agent):\n",
            self.rule
        ));
        for a in &self.actual {
            out.push_str(&format!("  - {a}\n"));
        }
        out
    }
}

#[cfg(test)]
#[path = "explain_tests.rs"]
mod tests;
