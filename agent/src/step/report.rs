//! The `WireKubePeer` status from the pass's observations and decisions (pure: the interface
//! addresses, the relay client's state and the dataplane's outcome are passed in).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Instant, SystemTime};

use wirekube_crds::{
    ActualPath, Candidate, CandidateKind, Engine, PathReason, PeerConnection, PeerEntry,
    WireKubePeer, WireKubePeerStatus, conditions as ct,
};
use wirekube_dataplane::PeerStats;
use wirekube_relay_client::Status;

use super::PeerPath;
use crate::discovery::{DiscoveryState, candidates};
use crate::podnet::{self, PodNet};
use crate::spec;
use crate::status::{self, CondInput};

/// The relay client as the status reports it.
#[derive(Clone, Debug)]
pub struct RelayFacts {
    /// The `relayEndpoints` entry in use.
    pub addr: String,
    pub status: Status,
    /// The client's most recent failure.
    pub last_error: Option<String>,
}

impl RelayFacts {
    fn connected(&self) -> bool {
        self.status == Status::Connected
    }
}

/// The dataplane and the node's networking as the last apply left them.
#[derive(Clone, Copy, Debug)]
pub struct DataplaneFacts<'a> {
    /// The engine of the open dataplane (`None`: not open).
    pub engine: Option<Engine>,
    /// Why the last open or write failed (or the spec that could not be mapped).
    pub error: Option<&'a str>,
    /// The interface the MSS clamp was last put on, or why it failed (`None`: not tried).
    pub mss: Option<&'a Result<String, String>>,
    /// The pod network last put in place and the outcome (`None`: not asked for).
    pub podnet: Option<&'a (Option<PodNet>, Result<(), String>)>,
    pub cni_conf_dir: &'a Path,
}

/// Everything the status is built from.
#[derive(Clone, Copy, Debug)]
pub struct StatusFacts<'a> {
    /// This node's peer object (spec, generation, annotations, the status last read).
    pub peer: &'a WireKubePeer,
    /// The status this agent built in its previous pass, if any: the conditions' transition
    /// times carry over from it. The API's copy lags behind while a write is in flight, and a
    /// condition that flipped would get a new transition time (a new status) every pass.
    pub previous: Option<&'a WireKubePeerStatus>,
    pub paths: &'a BTreeMap<String, PeerPath>,
    /// WireGuard's per-peer stats read in this pass.
    pub stats: &'a [PeerStats],
    /// The relay client (`None`: none running).
    pub relay: Option<&'a RelayFacts>,
    pub discovery: &'a DiscoveryState,
    /// The node's interface addresses (read by the reconcile layer).
    pub local_addrs: &'a [candidates::LocalAddr],
    pub dataplane: DataplaneFacts<'a>,
    /// The agent's namespace (where the relay token Secret lives).
    pub namespace: &'a str,
    /// Peers of the spec that were skipped, and why.
    pub spec_problems: &'a [String],
    /// This node's public key, base64.
    pub public_key: &'a str,
    pub now: Instant,
    pub now_sys: SystemTime,
}

/// The status for this pass.
pub fn build_status(f: &StatusFacts<'_>) -> WireKubePeerStatus {
    let spec = &f.peer.spec;
    let (connections, observed) = connections(f);
    let mut cands =
        candidates::host_candidates(f.local_addrs, &spec.interface_name, spec.listen_port);
    if let Some(s) = f.discovery.srflx {
        cands.push(Candidate {
            kind: CandidateKind::Srflx,
            address: s.to_string(),
            prefix_length: None,
            observed_by: None,
        });
    }
    cands.extend(candidates::prflx_candidates(
        observed.iter().map(|(n, e)| (n.as_str(), *e)),
    ));
    let generation = f.peer.metadata.generation;
    let old = (f.previous.or(f.peer.status.as_ref())).map_or(&[][..], |o| &o.conditions[..]);
    WireKubePeerStatus {
        observed_generation: generation,
        public_key: Some(f.public_key.to_owned()),
        candidates: cands,
        nat_type: f.discovery.nat_type(),
        public_ip: f.discovery.public_ip().map(|i| i.to_string()),
        engine: f.dataplane.engine,
        conditions: status::conditions(old, conditions(f), generation, f.now_sys),
        summary: status::summary(&connections),
        connections,
    }
}

/// One connection per peer of the spec, and the endpoints WireGuard observed (peer-reflexive
/// candidates; loopback ones are relay bridge sockets).
fn connections(f: &StatusFacts<'_>) -> (Vec<PeerConnection>, Vec<(String, SocketAddr)>) {
    let mut conns = Vec::new();
    let mut observed = Vec::new();
    for p in &f.peer.spec.peers {
        let Some(path) = f.paths.get(&p.name) else {
            conns.push(unconfigured(p));
            continue;
        };
        let s = f
            .stats
            .iter()
            .find(|s| s.public_key == *path.target.key.as_bytes());
        let ep = s.and_then(|s| s.endpoint);
        if let Some(e) = ep
            && !e.ip().is_loopback()
        {
            observed.push((p.name.clone(), e));
        }
        conns.push(connection(f, p, path, s));
    }
    (conns, observed)
}

/// A peer of the spec the agent does not configure: no key yet, or skipped (PeersAccepted).
fn unconfigured(p: &PeerEntry) -> PeerConnection {
    PeerConnection {
        name: p.name.clone(),
        path: ActualPath::Down,
        reason: Some(if p.public_key.is_empty() {
            PathReason::KeyMissing
        } else {
            p.reason
        }),
        ..Default::default()
    }
}

fn connection(
    f: &StatusFacts<'_>,
    p: &PeerEntry,
    path: &PeerPath,
    s: Option<&PeerStats>,
) -> PeerConnection {
    let state = &path.state;
    // On the relay while the relay client is not connected: nothing gets through.
    let relay_down = state.actual() == ActualPath::Relay && f.relay.is_none_or(|r| !r.connected());
    let wall = |i: Instant| {
        f.now_sys
            .checked_sub(f.now.duration_since(i))
            .unwrap_or(f.now_sys)
    };
    PeerConnection {
        name: p.name.clone(),
        path: if relay_down {
            ActualPath::Down
        } else {
            state.actual()
        },
        reason: Some(if state.direct_failed() {
            PathReason::DirectFailed
        } else if relay_down {
            PathReason::NoRelay
        } else {
            p.reason
        }),
        endpoint: s.and_then(|s| s.endpoint).map(|e| e.to_string()),
        last_handshake: s.and_then(|s| s.last_handshake).map(status::to_time),
        rx_bytes: s.map_or(0, |s| s.rx_bytes),
        tx_bytes: s.map_or(0, |s| s.tx_bytes),
        fallback: state.fallback(),
        transitions: state.transitions,
        last_transition: state.last_transition.map(|i| status::to_time(wall(i))),
        rtt_micros: if relay_down {
            None
        } else {
            path.rtt.published_micros()
        },
    }
}

/// The conditions as decided now (merged with the old ones by `status::conditions`).
fn conditions(f: &StatusFacts<'_>) -> Vec<CondInput> {
    let mut conds = vec![stun_condition(f.discovery)];
    let dataplane = dataplane_condition(&f.dataplane);
    let dp_ok = dataplane.ok;
    conds.push(dataplane);
    if let Some(pn) = f.dataplane.podnet {
        conds.push(podnet_condition(pn, f.dataplane.cni_conf_dir));
    }
    if spec::relay_allowed(&f.peer.spec) {
        conds.push(relay_condition(f));
    }
    conds.extend(key_conditions(f.peer, f.spec_problems));
    conds.push(CondInput::new(
        ct::READY,
        dp_ok,
        if dp_ok { "Ready" } else { "DataplaneNotReady" },
        if dp_ok {
            "agent reconciled the dataplane"
        } else {
            "see DataplaneReady"
        },
    ));
    conds
}

fn stun_condition(d: &DiscoveryState) -> CondInput {
    let (ok, msg) = match &d.latest {
        Some(r) => (r.stun_reachable, r.message.clone()),
        None => (false, "discovery has not run yet".to_string()),
    };
    CondInput::new(
        ct::STUN_REACHABLE,
        ok,
        if ok { "Answered" } else { "NoAnswer" },
        msg,
    )
}

fn dataplane_condition(d: &DataplaneFacts<'_>) -> CondInput {
    let mss_error = match d.mss {
        Some(Err(e)) => Some(format!("MSS clamp: {e}")),
        _ => None,
    };
    let ok = d.engine.is_some() && d.error.is_none() && mss_error.is_none();
    CondInput::new(
        ct::DATAPLANE_READY,
        ok,
        if ok { "Reconciled" } else { "Error" },
        d.error
            .map(str::to_owned)
            .or(mss_error)
            .unwrap_or_else(|| "interface, peers, routes and MSS clamp converged".into()),
    )
}

fn podnet_condition(
    (p, outcome): &(Option<PodNet>, Result<(), String>),
    cni_conf_dir: &Path,
) -> CondInput {
    let (ok, msg) = match (p, outcome) {
        (Some(p), Ok(())) => (
            true,
            format!(
                "pods on {} attach to {}; CNI configuration {} in {}",
                p.subnet,
                podnet::BRIDGE,
                podnet::CONF_FILE,
                cni_conf_dir.display()
            ),
        ),
        (_, Err(e)) => (false, e.clone()),
        (None, Ok(())) => (false, "not configured yet".into()),
    };
    CondInput::new(
        ct::POD_NETWORK_READY,
        ok,
        if ok { "Configured" } else { "Error" },
        msg,
    )
}

fn relay_condition(f: &StatusFacts<'_>) -> CondInput {
    let (ok, msg) = match f.relay {
        None => (
            false,
            format!(
                "no relay token yet (Secret {:?} in {})",
                f.peer.spec.relay_token_secret, f.namespace
            ),
        ),
        Some(r) => (
            r.connected(),
            match r.status {
                Status::Connected => format!("connected to {}", r.addr),
                s => format!(
                    "{s:?} to {}: {}",
                    r.addr,
                    r.last_error.as_deref().unwrap_or_default()
                ),
            },
        ),
    };
    CondInput::new(
        ct::RELAY_CONNECTED,
        ok,
        if ok { "Connected" } else { "NotConnected" },
        msg,
    )
}

/// `PublicKeyAccepted` (False while the operator quarantines this node for its key, with the
/// operator's note) and `PeersAccepted` (False naming each peer of the spec that was skipped).
pub fn key_conditions(peer: &WireKubePeer, problems: &[String]) -> [CondInput; 2] {
    let note = peer
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(wirekube_crds::QUARANTINE_ANNOTATION));
    let key = match note {
        Some(n) => CondInput::new(ct::PUBLIC_KEY_ACCEPTED, false, "Quarantined", n.clone()),
        None => CondInput::new(
            ct::PUBLIC_KEY_ACCEPTED,
            true,
            "Listed",
            "the operator lists this node's key in the other nodes' specs",
        ),
    };
    let peers = if problems.is_empty() {
        CondInput::new(
            ct::PEERS_ACCEPTED,
            true,
            "AllValid",
            "every peer of the spec is configured",
        )
    } else {
        CondInput::new(
            ct::PEERS_ACCEPTED,
            false,
            "PeersSkipped",
            problems.join(" | "),
        )
    };
    [key, peers]
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
