//! The kernel WireGuard engine in real network namespaces (root, and a kernel with the
//! WireGuard module). The test machines have no such module, so these tests are `#[ignore]`d
//! in a plain `cargo test` and run by `make test-kernel` (`scripts/test-kernel.sh`), which boots
//! Debian's kernel in a QEMU VM over the host's root filesystem and runs this binary there
//! with `--ignored`. Outside such a VM they fail: a kernel test must never pass without a kernel.

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::*;
use wirekube_dataplane::{Dataplane, EngineChoice, EngineKind};

fn wggo() -> EngineChoice {
    EngineChoice::WireguardGo {
        binary: PathBuf::from("/usr/bin/wireguard-go"),
    }
}

/// `ip -d link show` of `name` in `ns`: the link kind and MTU.
fn link(ns: &str, name: &str) -> String {
    run(&["ip", "-n", ns, "-d", "link", "show", name])
}

fn table(ns: &str) -> String {
    run(&["ip", "-n", ns, "route", "show", "table", &TABLE.to_string()])
}

#[test]
#[ignore = "kernel WireGuard: run by `make test-kernel` in a VM"]
fn kernel_tunnel_reconcile_adopt_remove_cleanup() {
    let lab = Lab::new("ktun");
    let (ska, pka) = keypair(11);
    let (skb, pkb) = keypair(12);
    let ia = iface(&lab.ifname("a"), ska, "100.96.0.1");
    let ib = iface(&lab.ifname("b"), skb, "100.96.0.2");
    let pa = vec![peer(pkb, Some(lab.ep("b").as_str()), "100.96.0.2")];
    let pb = vec![peer(pka, Some(lab.ep("a").as_str()), "100.96.0.1")];
    let main_before = run(&["ip", "-n", &lab.a.ns, "route", "show", "table", "main"]);

    // B asks for the kernel explicitly; A says auto, which must pick the kernel here.
    in_ns(&lab.b.ns, || async {
        let mut dp = Dataplane::open(EngineChoice::Kernel, &ib).await.unwrap();
        assert_eq!(dp.engine(), EngineKind::Kernel);
        assert!(!dp.selection().adopted);
        let r = dp.reconcile(&ib, &pb).await.unwrap();
        assert!(r.wireguard_changes >= 2 && r.netlink_changes >= 4, "{r:?}");
    });
    in_ns(&lab.a.ns, || async {
        let mut dp = Dataplane::open(EngineChoice::Auto, &ia).await.unwrap();
        assert_eq!(dp.engine(), EngineKind::Kernel, "{:?}", dp.selection());
        assert_eq!(dp.selection().reason, "kernel WireGuard available");
        dp.reconcile(&ia, &pa).await.unwrap();
        let again = dp.reconcile(&ia, &pa).await.unwrap();
        assert!(
            again.is_noop(),
            "repeat reconcile changed things: {again:?}"
        );
    });
    // A kernel link, not a TUN device of a userspace daemon, with our MTU and address.
    let l = link(&lab.a.ns, &ia.name);
    assert!(l.contains("\n    wireguard "), "not a kernel link: {l}");
    assert!(l.contains("mtu 1420"), "{l}");
    let addr = run(&["ip", "-n", &lab.a.ns, "-4", "-o", "addr", "show", &ia.name]);
    assert!(addr.contains("100.96.0.1/16"), "{addr}");
    assert!(
        !std::path::Path::new(&format!("/var/run/wireguard/{}.sock", ia.name)).exists(),
        "a kernel link has no UAPI socket"
    );
    assert!(lab.ping(&lab.a, "100.96.0.2", 15), "no ping over the mesh");
    assert!(lab.ping(&lab.b, "100.96.0.1", 3));

    // Routes and rules as with the userspace engines.
    assert!(
        table(&lab.a.ns).contains("100.96.0.2 dev"),
        "{}",
        table(&lab.a.ns)
    );
    let rules = run(&["ip", "-n", &lab.a.ns, "rule", "show"]);
    assert!(
        rules.contains(&format!("{PRIO}:\tfrom all lookup {TABLE}")),
        "{rules}"
    );
    assert!(
        rules.contains(&format!(
            "{}:\tfrom all fwmark 0xca6c lookup main",
            PRIO - 1
        )),
        "{rules}"
    );
    assert_eq!(
        run(&["ip", "-n", &lab.a.ns, "route", "show", "table", "main"]),
        main_before
    );
    let wg = run(&[
        "ip", "netns", "exec", &lab.a.ns, "wg", "show", &ia.name, "fwmark",
    ]);
    assert_eq!(wg.trim(), "0xca6c");
    let port = run(&[
        "ip",
        "netns",
        "exec",
        &lab.a.ns,
        "wg",
        "show",
        &ia.name,
        "listen-port",
    ]);
    assert_eq!(port.trim(), "51820");

    // Stats through generic netlink: a recent handshake and bytes both ways.
    in_ns(&lab.a.ns, || async {
        let dp = Dataplane::open(EngineChoice::Kernel, &ia).await.unwrap();
        let st = dp.peer_stats().await.unwrap();
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].public_key, pkb);
        let hs = st[0].last_handshake.expect("handshake");
        let age = SystemTime::now().duration_since(hs).unwrap();
        assert!(age < Duration::from_secs(60), "handshake age {age:?}");
        assert!(st[0].rx_bytes > 0 && st[0].tx_bytes > 0, "{st:?}");
        assert_eq!(st[0].endpoint, Some(lab.ep("b").parse().unwrap()));
    });

    // Restart: a new Dataplane adopts the kernel link (Auto and Kernel alike); the same input
    // writes nothing, and the tunnel works throughout.
    for choice in [EngineChoice::Auto, EngineChoice::Kernel] {
        in_ns(&lab.a.ns, || async {
            let mut dp = Dataplane::open(choice.clone(), &ia).await.unwrap();
            assert!(dp.selection().adopted, "{:?}", dp.selection());
            assert_eq!(dp.engine(), EngineKind::Kernel);
            let r = dp.reconcile(&ia, &pa).await.unwrap();
            assert!(r.is_noop(), "reconcile after restart: {r:?}");
        });
    }
    // A userspace choice refuses to take over the kernel link instead of deleting it.
    in_ns(&lab.a.ns, || async {
        let e = Dataplane::open(wggo(), &ia).await.err();
        assert!(e.is_some(), "wireguard-go replaced a live kernel link");
    });
    let key = run(&[
        "ip",
        "netns",
        "exec",
        &lab.a.ns,
        "wg",
        "show",
        &ia.name,
        "public-key",
    ]);
    assert_eq!(key.trim(), b64(&pka));
    assert!(
        lab.ping(&lab.a, "100.96.0.2", 3),
        "tunnel lost across restart"
    );

    // A changed listen port is applied (an interface-level write: the kernel backend re-adds
    // the peers it wipes in the same reconcile) and the tunnel comes back on the new port.
    let mut ib2 = ib.clone();
    ib2.listen_port = 51821;
    in_ns(&lab.b.ns, || async {
        let mut dp = Dataplane::open(EngineChoice::Kernel, &ib2).await.unwrap();
        let r = dp.reconcile(&ib2, &pb).await.unwrap();
        assert!(r.wireguard_changes >= 2, "{r:?}");
        assert!(dp.reconcile(&ib2, &pb).await.unwrap().is_noop());
        let st = dp.peer_stats().await.unwrap();
        assert_eq!(st.len(), 1, "peer not re-added after the port change");
    });
    let port = run(&[
        "ip",
        "netns",
        "exec",
        &lab.b.ns,
        "wg",
        "show",
        &ib.name,
        "listen-port",
    ]);
    assert_eq!(port.trim(), "51821");
    // B initiates towards A's known endpoint; A roams to B's new port.
    assert!(
        lab.ping(&lab.b, "100.96.0.1", 15),
        "no tunnel after port change"
    );

    // Removing the peer removes it from WireGuard and its route.
    in_ns(&lab.a.ns, || async {
        let mut dp = Dataplane::open(EngineChoice::Kernel, &ia).await.unwrap();
        let r = dp.reconcile(&ia, &[]).await.unwrap();
        assert_eq!(r.wireguard_changes, 1, "{r:?}");
        assert_eq!(r.netlink_changes, 1, "{r:?}");
    });
    let peers = run(&[
        "ip", "netns", "exec", &lab.a.ns, "wg", "show", &ia.name, "peers",
    ]);
    assert!(peers.trim().is_empty(), "peer still present: {peers}");
    assert!(table(&lab.a.ns).trim().is_empty(), "route still present");
    assert!(!lab.ping(&lab.a, "100.96.0.2", 1));

    // Cleanup removes the link, routes and rules.
    in_ns(&lab.a.ns, || async {
        Dataplane::cleanup(&ia.name, TABLE, PRIO).await.unwrap();
        Dataplane::cleanup(&ia.name, TABLE, PRIO).await.unwrap(); // idempotent
    });
    assert!(!try_run(&["ip", "-n", &lab.a.ns, "link", "show", &ia.name]));
    let rules = run(&["ip", "-n", &lab.a.ns, "rule", "show"]);
    assert!(
        !rules.contains(&TABLE.to_string()) && !rules.contains("0xca6c"),
        "{rules}"
    );
    assert_eq!(
        run(&["ip", "-n", &lab.a.ns, "route", "show", "table", "main"]),
        main_before
    );
}

#[test]
#[ignore = "kernel WireGuard: run by `make test-kernel` in a VM"]
fn kernel_roamed_endpoint_is_not_reset() {
    let lab = Lab::new("kroam");
    let (ska, pka) = keypair(13);
    let (skb, pkb) = keypair(14);
    let ia = iface(&lab.ifname("a"), ska, "100.96.0.1");
    let ib = iface(&lab.ifname("b"), skb, "100.96.0.2");
    // A plans B at a wrong (dead) endpoint; B knows A's. B's packets make A roam.
    let pa = vec![peer(pkb, Some("192.0.2.99:51820"), "100.96.0.2")];
    let pb = vec![peer(pka, Some(lab.ep("a").as_str()), "100.96.0.1")];
    in_ns(&lab.a.ns, || async {
        let mut dp = Dataplane::open(EngineChoice::Kernel, &ia).await.unwrap();
        dp.reconcile(&ia, &pa).await.unwrap();
    });
    in_ns(&lab.b.ns, || async {
        let mut dp = Dataplane::open(EngineChoice::Kernel, &ib).await.unwrap();
        dp.reconcile(&ib, &pb).await.unwrap();
    });
    assert!(lab.ping(&lab.b, "100.96.0.1", 15));
    in_ns(&lab.a.ns, || async {
        let mut dp = Dataplane::open(EngineChoice::Kernel, &ia).await.unwrap();
        // Fresh process memory: the roamed endpoint has a recent handshake, so it stays.
        let r = dp.reconcile(&ia, &pa).await.unwrap();
        assert!(r.is_noop(), "{r:?}");
        let r = dp.reconcile(&ia, &pa).await.unwrap();
        assert!(r.is_noop(), "{r:?}");
        let st = dp.peer_stats().await.unwrap();
        assert_eq!(st[0].endpoint, Some(lab.ep("b").parse().unwrap()));
    });
}

/// A kernel node and a wireguard-go node form one tunnel (a mixed mesh).
#[test]
#[ignore = "kernel WireGuard: run by `make test-kernel` in a VM"]
fn kernel_and_userspace_interoperate() {
    let lab = Lab::new("kmix");
    let (ska, pka) = keypair(15);
    let (skb, pkb) = keypair(16);
    let ia = iface(&lab.ifname("a"), ska, "100.96.0.1");
    let ib = iface(&lab.ifname("b"), skb, "100.96.0.2");
    in_ns(&lab.b.ns, || async {
        let mut dp = Dataplane::open(wggo(), &ib).await.unwrap();
        assert_eq!(dp.engine(), EngineKind::UserspaceExternal);
        dp.reconcile(&ib, &[peer(pka, Some(lab.ep("a").as_str()), "100.96.0.1")])
            .await
            .unwrap();
    });
    in_ns(&lab.a.ns, || async {
        let mut dp = Dataplane::open(EngineChoice::Auto, &ia).await.unwrap();
        assert_eq!(dp.engine(), EngineKind::Kernel);
        dp.reconcile(&ia, &[peer(pkb, Some(lab.ep("b").as_str()), "100.96.0.2")])
            .await
            .unwrap();
    });
    assert!(lab.ping(&lab.a, "100.96.0.2", 15), "kernel -> userspace");
    assert!(lab.ping(&lab.b, "100.96.0.1", 3), "userspace -> kernel");
    for (ns, name) in [(&lab.a.ns, &ia.name), (&lab.b.ns, &ib.name)] {
        let hs = run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "wg",
            "show",
            name,
            "latest-handshakes",
        ]);
        let t: u64 = hs
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(t > 0, "{name}: no handshake: {hs}");
    }
}
