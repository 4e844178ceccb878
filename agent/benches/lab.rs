//! Agent benchmarks in the network lab (root; not timed tests). Prints a table; the numbers go
//! to docs/benchmarks.md.
//!
//! 1. TCP throughput (iperf3, 5 s, median of 3) between two public nodes over WireGuard
//!    configured by hand (`wireguard-go` + `wg set` + `ip`, no agent), over the mesh the two
//!    agents built (engine wireguard-go, planned Direct), and over the same pair planned Relay
//!    with UDP between them blocked (agent relay bridge + `wirekube-relay`). Ratios: agent ÷
//!    hand (target ≥ 0.95) and relayed ÷ direct (target ≥ 0.8).
//! 2. One agent with 100 peers (random keys, unreachable endpoints, so all end on the relay with
//!    a bridge socket each): RSS and reconcile time.
//!
//! ```text
//! cargo build --release --bins -p wirekube-agent -p wirekube-relay -p wirekube-e2e
//! cargo bench -p wirekube-agent --bench lab
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use base64::Engine;
use common::*;
use wirekube_crds::{ActualPath, PathReason, PeerEntry, PlannedPath};
use wirekube_lab::{Host, wait_for};

const RUNS: usize = 3;
const SECONDS: &str = "5";
const PEERS: usize = 100;
const HAND_IFACE: &str = "wghand0";
const HAND_PORT: u16 = 51830;

fn main() -> Result<()> {
    if !root() {
        eprintln!("lab benchmarks need root; skipped");
        return Ok(());
    }
    // `cargo bench` passes `--bench`; nothing to filter.
    throughput()?;
    hundred_peers()?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One iperf3 run from `from` to a one-shot server on `to` bound to `ip`: received bits/s.
fn iperf(env: &Env, from: &Host, to: &Host, ip: Ipv4Addr) -> Result<f64> {
    let ip_s = ip.to_string();
    let mut server = Command::new("iperf3");
    server.args(["-s", "-1", "-B", &ip_s, "-p", "5201"]);
    let srv = env.lab.spawn(to, server)?;
    // iperf3 -J can exit 0 with {"error": "unable to connect ..."} while the server starts.
    let mut last = String::new();
    let got = wait_for(Duration::from_secs(10), "iperf3 client connects", || {
        let o = env
            .lab
            .exec(
                from,
                &["iperf3", "-c", &ip_s, "-p", "5201", "-t", SECONDS, "-J"],
            )
            .ok()?;
        last = String::from_utf8_lossy(&o.stdout)
            .chars()
            .take(2000)
            .collect();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v["end"]["sum_received"]["bits_per_second"].as_f64()
    });
    let _ = env.lab.stop(&srv);
    got.map(|(bps, _)| bps)
        .map_err(|e| anyhow!("iperf3 to {ip}: {e}; last output: {last}"))
}

fn measure(env: &Env, from: &Host, to: &Host, ip: Ipv4Addr) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..RUNS {
        v.push(iperf(env, from, to, ip)?);
    }
    Ok(median(v))
}

fn keypair() -> (String, String) {
    let sk = x25519_dalek::StaticSecret::random();
    let pk = x25519_dalek::PublicKey::from(&sk);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    (b64(sk.as_bytes()), b64(pk.as_bytes()))
}

/// wireguard-go between the two hosts configured by hand, the way an operator would without
/// WireKube (same MTU as the agents' spec). Returns the mesh IPs.
fn hand_wireguard(env: &Env, a: &Host, b: &Host) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let keys = [keypair(), keypair()];
    let ips = [Ipv4Addr::new(10, 201, 0, 1), Ipv4Addr::new(10, 201, 0, 2)];
    let dir = tempfile::tempdir()?;
    for (i, (h, other)) in [(a, b), (b, a)].into_iter().enumerate() {
        let mut wg = Command::new("wireguard-go");
        wg.args(["-f", HAND_IFACE]);
        env.lab.spawn(h, wg)?;
        wait_for(Duration::from_secs(10), "wireguard-go interface", || {
            env.lab
                .exec(h, &["wg", "show", HAND_IFACE])
                .ok()
                .filter(|o| o.status.success())
        })
        .map_err(|e| anyhow!("{e}"))?;
        let key_file = dir.path().join(format!("key{i}"));
        std::fs::write(&key_file, &keys[i].0)?;
        let peer_pub = &keys[1 - i].1;
        let endpoint = format!("{}:{HAND_PORT}", other.ip());
        let allowed = format!("{}/32", ips[1 - i]);
        let port = HAND_PORT.to_string();
        let key_path = key_file.to_string_lossy().into_owned();
        let addr = format!("{}/24", ips[i]);
        for cmd in [
            vec![
                "wg",
                "set",
                HAND_IFACE,
                "private-key",
                &key_path,
                "listen-port",
                &port,
                "peer",
                peer_pub,
                "endpoint",
                &endpoint,
                "allowed-ips",
                &allowed,
            ],
            vec!["ip", "addr", "add", &addr, "dev", HAND_IFACE],
            vec!["ip", "link", "set", HAND_IFACE, "mtu", "1380", "up"],
        ] {
            let o = env.lab.exec(h, &cmd)?;
            if !o.status.success() {
                bail!(
                    "{}: {}: {}",
                    h.name,
                    cmd.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
        }
    }
    env.lab
        .ping_until(a, ips[1], Duration::from_secs(15))
        .map_err(|e| anyhow!("hand-configured tunnel: {e}"))?;
    Ok((ips[0], ips[1]))
}

fn key(env: &Env, n: &str) -> String {
    env.status(n).and_then(|s| s.public_key).unwrap_or_default()
}

fn plan(env: &Env, path: PlannedPath) -> Result<()> {
    let (ka, kb) = (key(env, "a"), key(env, "b"));
    env.apply_spec("a", env.spec("a", &[("b", kb.as_str(), path)]))?;
    env.apply_spec("b", env.spec("b", &[("a", ka.as_str(), path)]))
}

fn both(env: &Env, path: ActualPath) -> bool {
    [("a", "b"), ("b", "a")].iter().all(|(n, p)| {
        env.status(n)
            .as_ref()
            .and_then(|s| conn(s, p).cloned())
            .is_some_and(|c| c.path == path && c.last_handshake.is_some())
    })
}

fn throughput() -> Result<()> {
    let mut env = Env::build("agthru", &["a", "b"])?;
    let (ha, hb) = (env.host("a").clone(), env.host("b").clone());
    let (_, hand_b) = hand_wireguard(&env, &ha, &hb)?;
    let hand = measure(&env, &ha, &hb, hand_b)?;

    for n in ["a", "b"] {
        env.apply_spec(n, env.spec(n, &[]))?;
        env.start_agent(n)?;
    }
    env.wait(30, "both agents report their keys", || {
        ["a", "b"]
            .iter()
            .all(|n| env.status(n).is_some_and(|s| s.public_key.is_some()))
    })?;
    plan(&env, PlannedPath::Direct)?;
    env.wait(30, "both direct", || both(&env, ActualPath::Direct))?;
    let mb = env.mesh_ip("b");
    env.lab
        .ping_until(&ha, mb, Duration::from_secs(15))
        .map_err(|e| anyhow!("{e}"))?;
    let direct = measure(&env, &ha, &hb, mb)?;

    env.lab.block_udp(ha.ip(), hb.ip(), None)?;
    plan(&env, PlannedPath::Relay)?;
    env.wait(30, "both relay", || both(&env, ActualPath::Relay))?;
    env.lab
        .ping_until(&ha, mb, Duration::from_secs(15))
        .map_err(|e| anyhow!("{e}"))?;
    let relayed = measure(&env, &ha, &hb, mb)?;

    let g = |b: f64| b / 1e9;
    println!("\nTCP throughput a → b, iperf3 {SECONDS} s, median of {RUNS} runs (Gbit/s):\n");
    println!(
        "| hand-configured wireguard-go | agent, direct | agent, relayed | agent ÷ hand | relayed ÷ direct |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        g(hand),
        g(direct),
        g(relayed),
        direct / hand,
        relayed / direct
    );
    for n in ["a", "b"] {
        env.stop_agent(n)?;
    }
    env.lab.shutdown()?;
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn hundred_peers() -> Result<()> {
    let mut env = Env::build("agbench", &["a"])?;
    let mut spec = env.spec("a", &[]);
    spec.mesh_cidr = "10.77.0.0/16".into();
    spec.peers = (0..PEERS)
        .map(|i| PeerEntry {
            name: format!("p{i:03}"),
            public_key: keypair().1,
            allowed_ips: vec![format!("10.77.{}.{}/32", 1 + i / 200, 1 + i % 200)],
            endpoint: Some(format!("203.0.113.{}:51820", 1 + i % 250)),
            path: PlannedPath::Direct,
            reason: PathReason::PublicPeer,
            ..Default::default()
        })
        .collect();
    env.apply_spec("a", env.spec("a", &[]))?;
    env.start_agent("a")?;
    env.wait(30, "agent reports its key", || {
        env.status("a").is_some_and(|s| s.public_key.is_some())
    })?;
    let idle = rss_kib(env.agents["a"].pid);
    let t = Instant::now();
    env.apply_spec("a", spec)?;
    env.wait(60, "100 peers in wg show", || env.wg("a").len() == PEERS)?;
    let first = t.elapsed();
    env.wait(60, "every peer on the relay", || {
        env.status("a")
            .is_some_and(|s| s.summary.relay as usize == PEERS)
    })?;
    let all_relay = t.elapsed();
    let m = |n: &str| env.metric("a", n, "");
    let (s0, c0) = (
        m("wirekube_agent_reconcile_seconds_sum"),
        m("wirekube_agent_reconcile_seconds_count"),
    );
    env.wait(30, "10 more reconciles", || {
        m("wirekube_agent_reconcile_seconds_count") >= c0 + 10.0
    })?;
    let (s1, c1) = (
        m("wirekube_agent_reconcile_seconds_sum"),
        m("wirekube_agent_reconcile_seconds_count"),
    );
    let rss = rss_kib(env.agents["a"].pid);
    println!("\nOne agent, {PEERS} peers (all relayed):\n");
    println!(
        "| RSS, 0 peers | RSS, {PEERS} peers | spec → {PEERS} peers in wg | all on relay | steady reconcile (mean of {} passes) |",
        c1 - c0
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {:.1} MiB | {:.1} MiB | {:?} | {:?} | {:.2} ms |",
        idle as f64 / 1024.0,
        rss as f64 / 1024.0,
        first,
        all_relay,
        (s1 - s0) / (c1 - c0) * 1e3
    );
    env.stop_agent("a")?;
    env.lab.shutdown()?;
    Ok(())
}
