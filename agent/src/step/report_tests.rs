//! Status building: per-pair fields, candidates and conditions from fixtures (no Kubernetes,
//! no interface reads).

use std::path::Path;

use wirekube_crds::{PeerEntry, PlannedPath, WireKubePeerSpec};
use wirekube_relay_proto::PublicKey;

use super::*;
use crate::discovery::DiscoveryReport;
use crate::discovery::candidates::LocalAddr;
use crate::step::tests::{DIRECT_EP, PEER, RELAY_EP, Run, target};

const RELAY_ADDR: &str = "198.18.0.100:7443";

/// Node a's peer object: b (configured), c (no key published yet), d (skipped by the agent).
fn node_a() -> WireKubePeer {
    let entry = |name: &str, key: String| PeerEntry {
        name: name.into(),
        public_key: key,
        path: PlannedPath::Direct,
        reason: PathReason::PublicPeer,
        ..Default::default()
    };
    let spec = WireKubePeerSpec {
        interface_name: "wirekube0".into(),
        listen_port: 51820,
        relay_endpoints: vec![RELAY_ADDR.into()],
        relay_token_secret: Some("relay-token".into()),
        peers: vec![
            entry(PEER, PublicKey([1; 32]).to_base64()),
            entry("c", String::new()),
            entry("d", PublicKey([4; 32]).to_base64()),
        ],
        ..Default::default()
    };
    let mut p = WireKubePeer::new("a", spec);
    p.metadata.generation = Some(7);
    p
}

fn eth0(ip: &str) -> LocalAddr {
    LocalAddr {
        ifname: "eth0".into(),
        ip: ip.parse().unwrap(),
        prefix_len: 24,
        loopback: false,
        up: true,
    }
}

fn relay(status: Status) -> RelayFacts {
    RelayFacts {
        addr: RELAY_ADDR.into(),
        status,
        last_error: (status != Status::Connected).then(|| "connection refused".into()),
    }
}

/// The facts of a healthy node; tests change what they look at.
struct Fixture {
    peer: WireKubePeer,
    run: Run,
    stats: Vec<PeerStats>,
    relay: Option<RelayFacts>,
    discovery: DiscoveryState,
    local: Vec<LocalAddr>,
    engine: Option<Engine>,
    error: Option<String>,
    mss: Option<Result<String, String>>,
    podnet: Option<(Option<PodNet>, Result<(), String>)>,
    problems: Vec<String>,
    previous: Option<WireKubePeerStatus>,
}

impl Fixture {
    /// b direct (handshake at 0.5 s) after one pass at 1 s.
    fn direct() -> Self {
        let mut run = Run::new(target(1, PlannedPath::Direct, true), false);
        let obs = run.wg(DIRECT_EP, Some(500), 1_000, 2_000);
        run.step_at(1_000, &obs);
        Self {
            peer: node_a(),
            stats: obs.wireguard.into_iter().collect(),
            run,
            relay: Some(relay(Status::Connected)),
            discovery: DiscoveryState::default(),
            local: vec![eth0("192.168.1.10")],
            engine: Some(Engine::UserspaceExternal),
            error: None,
            mss: Some(Ok("wirekube0".into())),
            podnet: None,
            problems: vec![
                "peer d: publicKey is also listed for e; all of them are skipped".into(),
            ],
            previous: None,
        }
    }

    fn build(&self) -> WireKubePeerStatus {
        let (now, now_sys) = self.run.clock.at(self.run.ms);
        build_status(&StatusFacts {
            peer: &self.peer,
            previous: self.previous.as_ref(),
            paths: &self.run.paths,
            stats: &self.stats,
            relay: self.relay.as_ref(),
            discovery: &self.discovery,
            local_addrs: &self.local,
            dataplane: DataplaneFacts {
                engine: self.engine,
                error: self.error.as_deref(),
                mss: self.mss.as_ref(),
                podnet: self.podnet.as_ref(),
                cni_conf_dir: Path::new("/etc/cni/net.d"),
            },
            namespace: "wirekube-system",
            spec_problems: &self.problems,
            public_key: "a-key",
            now,
            now_sys,
        })
    }
}

fn cond<'a>(
    st: &'a WireKubePeerStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    st.conditions.iter().find(|c| c.type_ == type_)
}

#[test]
fn every_peer_of_the_spec_gets_a_connection_with_its_per_pair_fields() {
    let f = Fixture::direct();
    let st = f.build();
    let names: Vec<&str> = st.connections.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [PEER, "c", "d"]);
    let b = &st.connections[0];
    assert_eq!(
        (b.path, b.reason),
        (ActualPath::Direct, Some(PathReason::PublicPeer))
    );
    assert_eq!(b.endpoint.as_deref(), Some(DIRECT_EP));
    assert_eq!((b.rx_bytes, b.tx_bytes), (1_000, 2_000));
    let hs = f.run.clock.sys0 + std::time::Duration::from_millis(500);
    assert_eq!(b.last_handshake, Some(status::to_time(hs)));
    assert_eq!((b.transitions, b.fallback), (1, false));
    // The transition at 1 s, in wall time.
    assert_eq!(
        b.last_transition,
        Some(status::to_time(f.run.clock.at(1_000).1))
    );
    // (peer) -> (path, reason): no key yet, or skipped by the agent.
    for (i, reason) in [(1, PathReason::KeyMissing), (2, PathReason::PublicPeer)] {
        let c = &st.connections[i];
        assert_eq!(
            (c.path, c.reason),
            (ActualPath::Down, Some(reason)),
            "{}",
            c.name
        );
        assert_eq!(c.endpoint, None);
    }
    assert_eq!((st.summary.direct, st.summary.down), (1, 2));
    assert_eq!(
        (st.observed_generation, st.public_key.as_deref()),
        (Some(7), Some("a-key"))
    );
    assert_eq!(st.engine, Some(Engine::UserspaceExternal));
}

#[test]
fn candidates_come_from_the_addresses_passed_in_discovery_and_observed_endpoints() {
    let mut f = Fixture::direct();
    f.local = vec![
        eth0("192.168.1.10"),
        LocalAddr {
            ifname: "cni0".into(),
            ..eth0("10.244.0.1")
        },
    ];
    f.discovery.srflx = Some("203.0.113.5:51820".parse().unwrap());
    let st = f.build();
    let got: Vec<(CandidateKind, &str, Option<&str>)> = st
        .candidates
        .iter()
        .map(|c| (c.kind, c.address.as_str(), c.observed_by.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (CandidateKind::Host, "192.168.1.10:51820", None),
            (CandidateKind::Srflx, "203.0.113.5:51820", None),
            (CandidateKind::Prflx, DIRECT_EP, Some(PEER)),
        ]
    );
    // An endpoint on a relay bridge socket (loopback) is no candidate.
    f.stats[0].endpoint = RELAY_EP.parse().ok();
    let st = f.build();
    assert!(st.candidates.iter().all(|c| c.kind != CandidateKind::Prflx));
}

#[test]
fn a_relayed_pair_without_a_connected_relay_is_down_for_lack_of_a_relay() {
    // b planned Relay; (relay client) -> (path, reason, RelayConnected status, its message)
    let cases = [
        (
            Some(Status::Connected),
            ActualPath::Relay,
            PathReason::PublicPeer,
            "True",
            "connected to 198.18.0.100:7443".to_string(),
        ),
        (
            Some(Status::Reconnecting),
            ActualPath::Down,
            PathReason::NoRelay,
            "False",
            "Reconnecting to 198.18.0.100:7443: connection refused".to_string(),
        ),
        (
            None,
            ActualPath::Down,
            PathReason::NoRelay,
            "False",
            "no relay token yet (Secret Some(\"relay-token\") in wirekube-system)".to_string(),
        ),
    ];
    for (client, path, reason, relay_status, msg) in cases {
        let mut f = Fixture::direct();
        f.run = Run::new(target(1, PlannedPath::Relay, true), false);
        let obs = f.run.wg(RELAY_EP, Some(500), 1_000, 2_000);
        f.run.step_at(1_000, &obs);
        f.relay = client.map(relay);
        let st = f.build();
        let b = &st.connections[0];
        assert_eq!((b.path, b.reason), (path, Some(reason)), "{client:?}");
        let c = cond(&st, ct::RELAY_CONNECTED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.message.as_str()),
            (relay_status, msg.as_str())
        );
    }
}

#[test]
fn a_fallen_back_pair_reports_direct_failed_and_fallback() {
    let mut f = Fixture::direct();
    f.run = Run::new(target(1, PlannedPath::Direct, true), false);
    f.run.step_at(0, &Default::default());
    f.run.step_at(10_000, &Default::default());
    // (relay connected) -> path; the reason is DirectFailed either way
    for (connected, path) in [(true, ActualPath::Relay), (false, ActualPath::Down)] {
        f.relay = Some(relay(if connected {
            Status::Connected
        } else {
            Status::Connecting
        }));
        let b = &f.build().connections[0];
        assert_eq!(
            (b.path, b.reason, b.fallback),
            (path, Some(PathReason::DirectFailed), true)
        );
    }
}

#[test]
fn dataplane_mss_and_ready_conditions_follow_the_last_apply() {
    // (engine open, error, MSS outcome) -> (DataplaneReady, its message, Ready reason)
    let mss_err = Err("nft: not found".to_string());
    let cases = [
        (
            true,
            None,
            Some(Ok("wirekube0".into())),
            "True",
            "interface, peers, routes and MSS clamp converged",
            "Ready",
        ),
        (
            false,
            Some("open dataplane: no engine"),
            None,
            "False",
            "open dataplane: no engine",
            "DataplaneNotReady",
        ),
        (
            true,
            Some("reconcile dataplane: busy"),
            Some(mss_err.clone()),
            "False",
            "reconcile dataplane: busy",
            "DataplaneNotReady",
        ),
        (
            true,
            None,
            Some(mss_err),
            "False",
            "MSS clamp: nft: not found",
            "DataplaneNotReady",
        ),
    ];
    for (open, error, mss, dp_status, msg, ready_reason) in cases {
        let mut f = Fixture::direct();
        f.engine = open.then_some(Engine::UserspaceExternal);
        f.error = error.map(str::to_owned);
        f.mss = mss;
        let st = f.build();
        let dp = cond(&st, ct::DATAPLANE_READY).unwrap();
        assert_eq!(
            (dp.status.as_str(), dp.message.as_str()),
            (dp_status, msg),
            "{error:?}"
        );
        assert_eq!(cond(&st, ct::READY).unwrap().reason, ready_reason);
        assert_eq!(dp.observed_generation, Some(7));
    }
}

#[test]
fn stun_pod_network_and_key_conditions() {
    let mut f = Fixture::direct();
    let st = f.build();
    let stun = cond(&st, ct::STUN_REACHABLE).unwrap();
    assert_eq!(
        (stun.status.as_str(), stun.message.as_str()),
        ("False", "discovery has not run yet")
    );
    assert!(cond(&st, ct::POD_NETWORK_READY).is_none(), "not asked for");
    assert_eq!(
        cond(&st, ct::PEERS_ACCEPTED).unwrap().reason,
        "PeersSkipped"
    );
    assert_eq!(cond(&st, ct::PUBLIC_KEY_ACCEPTED).unwrap().reason, "Listed");
    f.discovery.latest = Some(DiscoveryReport {
        classification: crate::discovery::classifier::Classification {
            nat_type: wirekube_crds::NatType::FullCone,
            public_ip: None,
            srflx: None,
            detail: String::new(),
        },
        listen_port_srflx: None,
        stun_reachable: true,
        message: "2 servers answered".into(),
    });
    f.podnet = Some((None, Err("bridge: permission denied".into())));
    let st = f.build();
    assert_eq!(cond(&st, ct::STUN_REACHABLE).unwrap().reason, "Answered");
    let pn = cond(&st, ct::POD_NETWORK_READY).unwrap();
    assert_eq!(
        (pn.status.as_str(), pn.message.as_str()),
        ("False", "bridge: permission denied")
    );
    // Conditions come sorted by type, transition times carried over while unchanged.
    let types: Vec<&str> = st.conditions.iter().map(|c| c.type_.as_str()).collect();
    let mut sorted = types.clone();
    sorted.sort();
    assert_eq!(types, sorted);
}

/// A condition that flipped keeps the transition time of the pass that saw it flip while the
/// API still holds the status before (a write in flight): the previous pass's status is the
/// reference, not the API's copy.
#[test]
fn transition_times_carry_over_from_the_previous_pass_not_the_api_copy() {
    let mut f = Fixture::direct();
    f.peer.status = Some(f.build());
    f.error = Some("netlink: busy".into());
    let flipped = f.build();
    let at = |st: &WireKubePeerStatus| {
        cond(st, ct::DATAPLANE_READY)
            .unwrap()
            .last_transition_time
            .clone()
    };
    f.previous = Some(flipped.clone());
    f.run.ms += 5_000;
    let later = f.build();
    assert_eq!(cond(&later, ct::DATAPLANE_READY).unwrap().status, "False");
    assert_eq!(at(&later), at(&flipped), "the flip's time, not this pass's");
    assert_eq!(later.conditions, flipped.conditions);
    // Without a previous pass (agent start), the API's copy is the reference.
    f.previous = None;
    assert_ne!(at(&f.build()), at(&flipped));
}

#[test]
fn quarantine_note_and_skipped_peers_become_conditions() {
    let mut p = WireKubePeer::new("n1", Default::default());
    let [key, peers] = key_conditions(&p, &[]);
    assert!(key.ok && peers.ok);
    p.metadata.annotations = Some(
        [(
            wirekube_crds::QUARANTINE_ANNOTATION.to_string(),
            "nodes n1, n2 report the same public key".to_string(),
        )]
        .into(),
    );
    let skipped = ["peer x: publicKey is also listed for y".to_string()];
    let [key, peers] = key_conditions(&p, &skipped);
    assert_eq!((key.ok, key.reason.as_str()), (false, "Quarantined"));
    assert!(key.message.contains("n1, n2"));
    assert_eq!((peers.ok, peers.reason.as_str()), (false, "PeersSkipped"));
    assert_eq!(peers.message, skipped[0]);
}

#[test]
fn the_status_needs_no_interface_read() {
    // Host candidates are exactly the addresses passed in: none in, none out.
    let mut f = Fixture::direct();
    f.local = Vec::new();
    let st = f.build();
    assert!(st.candidates.iter().all(|c| c.kind != CandidateKind::Host));
}
