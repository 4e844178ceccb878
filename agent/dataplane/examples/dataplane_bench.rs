//! Dataplane benchmark (not a test; needs root, wireguard-go, wg, iperf3):
//! reconcile time with 100 peers, and direct TCP throughput through a tunnel set up by
//! `Dataplane` vs. wireguard-go configured by hand with `wg` over the same veth.
//!
//!     cargo run --release -p wirekube-dataplane --example dataplane_bench [runs] [secs]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Instant;

use common::*;
use wirekube_dataplane::{Dataplane, EngineChoice, PeerConfig};

fn wggo() -> EngineChoice {
    EngineChoice::WireguardGo {
        binary: PathBuf::from("/usr/bin/wireguard-go"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn reconcile_bench(lab: &Lab) {
    let (sk, _) = keypair(40);
    let ia = iface(&lab.ifname("r"), sk, "100.96.0.1");
    let peers: Vec<PeerConfig> = (0..100u32)
        .map(|i| {
            let (_, pk) = keypair(100 + i as u8);
            let mut pk = pk;
            pk[0] = i as u8; // distinct even if seeds collide
            peer(
                pk,
                Some(&format!("10.77.{}.{}:51820", 1 + i / 200, 2 + i % 200)),
                &format!("100.96.{}.{}", 1 + i / 200, 2 + i % 200),
            )
        })
        .collect();
    in_ns(&lab.a.ns, || async {
        let mut dp = Dataplane::open(wggo(), &ia).await.unwrap();
        let t = Instant::now();
        let r = dp.reconcile(&ia, &peers).await.unwrap();
        let first = t.elapsed();
        let mut noop = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let r = dp.reconcile(&ia, &peers).await.unwrap();
            assert!(r.is_noop());
            noop.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let mut changed = peers.clone();
        changed[50]
            .allowed_ips
            .push("10.244.50.0/24".parse().unwrap());
        changed.remove(99);
        let t = Instant::now();
        let r2 = dp.reconcile(&ia, &changed).await.unwrap();
        let delta = t.elapsed();
        println!(
            "reconcile 100 peers: initial {:.1} ms ({} wg + {} netlink writes); repeat no-op median {:.2} ms (20 runs, 0 writes); 1 changed + 1 removed {:.2} ms ({} wg + {} netlink)",
            first.as_secs_f64() * 1e3,
            r.wireguard_changes,
            r.netlink_changes,
            median(noop),
            delta.as_secs_f64() * 1e3,
            r2.wireguard_changes,
            r2.netlink_changes
        );
        Dataplane::cleanup(&ia.name, TABLE, PRIO).await.unwrap();
    });
}

/// TCP throughput from `a` to `b` at `ip` (an address of `b`), Gbit/s.
fn iperf(lab: &Lab, ip: &str, secs: u32) -> f64 {
    let ip = ip.parse().expect("IPv4 address");
    lab.lab.iperf3(&lab.b, &lab.a, ip, secs).expect("iperf3") / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let secs: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let lab = Lab::new("bench");
    reconcile_bench(&lab);

    // Tunnel 1: Dataplane on both sides (port 51820, 100.96.0.0/16, table + rules).
    let (ska, pka) = keypair(1);
    let (skb, pkb) = keypair(2);
    let ia = iface(&lab.ifname("a"), ska, "100.96.0.1");
    let ib = iface(&lab.ifname("b"), skb, "100.96.0.2");
    in_ns(&lab.b.ns, || async {
        let mut dp = Dataplane::open(wggo(), &ib).await.unwrap();
        dp.reconcile(&ib, &[peer(pka, Some(lab.ep("a").as_str()), "100.96.0.1")])
            .await
            .unwrap();
    });
    in_ns(&lab.a.ns, || async {
        let mut dp = Dataplane::open(wggo(), &ia).await.unwrap();
        dp.reconcile(&ia, &[peer(pkb, Some(lab.ep("b").as_str()), "100.96.0.2")])
            .await
            .unwrap();
    });
    assert!(lab.ping(&lab.a, "100.96.0.2", 15));

    // Tunnel 2: wireguard-go by hand with wg and ip (port 51821, 10.99.0.0/24, main table).
    let (mka, mpa) = keypair(3);
    let (mkb, mpb) = keypair(4);
    for (ns, name, sk, ip, port, other_pk, other_ep, other_ip) in [
        (
            &lab.a.ns,
            lab.ifname("ma"),
            mka,
            "10.99.0.1/24",
            "51821",
            mpb,
            format!("{}:51821", lab.addr("b")),
            "10.99.0.2/32",
        ),
        (
            &lab.b.ns,
            lab.ifname("mb"),
            mkb,
            "10.99.0.2/24",
            "51821",
            mpa,
            format!("{}:51821", lab.addr("a")),
            "10.99.0.1/32",
        ),
    ] {
        let keyfile = std::env::temp_dir().join(format!("{name}.key"));
        std::fs::write(&keyfile, b64(&sk)).unwrap();
        run(&["ip", "netns", "exec", ns, "wireguard-go", &name]);
        run(&[
            "wg",
            "set",
            &name,
            "private-key",
            keyfile.to_str().unwrap(),
            "listen-port",
            port,
            "peer",
            &b64(&other_pk),
            "endpoint",
            &other_ep,
            "allowed-ips",
            other_ip,
        ]);
        let _ = std::fs::remove_file(&keyfile);
        run(&["ip", "-n", ns, "addr", "add", ip, "dev", &name]);
        run(&["ip", "-n", ns, "link", "set", &name, "mtu", "1420", "up"]);
    }
    assert!(lab.ping(&lab.a, "10.99.0.2", 15));

    // Interleave the two so drift (thermal, noisy neighbours) hits both equally.
    let (mut dp, mut manual) = (Vec::new(), Vec::new());
    for i in 0..runs {
        dp.push(iperf(&lab, "100.96.0.2", secs));
        manual.push(iperf(&lab, "10.99.0.2", secs));
        println!(
            "run {}: dataplane {:.3} Gbit/s, by hand {:.3} Gbit/s",
            i + 1,
            dp[i],
            manual[i]
        );
    }
    let (d, m) = (median(dp.clone()), median(manual.clone()));
    println!(
        "TCP {}x{}s medians: dataplane {:.3} Gbit/s {:?}, wireguard-go by hand {:.3} Gbit/s {:?}, ratio {:.3}",
        runs,
        secs,
        d,
        dp,
        m,
        manual,
        d / m
    );
    for side in ["a", "b"] {
        let name = lab.ifname(side);
        let ns = if side == "a" { &lab.a.ns } else { &lab.b.ns };
        in_ns(ns, || async {
            Dataplane::cleanup(&name, TABLE, PRIO).await.unwrap()
        });
    }
}
