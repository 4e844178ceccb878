//! Operator benchmark (not a timed test): the real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler; `wirekube_e2e::kube_lab`) in a lab DMZ with the
//! namespace, CRDs and RBAC applied as shipped, N simulated nodes (default 1,000;
//! `WIREKUBE_BENCH_NODES`; Node objects created by the admin, no kubelets) whose agents report
//! statuses, one operator replica with a TokenRequest token of its ServiceAccount. Needs root.
//!
//! Measures, with the operator's own write counter (peer applies, status applies, events):
//! 1. mesh creation → every node has a peer listing every other node;
//! 2. all agents report keys and NAT types → every peer entry carries its key;
//! 3. one node changes NAT type → writes until quiet, and the time of the last one.
//!
//! Run: `cargo bench -p wirekube-operator --bench operator` (as root).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wirekube_crds::{NatType, WireKubePeer};
use wirekube_e2e::kube_lab::KubeLab;
use wirekube_e2e::scenario::Cluster;
use wirekube_kubelab::controlplane::{ControlPlane, ControlPlaneConfig};
use wirekube_lab::Lab;
use wirekube_operator::{ControllerSettings, Metrics, OperatorSettings};

fn nat_of(i: usize) -> NatType {
    [
        NatType::FullCone,
        NatType::AddressRestricted,
        NatType::PortRestricted,
        NatType::Symmetric,
    ][i % 4]
}

fn name(i: usize) -> String {
    format!("node-{i:04}")
}

/// A whole number from the environment, `default` when unset. A value that does not parse
/// stops the bench: measuring another configuration than the one asked for is worse.
fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, got {v:?}")),
    }
}

/// A well-formed WireGuard public key for node `i` (the CRD validates the format).
fn bench_key(i: usize) -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn report(peers: &Api<WireKubePeer>, i: usize, nat: NatType) {
    let (a, b) = (i / 250, i % 250);
    let body = json!({"status": {
        "publicKey": bench_key(i),
        "natType": nat,
        "publicIP": format!("198.18.{a}.{b}"),
        "candidates": [
            {"kind": "host", "address": format!("10.{a}.{b}.10:51820"), "prefixLength": 24},
            {"kind": "srflx", "address": format!("198.18.{a}.{b}:40000")},
        ],
    }});
    peers
        .patch_status(&name(i), &PatchParams::default(), &Patch::Merge(body))
        .await
        .expect("status patch");
}

/// Peer applies so far (from the operator's write counter).
fn peer_applies(m: &Metrics) -> u64 {
    let prefix = "wirekube_operator_api_writes_total{kind=\"WireKubePeer\",verb=\"apply\"}";
    m.encode()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Polls `done` (cheap: the operator's counters, the small mesh object) every 50 ms; returns
/// the elapsed time since `since`. Listing 1,000 peers of ~1,000 entries each would load the
/// API server more than the operator does, so peers are listed once, at the end.
async fn until<F: std::future::Future<Output = bool>>(
    since: Instant,
    what: &str,
    mut done: impl FnMut() -> F,
) -> Duration {
    loop {
        if done().await {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(900),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the write counter is quiet for `quiet`; returns (writes, time of last write).
async fn quiet_writes(m: &Metrics, since: Instant, quiet: Duration) -> (u64, Duration) {
    let mut last = m.total_writes();
    let mut last_at = since.elapsed();
    let mut still = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = m.total_writes();
        if now != last {
            last = now;
            last_at = since.elapsed();
            still = Instant::now();
        } else if still.elapsed() >= quiet {
            return (now, last_at);
        }
    }
}

/// `KubeLab::start` with a cluster CIDR large enough for one /24 podCIDR per node (node IPAM
/// in the controller-manager; the default /16 holds 256).
fn start_lab() -> KubeLab {
    let lab = Arc::new(Lab::new_unique("opb").expect("lab (needs root)"));
    let dmz = lab.add_dmz("dmz", &[]).expect("dmz");
    let mut cfg = ControlPlaneConfig::new().expect("Kubernetes binaries");
    cfg.cluster_cidr = "172.16.0.0/12".parse().unwrap();
    let cp = ControlPlane::start(&lab, &dmz, cfg).expect("control plane");
    let ns = wirekube_lab::netns::ns_path(&dmz.ns);
    let admin = Cluster::connect(&cp.admin_kubeconfig(), Some(&ns)).expect("admin client");
    KubeLab {
        lab,
        dmz,
        cp,
        admin,
    }
}

fn main() {
    let n = env_number("WIREKUBE_BENCH_NODES", 1000) as usize;
    let t = Instant::now();
    let lab = start_lab();
    common::install(&lab);
    eprintln!(
        "control plane up and WireKube installed in {:?}",
        t.elapsed()
    );
    let admin_kc = lab.cp.admin_kubeconfig();
    let operator_kc = lab
        .service_account_kubeconfig(common::NS, "wirekube-operator", None)
        .expect("operator token");
    common::in_dmz(&lab, move || bench(n, admin_kc, operator_kc));
    lab.shutdown().expect("lab shutdown");
}

async fn bench(n: usize, admin_kc: PathBuf, operator_kc: PathBuf) {
    let admin = common::client(&admin_kc).await;
    let nodes: Api<Node> = Api::all(admin.clone());
    let peers: Api<WireKubePeer> = Api::all(admin.clone());
    let t = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let nodes = nodes.clone();
            async move {
                let node: Node = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Node", "metadata": {"name": name(i)},
                }))
                .unwrap();
                nodes
                    .create(&PostParams::default(), &node)
                    .await
                    .expect("create node");
                let (a, b) = (i / 250, i % 250);
                nodes
                    .patch_status(
                        &name(i),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"addresses": [
                            {"type": "InternalIP", "address": format!("10.{a}.{b}.10")}]}})),
                    )
                    .await
                    .expect("node status");
            }
        })
        .await;
    eprintln!("{n} nodes registered in {:?}", t.elapsed());

    let metrics = Metrics::default();
    let stop = CancellationToken::new();
    let client = common::client(&operator_kc).await;
    let settings = OperatorSettings {
        controller: ControllerSettings {
            namespace: "wirekube-system".into(),
            identity: "bench".into(),
            // WIREKUBE_BENCH_DEBOUNCE_MS compares with a quiet-time debounce (default: none,
            // as shipped).
            debounce: std::time::Duration::from_millis(env_number("WIREKUBE_BENCH_DEBOUNCE_MS", 0)),
            ..ControllerSettings::default()
        },
        lease_name: "wirekube-operator".into(),
        lease_duration: 15,
    };
    let op = tokio::spawn(wirekube_operator::run(
        client,
        settings,
        metrics.clone(),
        Arc::new(AtomicBool::new(false)),
        stop.clone(),
    ));
    while metrics.leader.get() != 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 1. Mesh creation → every peer spec written.
    let meshes: Api<wirekube_crds::WireKubeMesh> = Api::all(admin.clone());
    let t0 = Instant::now();
    let mesh = json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubeMesh",
        "metadata": {"name": "default"},
        "spec": {"meshCIDR": "10.99.0.0/16",
                 "relay": {"provider": "external", "external": {"endpoint": "203.0.113.1:3478"}}}});
    meshes
        .patch(
            "default",
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&mesh),
        )
        .await
        .unwrap();
    let d1 = until(t0, "all peers", || async {
        peer_applies(&metrics) >= n as u64
    })
    .await;
    let (w1, _) = quiet_writes(&metrics, t0, Duration::from_secs(2)).await;
    println!(
        "| mesh created → {n} peer specs written | {:.2} s | {w1} writes |",
        d1.as_secs_f64()
    );

    // 2. Every agent reports → every entry carries its peer's key.
    let t1 = Instant::now();
    stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let peers = peers.clone();
            async move { report(&peers, i, nat_of(i)).await }
        })
        .await;
    let reported = t1.elapsed();
    let d2 = until(t1, "no pending nodes", || async {
        let m = meshes.get("default").await.expect("mesh");
        m.status
            .is_some_and(|s| s.nodes.total == n as u32 && s.nodes.pending == 0)
    })
    .await;
    let (w2, last2) = quiet_writes(&metrics, t1, Duration::from_secs(3)).await;
    println!(
        "| {n} agents report (took {:.2} s) → every key planned | {:.2} s (last write {:.2} s) | {} writes |",
        reported.as_secs_f64(),
        d2.as_secs_f64(),
        last2.as_secs_f64(),
        w2 - w1
    );
    println!(
        "| full start (mesh created → converged with statuses) | {:.2} s | {w2} writes |",
        (d1 + reported).as_secs_f64() + last2.as_secs_f64() - reported.as_secs_f64()
    );

    // 3. One node changes NAT type (full-cone → symmetric).
    let t2 = Instant::now();
    report(&peers, 0, NatType::Symmetric).await;
    // A reconcile of a large mesh takes longer than the quiet window: wait for its first write.
    until(t2, "a write after the NAT change", || async {
        metrics.total_writes() > w2
    })
    .await;
    let (w3, last3) = quiet_writes(&metrics, t2, Duration::from_secs(3)).await;
    println!(
        "| one node changes NAT type | last write after {:.2} s | {} writes |",
        last3.as_secs_f64(),
        w3 - w2
    );
    let list = peers
        .list(&ListParams::default())
        .await
        .expect("list")
        .items;
    assert_eq!(list.len(), n);
    assert!(
        list.iter().all(|p| p.spec.peers.len() == n - 1
            && p.spec.peers.iter().all(|e| !e.public_key.is_empty()))
    );
    let reconciles = metrics.reconciles.get();
    let text = metrics.encode();
    let sum = text
        .lines()
        .find(|l| l.starts_with("wirekube_operator_reconcile_duration_seconds_sum"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    println!(
        "| reconciles | {reconciles} | mean {:.0} ms |",
        1000.0 * sum / reconciles.max(1) as f64
    );
    // Where the writes went, and why reconciles failed (conflicts, ...).
    for l in text.lines().filter(|l| {
        l.starts_with("wirekube_operator_api_writes_total")
            || l.starts_with("wirekube_operator_reconcile_failures_total")
    }) {
        println!("  {l}");
    }
    print_events(&admin).await;
    stop.cancel();
    let _ = op.await;
}

/// The operator's events by reason: how many objects, and how many occurrences (the recorder
/// folds a repeated reason + note into one object's series).
async fn print_events(admin: &kube::Client) {
    use k8s_openapi::api::events::v1::Event;
    let events: Api<Event> = Api::all(admin.clone());
    let list = events.list(&ListParams::default()).await.expect("events");
    let mut by_reason: std::collections::BTreeMap<String, (usize, i32)> = Default::default();
    for e in list.items.iter().filter(|e| {
        e.reporting_controller.as_deref() == Some("wirekube-operator")
            || e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("WireKubeMesh")
    }) {
        let entry = by_reason
            .entry(e.reason.clone().unwrap_or_default())
            .or_default();
        entry.0 += 1;
        entry.1 += e.series.as_ref().map_or(1, |s| s.count);
    }
    for (reason, (objects, occurrences)) in by_reason {
        println!("  event {reason}: {objects} objects, {occurrences} occurrences");
    }
}
