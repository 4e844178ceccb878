//! The dataplane touches only the routes and rules it created (root only): another tunnel
//! (wg-quick's defaults: table 51820, `not fwmark 51820 lookup 51820`) sharing the host and
//! even the table keeps its state through reconcile and cleanup, and state of agents from
//! before the ownership mark is adopted.

mod common;

use std::path::PathBuf;

use common::*;
use wirekube_dataplane::{Dataplane, DataplaneError, EngineChoice, ROUTE_PROTOCOL};

fn wggo() -> EngineChoice {
    EngineChoice::WireguardGo {
        binary: PathBuf::from("/usr/bin/wireguard-go"),
    }
}

fn ip(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "-n", ns];
    v.extend_from_slice(args);
    run(&v)
}

/// Like `ip` but empty when the command fails (an IPv6 table that does not exist).
fn ip_or_empty(ns: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Routes of both families in `table`, and the rules, as `ip` prints them.
fn routing(ns: &str, table: u32) -> (String, String, String) {
    let t = table.to_string();
    (
        ip(ns, &["-4", "route", "show", "table", &t]),
        ip_or_empty(ns, &["-6", "route", "show", "table", &t]),
        ip(ns, &["rule", "show"]),
    )
}

/// Every route and rule carrying WireKube's protocol (empty when none is left).
fn ours_left(ns: &str) -> String {
    let p = ROUTE_PROTOCOL.to_string();
    let mut s = ip(ns, &["-4", "route", "show", "table", "all", "proto", &p]);
    s += &ip_or_empty(ns, &["-6", "route", "show", "table", "all", "proto", &p]);
    for fam in ["-4", "-6"] {
        let rules = ip(ns, &[fam, "-d", "rule", "show"]);
        for l in rules.lines().filter(|l| l.ends_with(&format!("proto {p}"))) {
            s += l;
            s += "\n";
        }
    }
    s
}

#[test]
fn foreign_routes_and_rules_survive_reconcile_and_cleanup() {
    let lab = Lab::new("own");
    let ns = lab.a.ns.clone();
    let (sk, _) = keypair(11);
    let (_, pkb) = keypair(12);
    let (_, pkc) = keypair(13);
    // The same table as wg-quick (TABLE is 51820): the worst case.
    let ia = iface(&lab.ifname("a"), sk, "100.96.0.1");
    // wg-quick's interface (a veth stands in: no WireGuard module here) with its routes and
    // rules, made the way wg-quick makes them.
    ip(
        &ns,
        &[
            "link", "add", "wgq0", "type", "veth", "peer", "name", "wgq1",
        ],
    );
    ip(&ns, &["link", "set", "wgq0", "up"]);
    let t = TABLE.to_string();
    ip(
        &ns,
        &["route", "add", "10.9.0.0/24", "dev", "wgq0", "table", &t],
    );
    ip(
        &ns,
        &["route", "add", "100.96.0.3/32", "dev", "wgq0", "table", &t],
    );
    ip(
        &ns,
        &[
            "-6",
            "route",
            "add",
            "fd09::/64",
            "dev",
            "wgq0",
            "table",
            &t,
        ],
    );
    ip(&ns, &["rule", "add", "not", "fwmark", "51820", "table", &t]);
    ip(
        &ns,
        &["rule", "add", "table", "main", "suppress_prefixlength", "0"],
    );
    let before = routing(&ns, TABLE);

    let pb = peer(pkb, Some(lab.ep("b").as_str()), "100.96.0.2");
    let pc = peer(pkc, Some("192.0.2.3:51820"), "100.96.0.3");
    let conflict = in_ns(&ns, || async {
        let mut dp = Dataplane::open(wggo(), &ia).await.unwrap();
        let r = dp.reconcile(&ia, std::slice::from_ref(&pb)).await.unwrap();
        assert!(r.netlink_changes >= 4, "{r:?}");
        let again = dp.reconcile(&ia, std::slice::from_ref(&pb)).await.unwrap();
        assert!(again.is_noop(), "repeat reconcile wrote: {again:?}");
        // 100.96.0.3/32 is wg-quick's route in this table: reported, never replaced; the
        // other peer's route and the rules are still in place.
        let both = [pb.clone(), pc.clone()];
        let e = dp.reconcile(&ia, &both).await.unwrap_err();
        assert!(matches!(e, DataplaneError::RouteConflict { .. }), "{e:?}");
        let again = dp.reconcile(&ia, &both).await.unwrap_err();
        assert_eq!(e.to_string(), again.to_string());
        let r = dp.reconcile(&ia, std::slice::from_ref(&pb)).await.unwrap();
        // Only WireGuard's peer removal: no route was written for the contested prefix.
        assert_eq!(r.netlink_changes, 0, "{r:?}");
        e.to_string()
    });
    assert!(
        conflict.contains("100.96.0.3/32 table 51820 proto 3 (boot) dev wgq0"),
        "{conflict}"
    );
    assert!(conflict.contains("--table"), "{conflict}");

    let (v4, v6, rules) = routing(&ns, TABLE);
    for line in before.0.lines().chain(before.1.lines()) {
        assert!(
            v4.contains(line) || v6.contains(line),
            "lost {line:?}: {v4}{v6}"
        );
    }
    assert!(
        v4.contains(&format!("100.96.0.2 dev {} proto 87", ia.name)),
        "{v4}"
    );
    assert!(
        rules.contains("not from all fwmark 0xca6c lookup 51820"),
        "{rules}"
    );
    assert!(
        rules.contains("lookup main suppress_prefixlength 0"),
        "{rules}"
    );
    assert!(
        rules.contains(&format!("{PRIO}:\tfrom all lookup {TABLE} proto 87")),
        "{rules}"
    );

    in_ns(&ns, || async {
        Dataplane::cleanup(&ia.name, TABLE, PRIO).await.unwrap();
        Dataplane::cleanup(&ia.name, TABLE, PRIO).await.unwrap();
    });
    assert_eq!(routing(&ns, TABLE), before, "cleanup changed foreign state");
    assert_eq!(ours_left(&ns), "");
}

#[test]
fn state_of_agents_before_the_mark_is_adopted() {
    let lab = Lab::new("mig");
    let ns = lab.a.ns.clone();
    let (sk, _) = keypair(14);
    let (_, pkb) = keypair(15);
    let ia = iface(&lab.ifname("a"), sk, "100.96.0.1");
    let pb = [peer(pkb, Some(lab.ep("b").as_str()), "100.96.0.2")];
    in_ns(&ns, || async {
        let mut dp = Dataplane::open(wggo(), &ia).await.unwrap();
        dp.reconcile(&ia, &[]).await.unwrap();
    });
    // Replace our rules by unmarked ones and add an unmarked route, exactly as agents
    // before the mark made them (rtnetlink's default protocol for routes was static).
    let (t, p, p1) = (TABLE.to_string(), PRIO.to_string(), (PRIO - 1).to_string());
    let proto = ROUTE_PROTOCOL.to_string();
    while try_run(&["ip", "-n", &ns, "rule", "del", "protocol", &proto]) {}
    ip(&ns, &["rule", "add", "pref", &p, "table", &t]);
    ip(
        &ns,
        &[
            "rule", "add", "pref", &p1, "fwmark", "0xca6c", "table", "main",
        ],
    );
    let dev = ia.name.as_str();
    ip(
        &ns,
        &[
            "route",
            "add",
            "100.96.0.2/32",
            "dev",
            dev,
            "table",
            &t,
            "proto",
            "static",
            "scope",
            "link",
            "src",
            "100.96.0.1",
        ],
    );
    // And a stale one in the old default table (here the same table: another prefix).
    ip(
        &ns,
        &[
            "route",
            "add",
            "100.96.0.9/32",
            "dev",
            dev,
            "table",
            &t,
            "proto",
            "static",
        ],
    );
    in_ns(&ns, || async {
        let mut dp = Dataplane::open(wggo(), &ia).await.unwrap();
        let r = dp.reconcile(&ia, &pb).await.unwrap();
        // Route re-marked in place (1), stale route (1), two rules deleted and re-added (4).
        assert_eq!(r.netlink_changes, 6, "{r:?}");
        assert!(dp.reconcile(&ia, &pb).await.unwrap().is_noop());
    });
    let (v4, _, rules) = routing(&ns, TABLE);
    assert_eq!(
        v4.trim(),
        format!("100.96.0.2 dev {dev} proto 87 scope link src 100.96.0.1")
    );
    let unmarked: Vec<&str> = rules
        .lines()
        .filter(|l| l.starts_with(&format!("{p}:")) || l.starts_with(&format!("{p1}:")))
        .filter(|l| !l.ends_with("proto 87"))
        .collect();
    assert!(unmarked.is_empty(), "{rules}");
    in_ns(&ns, || async {
        Dataplane::cleanup(&ia.name, TABLE, PRIO).await.unwrap();
    });
    assert_eq!(ours_left(&ns), "");
}

#[test]
fn changing_table_and_priority_leaves_nothing_behind() {
    let lab = Lab::new("mov");
    let ns = lab.a.ns.clone();
    let (sk, _) = keypair(16);
    let (_, pkb) = keypair(17);
    let mut ia = iface(&lab.ifname("a"), sk, "100.96.0.1");
    let pb = [peer(pkb, Some(lab.ep("b").as_str()), "100.96.0.2")];
    let moved = in_ns(&ns, || {
        let ia = &mut ia;
        async move {
            let mut dp = Dataplane::open(wggo(), ia).await.unwrap();
            dp.reconcile(ia, &pb).await.unwrap();
            ia.table = 4242;
            ia.rule_priority = 4000;
            let r = dp.reconcile(ia, &pb).await.unwrap();
            assert!(dp.reconcile(ia, &pb).await.unwrap().is_noop());
            r
        }
    });
    // One route added and one deleted, two rules added and two deleted.
    assert_eq!(moved.netlink_changes, 6, "{moved:?}");
    let (old_v4, _, rules) = routing(&ns, TABLE);
    assert_eq!(old_v4, "");
    let (new_v4, _, _) = routing(&ns, 4242);
    assert!(new_v4.contains("100.96.0.2 dev"), "{new_v4}");
    assert!(!rules.contains(&TABLE.to_string()), "{rules}");
    assert!(
        rules.contains("4000:\tfrom all lookup 4242 proto 87"),
        "{rules}"
    );
    assert!(
        rules.contains("3999:\tfrom all fwmark 0xca6c lookup main proto 87"),
        "{rules}"
    );
    in_ns(&ns, || async {
        Dataplane::cleanup(&ia.name, ia.table, ia.rule_priority)
            .await
            .unwrap();
    });
    assert_eq!(ours_left(&ns), "");
}
