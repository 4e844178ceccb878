//! Two real `wirekube-agent` processes (engine wireguard-go; kernel WireGuard in the VM of
//! `make test-kernel`) on two public lab nodes, with the
//! real Kubernetes control plane (kube-apiserver etc., shipped CRDs + RBAC, per-node agent
//! tokens bound to the node) and `wirekube-relay` in a DMZ. The test plays the operator: it
//! writes each node's WireKubePeer spec (keys taken from the other agent's status) and checks
//! what the agents do.
//!
//! Root only. Needs the binaries: `cargo build --bins -p wirekube-agent -p wirekube-relay` (or
//! `WIREKUBE_BIN_DIR`), and the Kubernetes binaries of `scripts/build-k8s.sh` (built on first
//! use). Run with `--nocapture` for step timings.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::*;
use wirekube_crds::{ActualPath, CandidateKind, Engine, NatType, PathReason, PlannedPath};

const A: &str = "a";
const B: &str = "b";
/// How long traffic may take to flow once both agents report a path. This checks that the
/// path carries traffic, not how fast it comes up (a WireGuard handshake lost while the path
/// moved is retried after 5 s, and more on a loaded 2-core runner); the time to switch is
/// asserted on the reported status above each ping and recorded in docs/benchmarks.md.
const PATH_UP_SECS: u64 = 30;

/// [`PATH_UP_SECS`] times the lab's slowdown factor (4 in the emulated VM of `make
/// test-kernel`, where the relayed path once needed more than 30 s under load).
fn path_up() -> Duration {
    Duration::from_secs(PATH_UP_SECS) * wirekube_lab::netns::slowdown()
}

/// Failover target (docs/agent.md, Fast failover): at most 30 of the pings sent every 100 ms
/// lost. Asserted as such on the host. In the emulated VM of `make test-kernel` (slowdown 4)
/// every step runs several times slower (one VM run lost exactly 30), so there the bound is the
/// target times the slowdown: a functional check, the VM's figures are recorded as functional
/// only (docs/benchmarks.md).
fn max_lost() -> u64 {
    30 * u64::from(wirekube_lab::netns::slowdown())
}

/// A planned direct pair over a dead path is on the relay within directTimeout (12 s) + 5 s;
/// the 5 s of margin times the slowdown in the VM (as [`max_lost`]).
fn max_fallback() -> Duration {
    Duration::from_secs(12) + Duration::from_secs(5) * wirekube_lab::netns::slowdown()
}

fn key(env: &Env, n: &str) -> String {
    env.status(n).and_then(|s| s.public_key).unwrap_or_default()
}

/// Spec of both nodes with the pair planned as `path`.
fn plan(env: &Env, path: Option<PlannedPath>) -> Result<()> {
    let (ka, kb) = (key(env, A), key(env, B));
    let (pa, pb): (Vec<_>, Vec<_>) = match path {
        Some(p) => (vec![(B, kb.as_str(), p)], vec![(A, ka.as_str(), p)]),
        None => (vec![], vec![]),
    };
    env.apply_spec(A, env.spec(A, &pa))?;
    env.apply_spec(B, env.spec(B, &pb))
}

/// Both sides report `path` for each other (and a handshake when not down).
fn both_report(env: &Env, path: ActualPath) -> bool {
    [(A, B), (B, A)].iter().all(|(n, p)| {
        env.status(n)
            .as_ref()
            .and_then(|s| conn(s, p).cloned())
            .is_some_and(|c| c.path == path && c.last_handshake.is_some())
    })
}

/// Both sides report the pair moved to the relay because direct failed.
fn both_fell_back(env: &Env) -> bool {
    [(A, B), (B, A)].iter().all(|(n, p)| {
        env.status(n)
            .as_ref()
            .and_then(|s| conn(s, p).cloned())
            .is_some_and(|c| {
                c.path == ActualPath::Relay
                    && c.fallback
                    && c.reason == Some(PathReason::DirectFailed)
            })
    })
}

/// Both sides report direct again, with the fallback flag cleared.
fn back_to_direct(env: &Env) -> impl FnMut() -> bool + '_ {
    move || {
        [(A, B), (B, A)].iter().all(|(n, p)| {
            env.status(n)
                .as_ref()
                .and_then(|s| conn(s, p).cloned())
                .is_some_and(|c| c.path == ActualPath::Direct && !c.fallback)
        })
    }
}

/// Unblocks UDP between the two hosts and waits (60 s) until both report direct again and
/// `a` pings `b`'s mesh IP; returns how long the return to direct took.
fn heal_and_return_to_direct(
    env: &Env,
    a: &wirekube_lab::Host,
    b: &wirekube_lab::Host,
    mb: std::net::Ipv4Addr,
) -> Result<Duration> {
    env.lab.heal_udp(a.ip(), b.ip())?;
    let t = Instant::now();
    env.wait(60, "back to direct after the heal", back_to_direct(env))?;
    let back = t.elapsed();
    env.lab
        .ping_until(a, mb, Duration::from_secs(10))
        .map_err(|e| env.fail(&e.to_string()))?;
    Ok(back)
}

/// `cond` holds for the whole of `window` (no flapping).
fn stays(env: &Env, window: Duration, what: &str, cond: impl Fn() -> bool) -> Result<()> {
    wirekube_lab::holds_for(window, what, cond).map_err(|e| env.fail(&e.to_string()))
}

/// `wg show` on `n` has its one peer at `ip` (not a relay bridge socket).
fn wg_endpoint_is_direct(env: &Env, n: &str, ip: std::net::Ipv4Addr) -> bool {
    env.wg(n)
        .first()
        .is_some_and(|p| p.endpoint.starts_with(&format!("{ip}:")))
}

fn changes(env: &Env, n: &str) -> (f64, f64) {
    (
        env.metric(
            n,
            "wirekube_agent_dataplane_changes_total",
            "kind=\"wireguard\"",
        ),
        env.metric(
            n,
            "wirekube_agent_dataplane_changes_total",
            "kind=\"netlink\"",
        ),
    )
}

fn reconciles(env: &Env, n: &str) -> f64 {
    env.metric(n, "wirekube_agent_reconciles_total", "")
}

/// On these machines (no WireGuard module) `--engine auto`, the default, picks wireguard-go, as
/// on a node whose kernel lacks WireGuard.
#[test]
fn two_agents_direct_relay_fallback_restart_removal() -> Result<()> {
    two_agents("auto", Engine::UserspaceExternal)
}

/// The same on kernel WireGuard, chosen by `--engine auto` as on a real node: `make test-kernel`
/// runs it in a VM whose kernel has the module (`scripts/test-kernel.sh`); anywhere else auto
/// picks wireguard-go and the engine check fails.
#[test]
#[ignore = "kernel WireGuard: run by `make test-kernel` in a VM"]
fn kernel_two_agents_direct_relay_fallback_restart_removal() -> Result<()> {
    two_agents("auto", Engine::Kernel)
}

fn two_agents(engine: &'static str, kind: Engine) -> Result<()> {
    ensure!(root(), "the agent lab needs root (network namespaces)");
    let steps = Steps::new();
    let mut env = Env::build("aglab", &[A, B])?;
    env.engine = engine;
    let (ha, hb) = (env.host(A).clone(), env.host(B).clone());
    let (ma, mb) = (env.mesh_ip(A), env.mesh_ip(B));
    steps.log("lab, control plane, relay up");

    // (a) Each agent reports its key, NAT type and candidates before it has any peer.
    plan(&env, None)?;
    env.start_agent(A)?;
    env.start_agent(B)?;
    env.wait(30, "both agents report key, NAT type, candidates", || {
        [A, B].iter().all(|n| {
            env.status(n).is_some_and(|s| {
                s.public_key.is_some()
                    && s.nat_type == NatType::Open
                    && s.candidates.iter().any(|c| c.kind == CandidateKind::Host)
            })
        })
    })?;
    let st_a = env.status(A).expect("status");
    ensure!(
        st_a.candidates
            .iter()
            .any(|c| c.address.starts_with(&ha.ip().to_string())),
        "host candidate {} missing: {:?}",
        ha.ip(),
        st_a.candidates
    );
    let key_a = key(&env, A);
    for n in [A, B] {
        let got = env.status(n).and_then(|s| s.engine);
        ensure!(
            got == Some(kind),
            "{n} reports engine {got:?}, not {kind:?}"
        );
    }
    steps.log(&format!(
        "(a) status: key, natType open, candidates {:?}, engine {engine}",
        st_a.candidates.len()
    ));

    // (b) Direct pair: tunnel, ping over mesh IPs, `wg show` agrees.
    plan(&env, Some(PlannedPath::Direct))?;
    let t = Instant::now();
    env.lab
        .ping_until(&ha, mb, Duration::from_secs(30))
        .map_err(|e| env.fail(&e.to_string()))?;
    env.lab.ping(&hb, ma)?;
    let x = env
        .lab
        .tcp_transfer(&hb, &ha, ma, 4 << 20)
        .map_err(|e| env.fail(&e.to_string()))?;
    steps.log(&format!(
        "(b) direct tunnel pings after {:?}; 4 MiB TCP {:.0} Mbit/s",
        t.elapsed(),
        x.bits_per_second() / 1e6
    ));
    let wg = env.wg(A);
    ensure!(wg.len() == 1, "wg show on a: {wg:?}");
    ensure!(wg[0].public_key == key(&env, B), "wg peer key");
    ensure!(
        wg[0].endpoint == format!("{}:{LISTEN_PORT}", hb.ip()),
        "wg endpoint {}",
        wg[0].endpoint
    );
    ensure!(wg[0].latest_handshake > 0, "no handshake in wg show");
    ensure!(
        wg[0].allowed_ips == format!("{mb}/32"),
        "allowed ips {}",
        wg[0].allowed_ips
    );

    // (c) Status: direct with a handshake, both sides.
    env.wait(15, "both report direct with handshake", || {
        both_report(&env, ActualPath::Direct)
    })?;
    steps.log("(c) status direct with handshake on both sides");

    // (d) Repeat reconciles write nothing.
    for n in [A, B] {
        let (c0, r0) = (changes(&env, n), reconciles(&env, n));
        env.wait(15, "three more reconciles", || {
            reconciles(&env, n) >= r0 + 3.0
        })?;
        let c1 = changes(&env, n);
        ensure!(
            c0 == c1,
            "{n}: repeat reconciles changed the dataplane: {c0:?} -> {c1:?}"
        );
    }
    steps.log("(d) 3+ repeat reconciles per agent: 0 wireguard/netlink changes");

    // (h) Agent restart: same key and mesh IP, tunnel passes traffic throughout.
    let pinger = Pinger::start(env.lab.clone(), ha.clone(), mb);
    env.stop_agent(A)?;
    ensure!(env.wg(A).len() == 1, "wireguard-go gone with the agent");
    env.lab
        .ping(&ha, mb)
        .map_err(|e| env.fail(&format!("no traffic while the agent is down: {e}")))?;
    let t = Instant::now();
    env.start_agent(A)?;
    env.wait(20, "restarted agent reports direct", || {
        reconciles(&env, A) >= 2.0 && both_report(&env, ActualPath::Direct)
    })?;
    let (ok, lost) = pinger.finish();
    ensure!(
        lost == 0,
        "{lost} of {} pings lost across the restart",
        ok + lost
    );
    ensure!(key(&env, A) == key_a, "key changed across restart");
    let addr = env
        .lab
        .run(&ha, &["ip", "-4", "-o", "addr", "show", IFACE])?;
    ensure!(
        addr.contains(&format!("{ma}/24")),
        "mesh IP after restart: {addr}"
    );
    let (wgc, nlc) = changes(&env, A);
    steps.log(&format!(
        "(h) restart: {ok} pings, 0 lost; direct again after {:?}; adoption wrote {wgc} wg / {nlc} netlink changes",
        t.elapsed()
    ));

    // (f) Established direct path dies under traffic (both ways, then one way): the pair is on
    // the relay within 3 s, i.e. at most 30 of the pings sent every 100 ms are lost (the
    // liveness requests of docs/agent.md, Fast failover), then back to direct.
    for one_way in [false, true] {
        let what = if one_way { "one-way (a->b)" } else { "two-way" };
        let ping = env.lab.start_ping(&ha, mb, Duration::from_millis(100))?;
        env.lab
            .ping_until(&ha, mb, path_up())
            .map_err(|e| env.fail(&e.to_string()))?;
        let t = Instant::now();
        if one_way {
            env.lab.block_udp_one_way(ha.ip(), hb.ip())?;
        } else {
            env.lab.block_udp(ha.ip(), hb.ip(), None)?;
        }
        env.wait(60, "fallback to relay reported", || both_fell_back(&env))?;
        let fell = t.elapsed();
        // The stream keeps running until the relay carries it: its losses are the failover's.
        env.lab
            .ping_until(&ha, mb, path_up())
            .map_err(|e| env.fail(&e.to_string()))?;
        let rep = env.lab.finish_ping(ping)?;
        steps.log(&format!(
            "(f) {what} loss under 10/s pings: {} lost of {} (longest gap {:?}); both report relay after {fell:?}",
            rep.lost(),
            rep.sent,
            rep.longest_gap_time()
        ));
        ensure!(
            rep.lost() <= max_lost(),
            "{what} failover lost {} pings (longest gap {:?}); at most {} allowed",
            rep.lost(),
            rep.longest_gap_time(),
            max_lost()
        );
        let back = heal_and_return_to_direct(&env, &ha, &hb, mb)?;
        ensure!(
            wg_endpoint_is_direct(&env, A, hb.ip()) && wg_endpoint_is_direct(&env, B, ha.ip()),
            "status says direct but wg show: {:?} / {:?}",
            env.wg(A),
            env.wg(B)
        );
        steps.log(&format!(
            "(f) healed: both back to direct after {back:?} (probe interval {PROBE_INTERVAL_SECS} s)"
        ));
        // It stays there (no flapping), and after 5 s fast failover is armed again
        // (docs/agent.md, Fast failover: the settle time after a probe).
        stays(
            &env,
            Duration::from_secs(6),
            "direct after the heal",
            || both_report(&env, ActualPath::Direct),
        )?;
    }

    // (g) A removed peer disappears from WireGuard and routes.
    plan(&env, None)?;
    env.wait(15, "peer removed from wg and routes", || {
        [A, B].iter().all(|n| {
            env.wg(n).is_empty()
                && !env
                    .routes(n)
                    .contains(&format!("{}/32", if *n == A { mb } else { ma }))
        })
    })?;
    ensure!(
        env.lab.ping(&ha, mb).is_err(),
        "ping still works after removal"
    );
    steps.log("(g) removed peer gone from wg show and routing tables");

    // (f') Planned direct over a dead path from the start: relay within directTimeout + 3 s.
    env.lab.block_udp(ha.ip(), hb.ip(), None)?;
    let t = Instant::now();
    plan(&env, Some(PlannedPath::Direct))?;
    env.wait(12 + 8, "fresh direct pair falls back to relay", || {
        both_fell_back(&env)
    })?;
    let fell = t.elapsed();
    env.lab
        .ping_until(&ha, mb, path_up())
        .map_err(|e| env.fail(&e.to_string()))?;
    steps.log(&format!(
        "(f) dead direct path from the start: relay after {fell:?} (directTimeout 12 s)"
    ));
    // directTimeout + 5 s: the issue asks for a fallback within the timeout plus a few seconds.
    ensure!(
        fell <= max_fallback(),
        "fallback took {fell:?}, more than {:?}",
        max_fallback()
    );
    // ... and back when it heals.
    let back = heal_and_return_to_direct(&env, &ha, &hb, mb)?;
    steps.log(&format!(
        "(f) dead-from-the-start path healed: back to direct after {back:?}"
    ));
    env.lab.block_udp(ha.ip(), hb.ip(), None)?;

    // (e) Planned relay with UDP blocked: carried by the relay, no fallback flag.
    plan(&env, Some(PlannedPath::Relay))?;
    env.wait(15, "planned relay reported", || {
        both_report(&env, ActualPath::Relay)
            && [(A, B), (B, A)].iter().all(|(n, p)| {
                env.status(n)
                    .as_ref()
                    .and_then(|s| conn(s, p).cloned())
                    .is_some_and(|c| !c.fallback)
            })
    })?;
    env.lab
        .ping_until(&ha, mb, path_up())
        .map_err(|e| env.fail(&e.to_string()))?;
    let x = env
        .lab
        .tcp_transfer(&hb, &ha, ma, 4 << 20)
        .map_err(|e| env.fail(&e.to_string()))?;
    let ep = env.wg(A)[0].endpoint.clone();
    ensure!(ep.starts_with("127.0.0.1:"), "relay endpoint in wg: {ep}");
    // The relay connection carries WireGuard's fwmark (SO_MARK), so the bypass rule keeps it
    // out of the mesh table.
    let relay_addr = format!("{}:{RELAY_PORT}", env.dmz.ips[0]);
    let ss = env.lab.run(&ha, &["ss", "-tnHe", "dst", &relay_addr])?;
    ensure!(
        ss.contains(&format!("fwmark:{:#x}", wirekube_dataplane::DEFAULT_FWMARK)),
        "relay TCP socket not marked: {ss}"
    );
    steps.log(&format!(
        "(e) planned relay with UDP blocked: ping + 4 MiB TCP ({:.0} Mbit/s) via {ep}",
        x.bits_per_second() / 1e6
    ));

    // (i) The first relayEndpoints entry is dead (nothing listens there): after 10 s without a
    // relay connection each agent moves to the next entry and the relayed pair works again.
    let dead = format!("{}:{}", env.dmz.ips[0], RELAY_PORT - 1);
    let (ka, kb) = (key(&env, A), key(&env, B));
    for (n, p, k) in [(A, B, &kb), (B, A, &ka)] {
        let mut spec = env.spec(n, &[(p, k.as_str(), PlannedPath::Relay)]);
        spec.relay_endpoints.insert(0, dead.clone());
        env.apply_spec(n, spec)?;
    }
    let t = Instant::now();
    env.wait(
        40,
        "both agents connected to the second relay endpoint",
        || {
            [A, B].iter().all(|n| {
                env.status(n).is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "RelayConnected" && c.status == "True")
                })
            }) && env.lab.ping(&ha, mb).is_ok()
        },
    )?;
    steps.log(&format!(
        "(i) first relay endpoint dead: relayed pair pings again after {:?} (failover after 10 s)",
        t.elapsed()
    ));
    env.lab.heal_all()?;
    for n in [A, B] {
        env.stop_agent(n)?;
    }
    let lines = no_private_key_in_logs(&env)?;
    steps.log(&format!(
        "(j) {lines} agent log lines (every level of our crates): no private key in any"
    ));
    // (k) `wirekube-agent cleanup` leaves nothing of ours: no link, route, rule or daemon.
    for n in [A, B] {
        env.cleanup(n)?;
        let left = env.leftovers(n)?;
        ensure!(left.is_empty(), "{n}: cleanup left {left}");
    }
    steps.log("(k) cleanup: no link, route, rule or engine process left on either node");
    env.lab.shutdown()?;
    steps.log("done");
    Ok(())
}

/// Checks every log line of every agent run for the node's private key (base64 as stored, and
/// hex); returns the number of lines checked.
fn no_private_key_in_logs(env: &Env) -> Result<usize> {
    use base64::Engine as _;
    let (mut lines, mut change_sets) = (0, 0);
    for (n, proc) in &env.agent_runs {
        let stored = env
            .lab
            .run(env.host(n), &["cat", "/var/lib/wirekube/private.key"])?;
        let b64 = stored.trim();
        let raw = base64::engine::general_purpose::STANDARD.decode(b64)?;
        ensure!(raw.len() == 32, "{n}: key file holds {} bytes", raw.len());
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let log = env.lab.log(proc);
        for line in log.lines() {
            ensure!(
                !line.contains(b64) && !line.to_ascii_lowercase().contains(&hex),
                "{n}: private key in a log line: {line}"
            );
        }
        lines += log.lines().count();
        change_sets += log.matches("WireGuard changes").count();
    }
    // The debug lines that once carried the key (the dataplane's change sets) were captured.
    ensure!(
        change_sets > 0,
        "no WireGuard change set logged: is debug on?"
    );
    Ok(lines)
}
