//! Doctor checks read from the agents' reports: relay, STUN, keys, clocks, MTU, engines.

use std::collections::BTreeMap;

use jiff::Timestamp;
use wirekube_crds::{NatType, PathReason, RelayMode, RelayProvider, conditions};

use super::{Check, Level, agent_write_time, names};
use crate::snapshot::{
    AGENT_DAEMONSET, Snapshot, age_seconds, is_true, mesh_condition, peer_condition, peer_name,
};
use crate::status::{engine_str, nat_str};

pub(super) fn relay(s: &Snapshot) -> Check {
    let Some(m) = &s.mesh else {
        return Check::bad("relay", Level::Warn, "no mesh", "see the mesh check");
    };
    if m.spec.relay.mode == RelayMode::Never {
        return Check::ok("relay", "not used (relay.mode: never)");
    }
    let eps = m
        .status
        .as_ref()
        .map(|st| st.relay_endpoints.clone())
        .unwrap_or_default();
    if eps.is_empty() {
        let fix = match m.spec.relay.provider {
            RelayProvider::External => {
                "set relay.external.endpoint to host:port of your relay".to_string()
            }
            RelayProvider::Managed => format!(
                "kubectl -n {} get deploy,svc -o wide | grep relay: the Service needs an external address (LoadBalancer) or the relay pod a node (NodePort, see relay.managed.nodeSelector)",
                s.namespace
            ),
        };
        return Check::bad(
            "relay",
            Level::Fail,
            "no relay endpoint published in the mesh status; relayed pairs are Down (no-relay)",
            fix,
        );
    }
    let down: Vec<String> = s
        .peers
        .iter()
        .filter(|p| is_true(peer_condition(p, conditions::RELAY_CONNECTED)) == Some(false))
        .map(|p| {
            let msg = peer_condition(p, conditions::RELAY_CONNECTED)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            format!("{}: {msg}", peer_name(p))
        })
        .collect();
    if !down.is_empty() {
        return Check::bad(
            "relay",
            Level::Fail,
            format!(
                "published {}; not connected from {}",
                eps.join(", "),
                names(&down)
            ),
            "the node must reach the endpoint over TCP: check its firewall and egress, and the relay's logs; a token error means the Secret named by spec.relayTokenSecret is missing or wrong",
        );
    }
    let connected = s
        .peers
        .iter()
        .filter(|p| is_true(peer_condition(p, conditions::RELAY_CONNECTED)) == Some(true))
        .count();
    Check::ok(
        "relay",
        format!("published {}; {connected} agents connected", eps.join(", ")),
    )
}

pub(super) fn stun(s: &Snapshot) -> Check {
    let mut fails = Vec::new();
    let mut warns = Vec::new();
    for p in &s.peers {
        let Some(st) = &p.status else { continue };
        let name = peer_name(p);
        let cond = peer_condition(p, conditions::STUN_REACHABLE);
        match (is_true(cond), st.nat_type) {
            (Some(false), _) => fails.push(format!(
                "{name}: {}",
                cond.map(|c| c.message.as_str()).unwrap_or("")
            )),
            (_, NatType::UdpBlocked) => fails.push(format!("{name}: udp-blocked")),
            (_, NatType::Unknown) => warns.push(format!("{name}: NAT type not classified yet")),
            _ => {}
        }
    }
    let fix = "the node needs outbound UDP to the STUN servers (spec.stunServers, else the relay's STUN ports); a node that cannot have UDP still works through the relay (udp-blocked)";
    if !fails.is_empty() {
        return Check::bad("stun", Level::Fail, names(&fails), fix);
    }
    if !warns.is_empty() {
        return Check::bad(
            "stun",
            Level::Warn,
            names(&warns),
            "wait a few seconds; if it stays, see the agent's StunReachable condition",
        );
    }
    let mut types = BTreeMap::<&str, usize>::new();
    for st in s.peers.iter().filter_map(|p| p.status.as_ref()) {
        *types.entry(nat_str(st.nat_type)).or_default() += 1;
    }
    let list: Vec<String> = types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    Check::ok(
        "stun",
        format!(
            "every agent got STUN answers; NAT types: {}",
            list.join(", ")
        ),
    )
}

/// The quarantine as the mesh condition states it, plus the quarantined nodes; an
/// annotation's reason is only repeated when the mesh condition does not already say it.
fn quarantine_detail(s: &Snapshot) -> Option<String> {
    let mesh_cond = s
        .mesh
        .as_ref()
        .and_then(|m| mesh_condition(m, conditions::PUBLIC_KEYS_VALID))
        .filter(|c| c.status == "False");
    let said = mesh_cond.map(|c| c.message.as_str()).unwrap_or("");
    let quarantined: Vec<String> = s
        .peers
        .iter()
        .filter_map(|p| {
            let name = peer_name(p);
            let why = s.quarantine(&name)?;
            Some(if said.contains(why) {
                name
            } else {
                format!("{name} ({why})")
            })
        })
        .collect();
    let mut parts: Vec<String> = mesh_cond
        .map(|c| format!("{}: {}", c.reason, c.message))
        .into_iter()
        .collect();
    if !quarantined.is_empty() {
        parts.push(format!("quarantined: {}", quarantined.join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

pub(super) fn keys(s: &Snapshot) -> Check {
    let ns = &s.namespace;
    if let Some(detail) = quarantine_detail(s) {
        return Check::bad(
            "keys",
            Level::Fail,
            detail,
            format!(
                "on all but one node of each group, delete the key under /var/lib/wirekube and restart that node's agent (kubectl -n {ns} delete pod -l app.kubernetes.io/name={AGENT_DAEMONSET} --field-selector spec.nodeName=<node>); the quarantine lifts on the operator's next pass"
            ),
        );
    }
    let skipped: Vec<String> = s
        .peers
        .iter()
        .filter_map(|p| {
            let c =
                peer_condition(p, conditions::PEERS_ACCEPTED).filter(|c| c.status == "False")?;
            Some(format!("{}: {}", peer_name(p), c.message))
        })
        .collect();
    if !skipped.is_empty() {
        return Check::bad(
            "keys",
            Level::Fail,
            format!("agents skipped peers: {}", names(&skipped)),
            "the named peers' keys are malformed or listed twice; see the operator's PublicKeysValid condition",
        );
    }
    let missing: Vec<String> = s
        .peers
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|st| st.public_key.as_ref())
                .is_none()
        })
        .map(peer_name)
        .collect();
    if !missing.is_empty() {
        return Check::bad(
            "keys",
            Level::Warn,
            format!(
                "no public key yet: {} (their pairs are Down, key-missing)",
                missing.join(", ")
            ),
            "see the agents check",
        );
    }
    let down = count_reason(s, PathReason::KeyMissing);
    Check::ok(
        "keys",
        format!(
            "{} keys, all distinct and accepted{}",
            s.peers.len(),
            if down > 0 {
                format!(" ({down} directions still planned key-missing)")
            } else {
                String::new()
            }
        ),
    )
}

fn count_reason(s: &Snapshot, r: PathReason) -> usize {
    s.peers
        .iter()
        .flat_map(|p| &p.spec.peers)
        .filter(|e| e.reason == r)
        .count()
}

/// Agent-written times later than the API server's time of that very write show a clock
/// ahead of the server. A clock behind leaves no trace in the API, so it is not detectable.
const SKEW_TOLERANCE_SECS: i64 = 10;

pub(super) fn clock(s: &Snapshot, now: Timestamp) -> Check {
    let mut ahead = Vec::new();
    let mut newest_write: Option<Timestamp> = None;
    for p in &s.peers {
        let (Some(st), Some(written)) = (&p.status, agent_write_time(p)) else {
            continue;
        };
        newest_write = newest_write.max(Some(written));
        let stamps = st
            .conditions
            .iter()
            .map(|c| c.last_transition_time.0)
            .chain(
                st.connections
                    .iter()
                    .flat_map(|c| [c.last_handshake.as_ref(), c.last_transition.as_ref()])
                    .flatten()
                    .map(|t| t.0),
            );
        if let Some(max) = stamps.max() {
            let skew = age_seconds(max, written);
            if skew > SKEW_TOLERANCE_SECS {
                ahead.push(format!(
                    "{}: at least {skew}s ahead of the API server",
                    peer_name(p)
                ));
            }
        }
    }
    let fix = "run NTP (chrony, systemd-timesyncd) on the named machines";
    if !ahead.is_empty() {
        return Check::bad("clock", Level::Warn, names(&ahead), fix);
    }
    if let Some(w) = newest_write
        && age_seconds(now, w) < -SKEW_TOLERANCE_SECS
    {
        return Check::bad(
            "clock",
            Level::Warn,
            format!(
                "this machine is at least {}s behind the API server: ages shown are too small",
                -age_seconds(now, w)
            ),
            fix,
        );
    }
    Check::ok(
        "clock",
        "no agent timestamp ahead of the API server (a clock behind it cannot be seen from the API)",
    )
}

/// WireGuard adds 80 bytes over IPv6 (60 over IPv4) to each packet.
const WG_OVERHEAD: u32 = 80;

pub(super) fn mtu(s: &Snapshot) -> Check {
    let Some(m) = &s.mesh else {
        return Check::bad("mtu", Level::Warn, "no mesh", "see the mesh check");
    };
    let want = m.spec.mtu;
    let stale: Vec<String> = s
        .peers
        .iter()
        .filter(|p| p.spec.mtu != want)
        .map(|p| format!("{} has {}", peer_name(p), p.spec.mtu))
        .collect();
    let errors: Vec<String> = s
        .peers
        .iter()
        .filter_map(|p| {
            let c = peer_condition(p, conditions::DATAPLANE_READY)
                .filter(|c| c.status == "False" && c.message.to_lowercase().contains("mtu"))?;
            Some(format!("{}: {}", peer_name(p), c.message))
        })
        .collect();
    if !errors.is_empty() {
        return Check::bad(
            "mtu",
            Level::Fail,
            names(&errors),
            "lower spec.mtu to the underlay MTU minus 80",
        );
    }
    if !stale.is_empty() {
        return Check::bad(
            "mtu",
            Level::Warn,
            format!("mesh mtu {want}, but {}", names(&stale)),
            "the operator has not rewritten these specs yet: see the operator check",
        );
    }
    if want + WG_OVERHEAD > 1500 {
        return Check::bad(
            "mtu",
            Level::Warn,
            format!(
                "mtu {want} needs an underlay MTU of at least {} (jumbo frames) on every path",
                want + WG_OVERHEAD
            ),
            "keep 1420 unless every node and the internet path between sites carry larger frames",
        );
    }
    Check::ok(
        "mtu",
        format!("{want} on every node (fits a 1500-byte underlay)"),
    )
}

pub(super) fn engines(s: &Snapshot) -> Check {
    let mut by = BTreeMap::<&str, Vec<String>>::new();
    for p in &s.peers {
        let e = p
            .status
            .as_ref()
            .and_then(|st| st.engine)
            .map_or("not reported", engine_str);
        by.entry(e).or_default().push(peer_name(p));
    }
    let detail: Vec<String> = by
        .iter()
        .map(|(e, ns)| format!("{e}: {}", ns.join(", ")))
        .collect();
    if by.contains_key("not reported") {
        return Check::bad(
            "engines",
            Level::Warn,
            detail.join("; "),
            "see the agents check",
        );
    }
    Check::ok("engines", detail.join("; "))
}
