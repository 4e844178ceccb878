//! Benchmark (not a timed test; `--ignored`, root): one real `wirekube-agent` (wireguard-go)
//! with 100 peers in its spec (random keys, unreachable endpoints, so every peer ends on the
//! relay after `directTimeout`): RSS and reconcile time. Results go to docs/benchmarks.md.
//!
//! `cargo test -p wirekube-agent --test agent_bench -- --ignored --nocapture`

mod common;

use std::time::Instant;

use anyhow::Result;
use base64::Engine;
use common::*;
use wirekube_crds::{PathReason, PeerEntry, PlannedPath};

const PEERS: usize = 100;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "benchmark; run with --ignored as root"]
fn agent_with_100_peers() -> Result<()> {
    if !root() {
        return Ok(());
    }
    let mut env = Env::build("agbench", &["a"])?;
    let mut spec = env.spec("a", &[]);
    spec.mesh_cidr = "10.77.0.0/16".into();
    spec.peers = (0..PEERS)
        .map(|i| {
            let sk = x25519_dalek::StaticSecret::random();
            let pk = x25519_dalek::PublicKey::from(&sk);
            PeerEntry {
                name: format!("p{i:03}"),
                public_key: base64::engine::general_purpose::STANDARD.encode(pk.as_bytes()),
                allowed_ips: vec![format!("10.77.{}.{}/32", 1 + i / 200, 1 + i % 200)],
                endpoint: Some(format!("203.0.113.{}:51820", 1 + i % 250)),
                path: PlannedPath::Direct,
                reason: PathReason::PublicPeer,
                ..Default::default()
            }
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
    // Steady state: at least 10 more reconciles.
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
    let steady_ms = (s1 - s0) / (c1 - c0) * 1e3;
    let rss = rss_kib(env.agents["a"].pid);
    eprintln!(
        "agent, {PEERS} peers: RSS {:.1} MiB (idle, 0 peers: {:.1} MiB); spec → {PEERS} peers in wg: {first:?}; \
         all on relay after {all_relay:?}; steady-state reconcile {steady_ms:.2} ms (mean of {} passes)",
        rss as f64 / 1024.0,
        idle as f64 / 1024.0,
        c1 - c0
    );
    env.stop_agent("a")?;
    env.lab.shutdown()?;
    Ok(())
}
