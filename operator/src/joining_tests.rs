use wirekube_crds::WireKubePeerSpec;

use super::*;

const MS: fn(u64) -> Duration = Duration::from_millis;

#[test]
fn hold_until_table() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + MS(ms);
    // (case, now, last new key, keyless nodes, hold since, held until), in ms after t0
    type Case = (
        &'static str,
        u64,
        Option<u64>,
        usize,
        Option<u64>,
        Option<u64>,
    );
    let cases: [Case; 9] = [
        ("no key ever arrived", 100, None, 5, None, None),
        ("every node has its key", 100, Some(50), 0, None, None),
        (
            "a key just arrived, others missing",
            100,
            Some(100),
            3,
            None,
            Some(600),
        ),
        ("keys still arriving", 400, Some(300), 3, Some(0), Some(800)),
        ("quiet long enough", 700, Some(100), 3, Some(0), None),
        ("quiet exactly now", 600, Some(100), 3, Some(0), None),
        (
            "the run reaches its limit first",
            1800,
            Some(1700),
            3,
            Some(0),
            Some(2000),
        ),
        (
            "the run is at its limit",
            2000,
            Some(1950),
            3,
            Some(0),
            None,
        ),
        (
            "the run is past its limit",
            2500,
            Some(2450),
            3,
            Some(0),
            None,
        ),
    ];
    for (case, now, last, keyless, since, want) in cases {
        let got = hold_until(
            HoldTimes::default(),
            at(now),
            last.map(at),
            keyless,
            since.map(at),
        );
        assert_eq!(got, want.map(at), "{case}");
    }
}

fn write(node: &str, stored: bool) -> PeerWrite {
    PeerWrite {
        node: node.into(),
        node_uid: format!("{node}-uid"),
        spec: WireKubePeerSpec::default(),
        quarantine: None,
        observed_rv: stored.then(|| "7".to_string()),
        changes: vec!["peers.publicKey"],
        records_only: false,
    }
}

fn nodes(w: &[PeerWrite]) -> Vec<&str> {
    w.iter().map(|w| w.node.as_str()).collect()
}

#[test]
fn split_holds_updates_only() {
    let until = Instant::now() + MS(300);
    let all = || vec![write("a", true), write("b", false), write("c", true)];

    let (now, held) = split(all(), Some(until));
    assert_eq!(nodes(&now), ["b"], "a new peer is created at once");
    assert_eq!(
        held,
        Held {
            count: 2,
            wake: Some(until)
        }
    );

    let (now, held) = split(all(), None);
    assert_eq!(nodes(&now), ["a", "b", "c"]);
    assert_eq!(held, Held::default());

    let (now, held) = split(vec![write("b", false)], Some(until));
    assert_eq!(nodes(&now), ["b"]);
    assert_eq!(held, Held::default(), "nothing held, no wake");
}

#[test]
fn first_pass_takes_keys_as_known() {
    let k = KeyArrivals::default();
    let t0 = Instant::now();
    // An operator starting over a running mesh with one node still without a key.
    let until = k.observe("m", [("a", Some("ka")), ("b", Some("kb")), ("c", None)], t0);
    assert_eq!(until, None);
    // The same keys later: nothing arrived.
    let until = k.observe(
        "m",
        [("a", Some("ka")), ("b", Some("kb")), ("c", None)],
        t0 + MS(10),
    );
    assert_eq!(until, None);
}

#[test]
fn new_and_changed_keys_hold_while_nodes_lack_one() {
    let k = KeyArrivals::default();
    let t0 = Instant::now();
    assert_eq!(
        k.observe("m", [("a", None), ("b", None), ("c", None)], t0),
        None
    );

    // a's first key: b and c have none yet.
    let t1 = t0 + MS(100);
    let until = k.observe("m", [("a", Some("ka")), ("b", None), ("c", None)], t1);
    assert_eq!(until, Some(t1 + KEY_QUIET));

    // b's key extends the wait.
    let t2 = t1 + MS(200);
    let until = k.observe("m", [("a", Some("ka")), ("b", Some("kb")), ("c", None)], t2);
    assert_eq!(until, Some(t2 + KEY_QUIET));

    // The last key: nobody lacks one, updates go out.
    let t3 = t2 + MS(100);
    let all = [("a", Some("ka")), ("b", Some("kb")), ("c", Some("kc"))];
    assert_eq!(k.observe("m", all, t3), None);

    // A rotated key counts as new; with d joined without a key, it holds again.
    let t4 = t3 + MS(5000);
    let rotated = [
        ("a", Some("ka2")),
        ("b", Some("kb")),
        ("c", Some("kc")),
        ("d", None),
    ];
    assert_eq!(k.observe("m", rotated, t4), Some(t4 + KEY_QUIET));

    // Another mesh is its own: its first pass knows its keys.
    assert_eq!(
        k.observe("other", [("x", Some("kx")), ("y", None)], t4),
        None
    );
}

#[test]
fn a_run_of_holds_ends_after_max_hold() {
    let k = KeyArrivals::default();
    let t0 = Instant::now();
    assert_eq!(k.observe("m", [("n0", None), ("z", None)], t0), None);
    // A key every 300 ms, one node never publishing: the run starts at the first and is cut
    // at MAX_HOLD.
    let mut now = t0;
    let mut last_until = None;
    for i in 1..=8u64 {
        now = t0 + MS(300 * i);
        let keyed: Vec<String> = (0..i).map(|j| format!("n{j}")).collect();
        let nodes: Vec<(&str, Option<&str>)> = (keyed.iter())
            .map(|n| (n.as_str(), Some("k")))
            .chain([("z", None)])
            .collect();
        last_until = k.observe("m", nodes, now);
        let start = t0 + MS(300);
        if now < start + MAX_HOLD {
            let want = (now + KEY_QUIET).min(start + MAX_HOLD);
            assert_eq!(last_until, Some(want), "at {i}");
        }
    }
    assert_eq!(now, t0 + MS(2400));
    assert_eq!(
        last_until, None,
        "2 s after the run began, the updates go out"
    );
}
