//! Agent benchmarks in the network lab (root; not timed tests). Prints a table; the numbers go
//! to docs/benchmarks.md.
//!
//! 1. TCP throughput (iperf3, 5 s, median of 5) from public node a: to b over WireGuard
//!    configured by hand (`wireguard-go` + `wg set` + `ip`, no agent), to b over the mesh the
//!    agents built (engine wireguard-go, planned Direct), and to the identical node c planned
//!    Relay with UDP between a and c blocked (agent relay bridge + `wirekube-relay`). All three
//!    tunnels exist at once and the runs alternate. Ratios: agent ÷ hand (target ≥ 0.95) and
//!    relayed ÷ direct (target ≥ 0.8).
//! 2. One agent with 100 peers (random keys, unreachable endpoints, so all end on the relay with
//!    a bridge socket each): RSS and reconcile time.
//!
//! ```text
//! cargo build --release --bins -p wirekube-agent -p wirekube-relay
//! cargo bench -p wirekube-agent --bench lab
//! ```
//!
//! The lab runs the real Kubernetes control plane in its DMZ (see `tests/common/mod.rs`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use base64::Engine;
use common::*;
use wirekube_crds::{ActualPath, PathReason, PeerEntry, PlannedPath};
use wirekube_lab::{Host, wait_for};

/// Runs per setup (`WIREKUBE_BENCH_RUNS` overrides).
fn runs() -> usize {
    std::env::var("WIREKUBE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1)
}
const SECONDS: &str = "5";
const PEERS: usize = 100;
const HAND_IFACE: &str = "wghand0";
const HAND_PORT: u16 = 51830;

fn main() -> Result<()> {
    // A benchmark that cannot run fails rather than report nothing.
    anyhow::ensure!(root(), "lab benchmarks need root (network namespaces)");
    // `cargo bench` passes `--bench`; `WIREKUBE_BENCH=throughput|peers` runs one part.
    let only = std::env::var("WIREKUBE_BENCH").unwrap_or_default();
    let _autogroup = AutogroupOff::new()?;
    if only.is_empty() || only == "throughput" {
        throughput()?;
    }
    if only.is_empty() || only == "peers" {
        hundred_peers()?;
    }
    Ok(())
}

const AUTOGROUP: &str = "/proc/sys/kernel/sched_autogroup_enabled";

/// Turns the kernel's session autogroups off for the benchmark and restores the setting on
/// drop (`WIREKUBE_BENCH_AUTOGROUP=keep` leaves it alone).
///
/// Every lab process runs in the machine's root cgroup, where autogroup makes each *session*
/// a scheduling group with an equal share. The agent's wireguard-go must run in its own session
/// (it outlives the agent), and so does each agent and the relay, while iperf3 shares the bench's
/// session: on a loaded 2-core box that layout, not the agent, decided the throughput (agent ÷
/// hand 0.82–0.86 and relayed ÷ direct 0.38–0.55 with autogroup, 1.0 and 0.87 without; see
/// docs/benchmarks.md). On a real node none of it applies: autogroup only acts on tasks in the
/// root cgroup, and a DaemonSet pod or a systemd service has its own.
struct AutogroupOff(Option<String>);

impl AutogroupOff {
    fn new() -> Result<Self> {
        let keep = std::env::var("WIREKUBE_BENCH_AUTOGROUP").is_ok_and(|v| v == "keep");
        let before = match std::fs::read_to_string(AUTOGROUP) {
            Ok(v) => v.trim().to_owned(),
            // Kernels built without CONFIG_SCHED_AUTOGROUP: nothing to undo.
            Err(_) => return Ok(Self(None)),
        };
        if keep || before == "0" {
            println!("sched_autogroup_enabled = {before} (left as is)");
            return Ok(Self(None));
        }
        std::fs::write(AUTOGROUP, "0").map_err(|e| anyhow!("write 0 to {AUTOGROUP}: {e}"))?;
        println!(
            "sched_autogroup_enabled = 0 for the benchmark (was {before}; restored at the end)"
        );
        Ok(Self(Some(before)))
    }
}

impl Drop for AutogroupOff {
    fn drop(&mut self) {
        if let Some(v) = &self.0
            && let Err(e) = std::fs::write(AUTOGROUP, v)
        {
            eprintln!("could not restore {AUTOGROUP} to {v}: {e}");
        }
    }
}

/// Median, and the range as text ("0.31 (0.27–0.35)"), in Gbit/s.
fn summary(mut v: Vec<f64>) -> (f64, String) {
    v.sort_by(f64::total_cmp);
    let g = |b: f64| b / 1e9;
    let m = v[v.len() / 2];
    let text = format!("{:.2} ({:.2}–{:.2})", g(m), g(v[0]), g(v[v.len() - 1]));
    (m, text)
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

/// CPU seconds (user + system) per process name, summed over the namespaces of `hosts`.
fn cpu_by_process(hosts: &[&Host]) -> BTreeMap<String, f64> {
    let tick = 100.0; // USER_HZ on Linux
    let mut out = BTreeMap::new();
    for h in hosts {
        for pid in wirekube_lab::netns::pids_in(&h.ns) {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // comm is in parentheses and may contain spaces; fields after it are plain.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = stat[open + 1..close].to_string();
            let f: Vec<&str> = stat[close + 2..].split(' ').collect();
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after comm+state.
            *out.entry(format!("{}:{comm}", h.name)).or_insert(0.0) += (t(11) + t(12)) / tick;
        }
    }
    out
}

/// One iperf3 run, and the CPU seconds each process on `hosts` used meanwhile (added to `cpu`).
fn measure(
    env: &Env,
    from: &Host,
    to: &Host,
    ip: Ipv4Addr,
    hosts: &[&Host],
    cpu: &mut BTreeMap<String, f64>,
) -> Result<f64> {
    let before = cpu_by_process(hosts);
    let bps = iperf(env, from, to, ip)?;
    for (k, c) in cpu_by_process(hosts) {
        let d = c - before.get(&k).copied().unwrap_or(0.0);
        if d > 0.0 {
            *cpu.entry(k).or_insert(0.0) += d;
        }
    }
    Ok(bps)
}

fn print_cpu(what: &str, cpu: &BTreeMap<String, f64>) {
    let total: f64 = cpu.values().sum();
    let mut parts: Vec<(&String, &f64)> = cpu.iter().filter(|(_, c)| **c >= 0.05).collect();
    parts.sort_by(|a, b| b.1.total_cmp(a.1));
    let list: Vec<String> = parts.iter().map(|(k, c)| format!("{k} {c:.1}")).collect();
    println!(
        "- {what}: {total:.1} CPU-s over {} runs: {}",
        runs(),
        list.join(", ")
    );
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
    let (iface, port) = (HAND_IFACE, HAND_PORT);
    let keys = [keypair(), keypair()];
    let ips = [Ipv4Addr::new(10, 201, 0, 1), Ipv4Addr::new(10, 201, 0, 2)];
    let dir = tempfile::tempdir()?;
    for (i, (h, other)) in [(a, b), (b, a)].into_iter().enumerate() {
        // Started the way a user (or wg-quick) starts it: daemonised. wireguard-go does not
        // `setsid`, so it stays in this bench's session, unlike the agent's (see
        // `AutogroupOff` for why that mattered).
        let o = env.lab.exec(h, &["wireguard-go", iface])?;
        if !o.status.success() {
            bail!(
                "{}: wireguard-go {iface}: {}",
                h.name,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        wait_for(Duration::from_secs(10), "wireguard-go interface", || {
            env.lab
                .exec(h, &["wg", "show", iface])
                .ok()
                .filter(|o| o.status.success())
        })
        .map_err(|e| anyhow!("{e}"))?;
        let key_file = dir.path().join(format!("key{i}"));
        std::fs::write(&key_file, &keys[i].0)?;
        let peer_pub = &keys[1 - i].1;
        let endpoint = format!("{}:{port}", other.ip());
        let allowed = format!("{}/32", ips[1 - i]);
        let port = port.to_string();
        let key_path = key_file.to_string_lossy().into_owned();
        let addr = format!("{}/24", ips[i]);
        for cmd in [
            vec![
                "wg",
                "set",
                iface,
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
            vec!["ip", "addr", "add", &addr, "dev", iface],
            vec!["ip", "link", "set", iface, "mtu", "1380", "up"],
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

/// a plans b Direct and c Relay; b and c plan a the same way.
fn plan(env: &Env) -> Result<()> {
    let (ka, kb, kc) = (key(env, "a"), key(env, "b"), key(env, "c"));
    env.apply_spec(
        "a",
        env.spec(
            "a",
            &[
                ("b", kb.as_str(), PlannedPath::Direct),
                ("c", kc.as_str(), PlannedPath::Relay),
            ],
        ),
    )?;
    env.apply_spec(
        "b",
        env.spec("b", &[("a", ka.as_str(), PlannedPath::Direct)]),
    )?;
    env.apply_spec(
        "c",
        env.spec("c", &[("a", ka.as_str(), PlannedPath::Relay)]),
    )
}

/// Both ends of `x`–`y` report `path` with a handshake.
fn both(env: &Env, x: &str, y: &str, path: ActualPath) -> bool {
    [(x, y), (y, x)].iter().all(|(n, p)| {
        env.status(n)
            .as_ref()
            .and_then(|s| conn(s, p).cloned())
            .is_some_and(|c| c.path == path && c.last_handshake.is_some())
    })
}

fn throughput() -> Result<()> {
    let mut env = Env::build("agthru", &["a", "b", "c"])?;
    let (ha, hb, hc) = (
        env.host("a").clone(),
        env.host("b").clone(),
        env.host("c").clone(),
    );
    let (_, hand_b) = hand_wireguard(&env, &ha, &hb)?;
    let dmz = env.dmz.clone();
    let all = [&ha, &hb, &hc, &dmz];

    for n in ["a", "b", "c"] {
        env.apply_spec(n, env.spec(n, &[]))?;
        env.start_agent(n)?;
    }
    env.wait(30, "all agents report their keys", || {
        ["a", "b", "c"]
            .iter()
            .all(|n| env.status(n).is_some_and(|s| s.public_key.is_some()))
    })?;
    // a–c is relayed because nothing else gets through, as on a real relayed pair.
    env.lab.block_udp(ha.ip(), hc.ip(), None)?;
    plan(&env)?;
    env.wait(30, "a–b direct, a–c relayed", || {
        both(&env, "a", "b", ActualPath::Direct) && both(&env, "a", "c", ActualPath::Relay)
    })?;
    let (mb, mc) = (env.mesh_ip("b"), env.mesh_ip("c"));
    for m in [mb, mc] {
        env.lab
            .ping_until(&ha, m, Duration::from_secs(15))
            .map_err(|e| anyhow!("{e}"))?;
    }
    // All three tunnels exist at once (b and c are identical public nodes): alternate the runs
    // so that machine noise hits every setup alike.
    let (mut hand, mut direct, mut relayed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_hand, mut cpu_direct, mut cpu_relayed) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for _ in 0..runs() {
        hand.push(measure(&env, &ha, &hb, hand_b, &all, &mut cpu_hand)?);
        direct.push(measure(&env, &ha, &hb, mb, &all, &mut cpu_direct)?);
        relayed.push(measure(&env, &ha, &hc, mc, &all, &mut cpu_relayed)?);
    }
    let ((hand, hand_t), (direct, direct_t)) = (summary(hand), summary(direct));
    let (relayed, relayed_t) = summary(relayed);

    println!(
        "\nTCP throughput a → b (hand, direct) and a → c (relayed), iperf3 {SECONDS} s, median (min–max) of {} runs, Gbit/s:\n",
        runs()
    );
    println!(
        "| hand-configured wireguard-go | agent, direct | agent, relayed | agent ÷ hand | relayed ÷ direct |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {hand_t} | {direct_t} | {relayed_t} | {:.2} | {:.2} |",
        direct / hand,
        relayed / direct
    );
    println!("\nCPU by process (host:name):\n");
    print_cpu("hand-configured", &cpu_hand);
    print_cpu("agent, direct", &cpu_direct);
    print_cpu("agent, relayed", &cpu_relayed);
    for n in ["a", "b", "c"] {
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
