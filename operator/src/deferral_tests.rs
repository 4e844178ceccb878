use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wirekube_crds::{PathReason, PeerConnection, PlannedPath, WireKubePeerStatus};

use super::*;
use crate::spec_changes::spec_changes;
use crate::test_objects::{peer_write, write_nodes as nodes};

const EP: &str = "198.18.0.21:20502";

fn entry(name: &str, endpoint: Option<&str>) -> PeerEntry {
    PeerEntry {
        name: name.into(),
        public_key: format!("{name}-key"),
        allowed_ips: vec!["10.99.0.2/32".into()],
        endpoint: endpoint.map(String::from),
        path: PlannedPath::Direct,
        reason: PathReason::ConeSymmetric,
        initiate: false,
        punch_toward: None,
        persistent_keepalive: 10,
    }
}

fn spec(peers: Vec<PeerEntry>) -> WireKubePeerSpec {
    WireKubePeerSpec {
        mesh: "default".into(),
        mtu: 1420,
        peers,
        ..WireKubePeerSpec::default()
    }
}

fn conn(name: &str, path: ActualPath, endpoint: Option<&str>) -> PeerConnection {
    PeerConnection {
        name: name.into(),
        path,
        reason: None,
        endpoint: endpoint.map(String::from),
        last_handshake: Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
        rx_bytes: 1,
        tx_bytes: 1,
        fallback: false,
        transitions: 1,
        last_transition: None,
        rtt_micros: None,
    }
}

/// Node `a` stores `stored` and reports `connections`.
fn peer(stored: WireKubePeerSpec, connections: Vec<PeerConnection>) -> WireKubePeer {
    let mut p = WireKubePeer::new("a", stored);
    p.status = Some(WireKubePeerStatus {
        connections,
        ..WireKubePeerStatus::default()
    });
    p
}

#[test]
fn records_only_table() {
    let before = spec(vec![entry("b", None), entry("sym", None)]);
    let after = spec(vec![entry("b", None), entry("sym", Some(EP))]);
    let direct = vec![conn("sym", ActualPath::Direct, Some(EP))];
    let mut other_field = after.clone();
    other_field.peers[1].initiate = true;
    let mut other_spec_field = after.clone();
    other_spec_field.mtu = 1380;
    let only_sym = spec(vec![entry("sym", Some(EP))]);
    let cases: Vec<(&str, WireKubePeer, &WireKubePeerSpec, bool)> = vec![
        (
            "the endpoint the node reports, Direct",
            peer(before.clone(), direct.clone()),
            &after,
            true,
        ),
        (
            "no change at all",
            peer(after.clone(), direct.clone()),
            &after,
            false,
        ),
        (
            "reported on the relay",
            peer(
                before.clone(),
                vec![conn("sym", ActualPath::Relay, Some(EP))],
            ),
            &after,
            false,
        ),
        (
            "reported Connecting",
            peer(
                before.clone(),
                vec![conn("sym", ActualPath::Connecting, Some(EP))],
            ),
            &after,
            false,
        ),
        (
            "reported over another address",
            peer(
                before.clone(),
                vec![conn("sym", ActualPath::Direct, Some("198.18.0.21:1"))],
            ),
            &after,
            false,
        ),
        (
            "reported without an endpoint",
            peer(before.clone(), vec![conn("sym", ActualPath::Direct, None)]),
            &after,
            false,
        ),
        (
            "no status",
            WireKubePeer::new("a", before.clone()),
            &after,
            false,
        ),
        (
            "the connection is another peer's",
            peer(
                before.clone(),
                vec![conn("b", ActualPath::Direct, Some(EP))],
            ),
            &after,
            false,
        ),
        (
            "another field of the entry too",
            peer(before.clone(), direct.clone()),
            &other_field,
            false,
        ),
        (
            "a field outside the entries too",
            peer(before.clone(), direct.clone()),
            &other_spec_field,
            false,
        ),
        (
            "the endpoint removed",
            peer(after.clone(), direct.clone()),
            &before,
            false,
        ),
        (
            "an entry added",
            peer(spec(vec![entry("b", None)]), direct.clone()),
            &after,
            false,
        ),
        (
            "an entry removed",
            peer(after.clone(), direct.clone()),
            &only_sym,
            false,
        ),
        (
            "entries reordered",
            peer(
                spec(vec![entry("sym", None), entry("b", None)]),
                direct.clone(),
            ),
            &after,
            false,
        ),
    ];
    for (what, stored, desired, want) in cases {
        let changes = spec_changes(Some(&stored.spec), desired);
        assert_eq!(records_only(&stored, desired, &changes), want, "{what}");
    }
}

fn write(node: &str, records_only: bool) -> PeerWrite {
    PeerWrite {
        records_only,
        ..peer_write(node, "peers.endpoint")
    }
}

#[test]
fn records_wait_from_first_sight_and_others_go_at_once() {
    let t0 = Instant::now();
    let mut since = BTreeMap::new();
    let (now, held) = split(
        vec![write("a", false), write("b", true)],
        &mut since,
        t0,
        RECORD_DELAY,
    );
    assert_eq!(nodes(&now), ["a"]);
    assert_eq!(
        held,
        Held {
            count: 1,
            wake: Some(t0 + RECORD_DELAY)
        }
    );

    // Seen again later: still waiting for the first sight's delay, not a new one.
    let t1 = t0 + Duration::from_secs(5);
    let (now, held) = split(
        vec![write("b", true), write("c", true)],
        &mut since,
        t1,
        RECORD_DELAY,
    );
    assert!(now.is_empty());
    assert_eq!(
        held,
        Held {
            count: 2,
            wake: Some(t0 + RECORD_DELAY)
        }
    );

    // b falls due; c still waits.
    let (now, held) = split(
        vec![write("b", true), write("c", true)],
        &mut since,
        t0 + RECORD_DELAY,
        RECORD_DELAY,
    );
    assert_eq!(nodes(&now), ["b"]);
    assert_eq!(
        held,
        Held {
            count: 1,
            wake: Some(t1 + RECORD_DELAY)
        }
    );
}

#[test]
fn a_change_that_matters_takes_the_record_along_and_forgets_it() {
    let t0 = Instant::now();
    let mut since = BTreeMap::new();
    split(vec![write("b", true)], &mut since, t0, RECORD_DELAY);
    // b's next plan changes more than the endpoint: written now.
    let (now, held) = split(
        vec![write("b", false)],
        &mut since,
        t0 + Duration::from_secs(1),
        RECORD_DELAY,
    );
    assert_eq!(nodes(&now), ["b"]);
    assert_eq!(held, Held::default());
    assert!(since.is_empty());
    // Only a record again: a new wait from now.
    let t2 = t0 + Duration::from_secs(2);
    let (_, held) = split(vec![write("b", true)], &mut since, t2, RECORD_DELAY);
    assert_eq!(held.wake, Some(t2 + RECORD_DELAY));
}

#[test]
fn a_write_no_longer_needed_is_forgotten() {
    let t0 = Instant::now();
    let mut since = BTreeMap::new();
    split(vec![write("b", true)], &mut since, t0, RECORD_DELAY);
    let (now, held) = split(
        vec![],
        &mut since,
        t0 + Duration::from_secs(1),
        RECORD_DELAY,
    );
    assert!(now.is_empty());
    assert_eq!(held, Held::default());
    assert!(since.is_empty());
}

#[test]
fn meshes_keep_their_own_times() {
    let t0 = Instant::now();
    let d = Deferrals::new(RECORD_DELAY);
    d.split("m1", vec![write("b", true)], t0);
    // A pass of another mesh, without b, does not forget m1's b.
    d.split("m2", vec![write("x", false)], t0);
    assert_eq!(d.held("m1", t0).count, 1);
    assert_eq!(d.held("m2", t0), Held::default());
    // Once due, it no longer counts as held (the pass that found it due wrote it).
    assert_eq!(d.held("m1", t0 + RECORD_DELAY), Held::default());
}
