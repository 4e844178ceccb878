//! Dataplane tests in real network namespaces with real userspace WireGuard (root only).

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::*;
use wirekube_dataplane::{Dataplane, EngineChoice, EngineKind};

fn wggo() -> EngineChoice {
    EngineChoice::WireguardGo {
        binary: PathBuf::from("/usr/bin/wireguard-go"),
    }
}

#[test]
fn tunnel_reconcile_routes_remove_restart() {
    let lab = Lab::new("tun");
    let (ska, pka) = keypair(1);
    let (skb, pkb) = keypair(2);
    let ia = iface(&lab.ifname("a"), ska, "100.96.0.1");
    let ib = iface(&lab.ifname("b"), skb, "100.96.0.2");
    let pa = vec![peer(pkb, Some(lab.ep("b").as_str()), "100.96.0.2")];
    let pb = vec![peer(pka, Some(lab.ep("a").as_str()), "100.96.0.1")];
    let main_before = run(&["ip", "-n", &lab.a.ns, "route", "show", "table", "main"]);

    // B first (passive side configured before A initiates), with the wireguard-go choice;
    // A with Auto, which must fall back from kernel to wireguard-go here.
    in_ns(&lab.b.ns, || async {
        let mut dp = Dataplane::open(wggo(), &ib).await.unwrap();
        assert_eq!(dp.engine(), EngineKind::UserspaceExternal);
        assert!(!dp.selection().adopted);
        let r = dp.reconcile(&ib, &pb).await.unwrap();
        assert!(r.wireguard_changes >= 2 && r.netlink_changes >= 4, "{r:?}");
    });
    in_ns(&lab.a.ns, || async {
        let mut dp = Dataplane::open(EngineChoice::Auto, &ia).await.unwrap();
        assert_eq!(dp.engine(), EngineKind::UserspaceExternal);
        assert!(
            dp.selection()
                .reason
                .contains("kernel WireGuard unavailable"),
            "{:?}",
            dp.selection()
        );
        dp.reconcile(&ia, &pa).await.unwrap();
        // Idempotency, proven by counting: nothing to write the second time.
        let again = dp.reconcile(&ia, &pa).await.unwrap();
        assert!(
            again.is_noop(),
            "repeat reconcile changed things: {again:?}"
        );
    });
    assert!(lab.ping(&lab.a, "100.96.0.2", 15), "no ping over the mesh");
    assert!(lab.ping(&lab.b, "100.96.0.1", 3));

    // Routes live in the dedicated table behind the rules; main is as before.
    let t = run(&[
        "ip",
        "-n",
        &lab.a.ns,
        "route",
        "show",
        "table",
        &TABLE.to_string(),
    ]);
    assert!(t.contains("100.96.0.2 dev"), "table: {t}");
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
    let wg = run(&["wg", "show", &ia.name, "fwmark"]);
    assert_eq!(wg.trim(), "0xca6c");

    // Stats: a handshake within the last minute and bytes both ways.
    in_ns(&lab.a.ns, || async {
        let dp = Dataplane::open(wggo(), &ia).await.unwrap();
        let st = dp.peer_stats().await.unwrap();
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].public_key, pkb);
        let hs = st[0].last_handshake.expect("handshake");
        assert!(SystemTime::now().duration_since(hs).unwrap() < Duration::from_secs(60));
        assert!(st[0].rx_bytes > 0 && st[0].tx_bytes > 0, "{st:?}");
        assert_eq!(st[0].endpoint, Some(lab.ep("b").parse().unwrap()));
    });

    // Restart: a new Dataplane adopts the running daemon; the same input changes nothing,
    // and the tunnel kept working throughout.
    in_ns(&lab.a.ns, || async {
        let mut dp = Dataplane::open(EngineChoice::Auto, &ia).await.unwrap();
        assert!(dp.selection().adopted, "{:?}", dp.selection());
        let r = dp.reconcile(&ia, &pa).await.unwrap();
        assert!(r.is_noop(), "reconcile after restart: {r:?}");
    });
    let key = run(&["wg", "show", &ia.name, "public-key"]);
    assert_eq!(key.trim(), b64(&pka));
    assert!(
        lab.ping(&lab.a, "100.96.0.2", 3),
        "tunnel lost across restart"
    );

    // Removing the peer removes it from WireGuard and its route.
    in_ns(&lab.a.ns, || async {
        let mut dp = Dataplane::open(wggo(), &ia).await.unwrap();
        let r = dp.reconcile(&ia, &[]).await.unwrap();
        assert_eq!(r.wireguard_changes, 1, "{r:?}");
        assert_eq!(r.netlink_changes, 1, "{r:?}");
    });
    let peers = run(&["wg", "show", &ia.name, "peers"]);
    assert!(peers.trim().is_empty(), "peer still present: {peers}");
    let t = run(&[
        "ip",
        "-n",
        &lab.a.ns,
        "route",
        "show",
        "table",
        &TABLE.to_string(),
    ]);
    assert!(t.trim().is_empty(), "route still present: {t}");
    assert!(!lab.ping(&lab.a, "100.96.0.2", 1));

    // Cleanup removes link, daemon, socket, routes and rules.
    in_ns(&lab.a.ns, || async {
        Dataplane::cleanup(&ia.name, TABLE, PRIO).await.unwrap();
        Dataplane::cleanup(&ia.name, TABLE, PRIO).await.unwrap(); // idempotent
    });
    assert!(!try_run(&["ip", "-n", &lab.a.ns, "link", "show", &ia.name]));
    assert!(!std::path::Path::new(&format!("/var/run/wireguard/{}.sock", ia.name)).exists());
    let rules = run(&["ip", "-n", &lab.a.ns, "rule", "show"]);
    assert!(
        !rules.contains(&TABLE.to_string()) && !rules.contains("0xca6c"),
        "{rules}"
    );
    assert_eq!(
        run(&["ip", "-n", &lab.a.ns, "route", "show", "table", "main"]),
        main_before
    );
    let left = run(&["ip", "netns", "pids", &lab.a.ns]);
    assert!(left.trim().is_empty(), "daemon left running: {left}");
}

#[test]
fn roamed_endpoint_is_not_reset() {
    let lab = Lab::new("roam");
    let (ska, pka) = keypair(3);
    let (skb, pkb) = keypair(4);
    let ia = iface(&lab.ifname("a"), ska, "100.96.0.1");
    let ib = iface(&lab.ifname("b"), skb, "100.96.0.2");
    // A plans B at a wrong (dead) endpoint; B knows A's. B's packets make A roam.
    let pa = vec![peer(pkb, Some("192.0.2.99:51820"), "100.96.0.2")];
    let pb = vec![peer(pka, Some(lab.ep("a").as_str()), "100.96.0.1")];
    in_ns(&lab.a.ns, || async {
        let mut dp = Dataplane::open(wggo(), &ia).await.unwrap();
        dp.reconcile(&ia, &pa).await.unwrap();
    });
    in_ns(&lab.b.ns, || async {
        let mut dp = Dataplane::open(wggo(), &ib).await.unwrap();
        dp.reconcile(&ib, &pb).await.unwrap();
    });
    assert!(lab.ping(&lab.b, "100.96.0.1", 15));
    in_ns(&lab.a.ns, || async {
        let mut dp = Dataplane::open(wggo(), &ia).await.unwrap();
        // Fresh process memory: the roamed endpoint has a recent handshake, so it stays.
        let r = dp.reconcile(&ia, &pa).await.unwrap();
        assert!(r.is_noop(), "{r:?}");
        let r = dp.reconcile(&ia, &pa).await.unwrap();
        assert!(r.is_noop(), "{r:?}");
        let st = dp.peer_stats().await.unwrap();
        assert_eq!(st[0].endpoint, Some(lab.ep("b").parse().unwrap()));
    });
}

#[test]
fn relay_bridge_carries_tunnel_with_udp_blocked() {
    use wirekube_relay::{Relay, RelayConfig, TokenSource};
    use wirekube_relay_client::{RelayClient, RelayClientConfig};
    use wirekube_relay_proto::PrivateKey;

    let lab = Lab::new("rly");
    // No UDP between the nodes at all: only the relay's TCP can carry the tunnel.
    for ns in [&lab.a.ns, &lab.b.ns] {
        let rules = "table inet wkblock {\n chain in { type filter hook input priority 0; iifname \"eth0\" meta l4proto udp drop; }\n chain out { type filter hook output priority 0; oifname \"eth0\" meta l4proto udp drop; }\n}\n";
        let file = std::env::temp_dir().join(format!("{ns}.nft"));
        std::fs::write(&file, rules).unwrap();
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "-f",
            file.to_str().unwrap(),
        ]);
        let _ = std::fs::remove_file(&file);
    }
    let (ska, pka) = keypair(5);
    let (skb, pkb) = keypair(6);
    let ia = iface(&lab.ifname("a"), ska, "100.96.0.1");
    let ib = iface(&lab.ifname("b"), skb, "100.96.0.2");
    let token = b"mesh-token".to_vec();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        // Node A runs the relay (on its veth address) and its bridge.
        let a = s.spawn(|| {
            in_ns(&lab.a.ns, || async {
                let relay = Relay::start(RelayConfig::new(
                    format!("{}:3478", lab.addr("a")).parse().unwrap(),
                    TokenSource::Static(token.clone()),
                ))
                .await
                .unwrap();
                let (client, rx) = RelayClient::start(RelayClientConfig::new(
                    relay.tcp_addr.to_string(),
                    PrivateKey::from_bytes(ska),
                    token.clone(),
                ));
                assert!(client.wait_connected(Duration::from_secs(5)).await);
                let bridge = wirekube_dataplane::RelayBridge::new(client, rx, ia.listen_port);
                bridge.set_authorized(HashSet::from([pkb]));
                let ep = bridge.endpoint_for(pkb).await.unwrap();
                assert_eq!(bridge.is_relay_endpoint(ep), Some(pkb));
                let mut dp = Dataplane::open(wggo(), &ia).await.unwrap();
                let mut p = peer(pkb, None, "100.96.0.2");
                p.endpoint = Some(ep);
                dp.reconcile(&ia, &[p]).await.unwrap();
                go_tx.send(()).unwrap();
                // Keep the relay and bridge alive until the test is done.
                tokio::task::spawn_blocking(move || done_rx.recv())
                    .await
                    .unwrap()
                    .ok();
                let c = bridge.counters();
                assert!(c.to_relay_packets > 0 && c.from_relay_packets > 0, "{c:?}");
                let st = dp.peer_stats().await.unwrap();
                assert_eq!(st[0].endpoint, Some(ep));
                assert!(st[0].last_handshake.is_some());
            })
        });
        go_rx.recv().unwrap();
        // Node B: its side has NOT planned A on the relay (no endpoint at all); the bridge
        // still delivers A's frames from A's stand-in socket, and WireGuard roams to it.
        let b = s.spawn(|| {
            in_ns(&lab.b.ns, || async {
                let (client, rx) = RelayClient::start(RelayClientConfig::new(
                    format!("{}:3478", lab.addr("a")),
                    PrivateKey::from_bytes(skb),
                    token.clone(),
                ));
                assert!(client.wait_connected(Duration::from_secs(5)).await);
                let bridge = wirekube_dataplane::RelayBridge::new(client, rx, ib.listen_port);
                bridge.set_authorized(HashSet::from([pka]));
                let mut dp = Dataplane::open(wggo(), &ib).await.unwrap();
                dp.reconcile(&ib, &[peer(pka, None, "100.96.0.1")])
                    .await
                    .unwrap();
                let ns = lab.b.ns.clone();
                let ok = tokio::task::spawn_blocking(move || ping_ns(&ns, "100.96.0.1", 15))
                    .await
                    .unwrap();
                assert!(ok, "no ping over the relay; bridge {:?}", bridge.counters());
                let st = dp.peer_stats().await.unwrap();
                assert_eq!(
                    st[0].endpoint.and_then(|e| bridge.is_relay_endpoint(e)),
                    Some(pka),
                    "B did not roam to the bridge socket: {st:?}"
                );
                // An unauthorised key is refused.
                bridge.set_authorized(HashSet::new());
                assert_eq!(bridge.counters().peer_sockets, 0);
            })
        });
        let rb = b.join();
        done_tx.send(()).unwrap();
        let ra = a.join();
        if let Err(p) = rb {
            std::panic::resume_unwind(p);
        }
        if let Err(p) = ra {
            std::panic::resume_unwind(p);
        }
    });
}

#[test]
fn embedded_engine_smoke() {
    let lab = Lab::new("emb");
    let (ska, pka) = keypair(7);
    let (skb, pkb) = keypair(8);
    let ia = iface(&lab.ifname("a"), ska, "100.96.0.1");
    let ib = iface(&lab.ifname("b"), skb, "100.96.0.2");
    in_ns(&lab.b.ns, || async {
        let mut dp = Dataplane::open(wggo(), &ib).await.unwrap();
        dp.reconcile(&ib, &[peer(pka, Some(lab.ep("a").as_str()), "100.96.0.1")])
            .await
            .unwrap();
    });
    // The embedded engine lives in this thread's process: ping while it is alive.
    in_ns(&lab.a.ns, || async {
        let mut dp = Dataplane::open(EngineChoice::Embedded, &ia).await.unwrap();
        assert_eq!(dp.engine(), EngineKind::UserspaceEmbedded);
        let pa = [peer(pkb, Some(lab.ep("b").as_str()), "100.96.0.2")];
        dp.reconcile(&ia, &pa).await.unwrap();
        assert!(dp.reconcile(&ia, &pa).await.unwrap().is_noop());
        let ns = lab.a.ns.clone();
        let ok = tokio::task::spawn_blocking(move || ping_ns(&ns, "100.96.0.2", 15))
            .await
            .unwrap();
        assert!(ok, "no ping through the embedded engine");
        // boringtun's SIGTERM/SIGINT signalfds were neutralised.
        let fds = std::fs::read_dir("/proc/self/fd").unwrap();
        let signalfds = fds
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|t| t.to_string_lossy() == "anon_inode:[signalfd]")
            })
            .count();
        assert_eq!(signalfds, 0, "embedded engine still holds a signalfd");
    });
}

/// `EngineChoice::Sidecar` on a kernel without WireGuard: it attaches to the wireguard-go that
/// another process runs in the foreground (the agent pod's `wireguard` container), never starts
/// one, and fails with a clear error when none answers.
#[test]
fn sidecar_engine_attaches_to_a_daemon_it_did_not_start() {
    let lab = Lab::new("side");
    let (ska, pka) = keypair(9);
    let (skb, pkb) = keypair(10);
    let ia = iface(&lab.ifname("a"), ska, "100.96.0.1");
    let ib = iface(&lab.ifname("b"), skb, "100.96.0.2");
    let wait = Duration::from_secs(1);
    // Nothing runs yet: the sidecar choice waits, then says what is missing.
    in_ns(&lab.a.ns, || async {
        let e = Dataplane::open(EngineChoice::Sidecar { wait }, &ia)
            .await
            .err()
            .expect("opened without a daemon");
        assert!(e.to_string().contains("wireguard container"), "{e}");
    });
    assert!(!try_run(&["ip", "-n", &lab.a.ns, "link", "show", &ia.name]));
    // The "container": wireguard-go in the foreground, started before or after the agent.
    let mut sidecar = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.a.ns, "wireguard-go", "-f", &ia.name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    in_ns(&lab.b.ns, || async {
        let mut dp = Dataplane::open(wggo(), &ib).await.unwrap();
        dp.reconcile(&ib, &[peer(pka, Some(lab.ep("a").as_str()), "100.96.0.1")])
            .await
            .unwrap();
    });
    let pa = [peer(pkb, Some(lab.ep("b").as_str()), "100.96.0.2")];
    for round in 0..2 {
        in_ns(&lab.a.ns, || async {
            let wait = Duration::from_secs(10);
            let mut dp = Dataplane::open(EngineChoice::Sidecar { wait }, &ia)
                .await
                .unwrap();
            assert_eq!(dp.engine(), EngineKind::UserspaceExternal);
            let r = dp.reconcile(&ia, &pa).await.unwrap();
            assert_eq!(r.is_noop(), round == 1, "round {round}: {r:?}");
        });
        // The "agent" is gone after each round; the daemon and the tunnel are not.
        assert!(lab.ping(&lab.a, "100.96.0.2", 15), "round {round}: no ping");
    }
    assert!(sidecar.try_wait().unwrap().is_none(), "the daemon exited");
    let _ = sidecar.kill();
    let _ = sidecar.wait();
}
