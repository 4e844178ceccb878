use super::*;
use crate::test_objects::{peer_write, write_nodes as nodes};

const MS: fn(u64) -> Duration = Duration::from_millis;

/// Nodes and keys from `"a=ka b=kb c"`: a node without `=` has no key.
fn keys(spec: &str) -> Vec<(&str, Option<&str>)> {
    (spec.split_whitespace())
        .map(|n| match n.split_once('=') {
            Some((node, key)) => (node, Some(key)),
            None => (n, None),
        })
        .collect()
}

#[test]
fn hold_until_table() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + MS(ms);
    // (case, now, last new key, new keys in the window, keyless of 8, run since, held
    // until), in ms after t0
    type Case = (
        &'static str,
        u64,
        Option<u64>,
        usize,
        usize,
        Option<u64>,
        Option<u64>,
    );
    let cases: [Case; 15] = [
        ("no key ever arrived", 100, None, 0, 8, None, None),
        ("every node has its key", 100, Some(50), 6, 0, None, None),
        ("a mass start", 100, Some(100), 5, 3, None, Some(600)),
        (
            "half the mesh, all its keys new",
            100,
            Some(100),
            4,
            4,
            None,
            Some(600),
        ),
        ("under half the mesh", 100, Some(100), 3, 5, None, None),
        (
            "three quarters of the keys new",
            100,
            Some(100),
            6,
            1,
            None,
            Some(600),
        ),
        ("most keys known before", 100, Some(100), 4, 1, None, None),
        (
            "one key alone is no mass start",
            100,
            Some(100),
            1,
            7,
            None,
            None,
        ),
        ("keys trickling in", 400, Some(300), 1, 3, None, None),
        (
            "the run goes on with a trickle",
            400,
            Some(300),
            1,
            3,
            Some(0),
            Some(800),
        ),
        ("quiet long enough", 700, Some(100), 0, 3, Some(0), None),
        ("quiet exactly now", 600, Some(100), 0, 3, Some(0), None),
        (
            "the run reaches its limit first",
            1800,
            Some(1700),
            4,
            3,
            Some(0),
            Some(2000),
        ),
        (
            "the run is at its limit",
            2000,
            Some(1950),
            4,
            3,
            Some(0),
            None,
        ),
        (
            "the run is past its limit",
            2500,
            Some(2450),
            4,
            3,
            Some(0),
            None,
        ),
    ];
    for (case, now, last, recent, keyless, since, want) in cases {
        let seen = KeysSeen {
            now: at(now),
            last_new_key: last.map(at),
            recent_new_keys: recent,
            selected: 8,
            keyless,
            hold_since: since.map(at),
            last_join: None,
        };
        assert_eq!(
            hold_until(HoldTimes::default(), &seen),
            want.map(at),
            "{case}"
        );
    }
}

#[test]
fn half_of_a_larger_mesh() {
    let now = Instant::now();
    let seen = |recent| KeysSeen {
        now,
        last_new_key: Some(now),
        recent_new_keys: recent,
        selected: 60,
        keyless: 30,
        hold_since: None,
        last_join: None,
    };
    assert_eq!(
        hold_until(HoldTimes::default(), &seen(29)),
        None,
        "under half"
    );
    let held = hold_until(HoldTimes::default(), &seen(30));
    assert_eq!(held, Some(now + KEY_QUIET));
}

#[test]
fn the_lab_start_ups() {
    let now = Instant::now();
    let seen = |recent, selected, keyless| KeysSeen {
        now,
        last_new_key: Some(now),
        recent_new_keys: recent,
        selected,
        keyless,
        hold_since: None,
        last_join: None,
    };
    // A mesh applied to 60 running agents: 49 keys within 1.5 s, 11 to come.
    let held = hold_until(HoldTimes::default(), &seen(49, 60, 11));
    assert_eq!(held, Some(now + KEY_QUIET));
    // 50 nodes booting: 40 keys over 4 s, 17 of them in the last 2 s.
    assert_eq!(hold_until(HoldTimes::default(), &seen(17, 50, 10)), None);
}

#[test]
fn no_run_begins_while_nodes_join() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + MS(ms);
    // A mass start at 3000 ms (6 of 8 keys new), with the last node joining at `join`.
    let seen = |join: Option<u64>, since: Option<u64>| KeysSeen {
        now: at(3000),
        last_new_key: Some(at(3000)),
        recent_new_keys: 6,
        selected: 8,
        keyless: 2,
        hold_since: since.map(at),
        last_join: join.map(at),
    };
    let times = HoldTimes::default();
    assert_eq!(
        hold_until(times, &seen(None, None)),
        Some(at(3500)),
        "no join"
    );
    assert_eq!(
        hold_until(times, &seen(Some(500), None)),
        Some(at(3500)),
        "long ago"
    );
    assert_eq!(
        hold_until(times, &seen(Some(1000), None)),
        None,
        "at the window's edge"
    );
    assert_eq!(hold_until(times, &seen(Some(2900), None)), None, "just now");
    let run = hold_until(times, &seen(Some(2900), Some(2800)));
    assert_eq!(run, Some(at(3500)), "a run already begun goes on");
}

fn write(node: &str, stored: bool) -> PeerWrite {
    PeerWrite {
        observed_rv: stored.then(|| "7".to_string()),
        ..peer_write(node, "peers.publicKey")
    }
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
    assert_eq!(k.observe("m", keys("a=ka b=kb c"), t0), None);
    // The same keys later: nothing arrived.
    assert_eq!(k.observe("m", keys("a=ka b=kb c"), t0 + MS(10)), None);
}

#[test]
fn a_mass_start_holds_until_every_key_is_in() {
    let k = KeyArrivals::default();
    let t0 = Instant::now();
    let none = keys("a b c d");
    assert_eq!(k.observe("m", none, t0), None);

    // a's and b's keys together: half the mesh within a second, c and d without one.
    let t1 = t0 + MS(100);
    let two = keys("a=ka b=kb c d");
    assert_eq!(k.observe("m", two, t1), Some(t1 + KEY_QUIET));

    // c's key extends the wait.
    let t2 = t1 + MS(200);
    let three = keys("a=ka b=kb c=kc d");
    assert_eq!(k.observe("m", three, t2), Some(t2 + KEY_QUIET));

    // The last key: nobody lacks one, updates go out.
    let t3 = t2 + MS(100);
    let all = keys("a=ka b=kb c=kc d=kd");
    assert_eq!(k.observe("m", all, t3), None);

    // Later one rotated key, and a new node e without one: nothing waits.
    let t4 = t3 + MS(5000);
    let rotated = keys("a=ka2 b=kb c=kc d=kd e");
    assert_eq!(k.observe("m", rotated, t4), None);

    // Another mesh is its own: its first pass knows its keys.
    assert_eq!(k.observe("other", keys("x=kx y"), t4), None);
}

#[test]
fn keys_trickling_in_never_hold() {
    // 20 nodes booting one after another, a key every 300 ms: at most 7 in the window, and
    // soon fewer than three quarters of the keys known.
    let k = KeyArrivals::default();
    let t0 = Instant::now();
    let names: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
    let nodes = |keyed: usize| -> Vec<(&str, Option<&str>)> {
        (names.iter().enumerate())
            .map(|(i, n)| (n.as_str(), (i < keyed).then_some("k")))
            .collect()
    };
    assert_eq!(k.observe("m", nodes(0), t0), None);
    for i in 1..20 {
        let now = t0 + MS(300 * i as u64);
        assert_eq!(k.observe("m", nodes(i), now), None, "key {i}");
    }
}

#[test]
fn a_run_of_holds_ends_after_max_hold() {
    let k = KeyArrivals::default();
    let t0 = Instant::now();
    assert_eq!(
        k.observe("m", [("n0", None), ("n1", None), ("z", None)], t0),
        None
    );
    // Two keys start the run; then a key every 300 ms, one node never publishing: the run is
    // cut at MAX_HOLD.
    let start = t0 + MS(300);
    let mut now = t0;
    let mut last_until = None;
    for i in 1..=8u64 {
        now = t0 + MS(300 * i);
        let keyed: Vec<String> = (0..=i).map(|j| format!("n{j}")).collect();
        let nodes: Vec<(&str, Option<&str>)> = (keyed.iter())
            .map(|n| (n.as_str(), Some("k")))
            .chain([("z", None)])
            .collect();
        last_until = k.observe("m", nodes, now);
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

#[test]
fn keys_of_nodes_still_joining_never_hold() {
    // A cluster booting: nodes join the selection as their keys arrive.
    let k = KeyArrivals::default();
    let t0 = Instant::now();
    assert_eq!(k.observe("m", keys("a"), t0), None);
    let t1 = t0 + MS(100);
    let nodes = keys("a=ka b=kb c");
    assert_eq!(k.observe("m", nodes, t1), None, "b and c just joined");
    let t2 = t1 + BURST_WINDOW + MS(1);
    // Three new keys of three, half the mesh: a mass start but for d's join.
    let nodes = keys("a=ka1 b=kb2 c=kc d");
    assert_eq!(k.observe("m", nodes, t2), None, "d just joined");
    // Once the selection has been still for the window, a mass start holds.
    let t3 = t2 + BURST_WINDOW + MS(1);
    let nodes = keys("a=ka2 b=kb3 c=kc2 d");
    assert_eq!(k.observe("m", nodes, t3), Some(t3 + KEY_QUIET));
}
