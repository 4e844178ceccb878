//! Mesh controller against the real control plane (kube-apiserver, controller-manager's garbage
//! collector; `common`): peers per node, writes only for changed specs, garbage collection,
//! invalid specs, restart safety.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Env, condition, eventually, settled};
use kube::ResourceExt;
use kube::api::DeleteParams;
use serde_json::json;
use wirekube_crds::{NatType, PathReason, PlannedPath, WireKubePeer};

const T: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(800);

fn generations(peers: &[WireKubePeer]) -> BTreeMap<String, i64> {
    peers
        .iter()
        .map(|p| (p.name_any(), p.metadata.generation.unwrap_or(0)))
        .collect()
}

/// Peers whose spec generation moved between two snapshots (new peers count as moved).
fn moved(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>) -> usize {
    after
        .iter()
        .filter(|(n, g)| before.get(*n) != Some(g))
        .count()
}

fn entry<'a>(
    peers: &'a [WireKubePeer],
    from: &str,
    to: &str,
) -> Option<&'a wirekube_crds::PeerEntry> {
    peers
        .iter()
        .find(|p| p.name_any() == from)?
        .spec
        .peers
        .iter()
        .find(|e| e.name == to)
}

async fn peers_where(
    env: &Env,
    what: &str,
    f: impl Fn(&[WireKubePeer]) -> bool,
) -> Vec<WireKubePeer> {
    eventually(T, what, || async {
        let p = env.peer_list().await;
        f(&p).then_some(p)
    })
    .await
}

#[test]
fn peers_follow_nodes_and_only_changed_specs_are_written() {
    common::run("opm", |env| async move {
        let op = env.operator("op-0", 15).await;
        for (n, ip) in [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")] {
            env.add_node(n, ip, None).await;
        }
        env.apply_mesh("default", common::mesh_spec()).await;

        // 3 nodes → 3 peers, each listing the other two, owned by its Node, labelled with the mesh.
        let peers = peers_where(&env, "3 peers with 2 entries", |p| {
            p.len() == 3
                && p.iter()
                    .all(|x| x.spec.peers.len() == 2 && !x.spec.mesh_ip.is_empty())
        })
        .await;
        for p in &peers {
            assert_eq!(p.labels()["wirekube.io/mesh"], "default");
            let o = &p.owner_references()[0];
            assert_eq!(
                (o.kind.as_str(), o.name.as_str()),
                ("Node", p.name_any().as_str())
            );
            assert_eq!(p.spec.relay_endpoints, ["198.51.100.50:3478"]);
            assert_eq!(
                p.spec.relay_token_secret.as_deref(),
                Some("wirekube-relay-default")
            );
        }

        // Agents report: a full-cone, b and c symmetric → b-c relayed, the rest direct.
        env.report(
            "a",
            "key-a",
            NatType::FullCone,
            "192.168.1.10:51820",
            Some("198.51.100.1:40000"),
        )
        .await;
        env.report(
            "b",
            "key-b",
            NatType::Symmetric,
            "192.168.2.10:51820",
            Some("198.51.100.2:40000"),
        )
        .await;
        env.report(
            "c",
            "key-c",
            NatType::Symmetric,
            "192.168.3.10:51820",
            Some("198.51.100.3:40000"),
        )
        .await;
        let peers = peers_where(&env, "planned paths", |p| {
            entry(p, "b", "c").is_some_and(|e| e.path == PlannedPath::Relay)
                && entry(p, "a", "b").is_some_and(|e| e.path == PlannedPath::Direct)
                && entry(p, "c", "a")
                    .is_some_and(|e| e.path == PlannedPath::Direct && !e.public_key.is_empty())
        })
        .await;
        assert_eq!(
            entry(&peers, "b", "c").unwrap().reason,
            PathReason::BothSymmetric
        );
        let m = eventually(T, "mesh status paths", || async {
            let m = env.mesh("default").await;
            let s = m.status.as_ref()?;
            (s.paths.direct == 2 && s.paths.relay == 1 && s.nodes.total == 3).then_some(m)
        })
        .await;
        let ready = condition(&m, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Reconciled")
        );
        let relay = condition(&m, "RelayReady").unwrap();
        assert_eq!(
            (relay.status.as_str(), relay.reason.as_str()),
            ("True", "ExternalEndpoint")
        );
        assert_eq!(
            m.status.as_ref().unwrap().observed_generation,
            m.metadata.generation
        );
        let mesh_ips: BTreeMap<_, _> = peers
            .iter()
            .map(|p| (p.name_any(), p.spec.mesh_ip.clone()))
            .collect();

        // A status update that changes no planning fact (traffic counters) → zero writes.
        let w0 = settled(QUIET, || op.writes()).await;
        let g0 = generations(&env.peer_list().await);
        env.peers()
        .patch_status(
            "a",
            &Default::default(),
            &kube::api::Patch::Merge(json!({"status": {"summary": {"direct": 2, "relay": 0, "connecting": 0, "down": 0}}})),
        )
        .await
        .unwrap();
        let w1 = settled(QUIET, || op.writes()).await;
        assert_eq!(
            w1, w0,
            "a counters-only status update must not write anything"
        );
        assert_eq!(generations(&env.peer_list().await), g0);

        // A 4th node joins: its peer is created and the three others gain an entry; nothing else.
        env.add_node("d", "10.0.0.4", None).await;
        let peers = peers_where(&env, "4 peers with 3 entries", |p| {
            p.len() == 4 && p.iter().all(|x| x.spec.peers.len() == 3)
        })
        .await;
        let w2 = settled(QUIET, || op.writes()).await;
        let g2 = generations(&env.peer_list().await);
        eprintln!("writes after join: {}", w2 - w1);
        assert_eq!(moved(&g0, &g2), 4);
        // 4 peer applies + mesh status + the NodeJoined event.
        assert_eq!(
            w2 - w1,
            4 + 1 + 1,
            "exactly the changed peers, the status and one event"
        );
        for p in &peers {
            if let Some(ip) = mesh_ips.get(&p.name_any()) {
                assert_eq!(&p.spec.mesh_ip, ip, "mesh IPs stay where they were");
            }
        }

        // d reports a NAT type: only the specs that actually change are written.
        env.report(
            "d",
            "key-d",
            NatType::Open,
            "203.0.113.4:51820",
            Some("203.0.113.4:51820"),
        )
        .await;
        peers_where(&env, "d planned direct", |p| {
            entry(p, "b", "d").is_some_and(|e| e.path == PlannedPath::Direct)
        })
        .await;
        let w3 = settled(QUIET, || op.writes()).await;
        let g3 = generations(&env.peer_list().await);
        let changed = moved(&g2, &g3);
        eprintln!(
            "NAT change: {changed} peer specs changed, {} writes",
            w3 - w2
        );
        assert!(changed >= 3);
        assert!(
            w3 - w2 <= changed as u64 + 1,
            "peer writes + at most one status write"
        );

        // Node c is deleted: the API server garbage-collects its peer, the others drop it.
        env.nodes()
            .delete("c", &DeleteParams::default())
            .await
            .unwrap();
        peers_where(&env, "c gone everywhere", |p| {
            p.len() == 3
                && p.iter()
                    .all(|x| x.spec.peers.len() == 2 && entry(p, &x.name_any(), "c").is_none())
        })
        .await;
        eventually(T, "mesh counts 3 nodes", || async {
            let m = env.mesh("default").await;
            (m.status?.nodes.total == 3).then_some(())
        })
        .await;
        op.shutdown().await;
    });
}

#[test]
fn invalid_mesh_reports_field_and_keeps_previous_state() {
    common::run("opm", |env| async move {
        let op = env.operator("op-0", 15).await;
        env.add_node("a", "10.0.0.1", None).await;
        env.add_node("b", "10.0.0.2", None).await;
        env.apply_mesh("default", common::mesh_spec()).await;
        let before = peers_where(&env, "2 peers", |p| {
            p.len() == 2 && p.iter().all(|x| x.spec.peers.len() == 1)
        })
        .await;
        let g0 = generations(&before);
        eventually(T, "Ready", || async {
            let m = env.mesh("default").await;
            condition(&m, "Ready")
                .is_some_and(|c| c.status == "True")
                .then_some(())
        })
        .await;

        // Passes the schema, fails validate(): directTimeout out of range.
        let mut bad = common::mesh_spec();
        bad["relay"]["directTimeout"] = json!("1h");
        bad["mtu"] = json!(1400);
        env.apply_mesh("default", bad).await;
        let m = eventually(T, "Ready=False InvalidSpec", || async {
            let m = env.mesh("default").await;
            let c = condition(&m, "Ready")?;
            (c.reason == "InvalidSpec").then_some(m.clone())
        })
        .await;
        let c = condition(&m, "Ready").unwrap();
        assert_eq!(c.status, "False");
        assert!(
            c.message.contains("spec.relay.directTimeout"),
            "{}",
            c.message
        );
        assert!(c.message.contains("fix:"), "{}", c.message);
        let s = m.status.as_ref().unwrap();
        assert_eq!(s.observed_generation, m.metadata.generation);
        assert_eq!(
            s.relay_endpoints,
            ["198.51.100.50:3478"],
            "previous good state stays"
        );
        settled(QUIET, || op.writes()).await;
        let after = env.peer_list().await;
        assert_eq!(
            generations(&after),
            g0,
            "nothing applied for an invalid spec"
        );
        assert!(after.iter().all(|p| p.spec.mtu == 1420));

        // Fixing it applies the new spec.
        let mut good = common::mesh_spec();
        good["mtu"] = json!(1400);
        env.apply_mesh("default", good).await;
        peers_where(&env, "mtu applied", |p| {
            p.iter().all(|x| x.spec.mtu == 1400)
        })
        .await;
        op.shutdown().await;
    });
}

#[test]
fn operator_restart_writes_nothing() {
    common::run("opm", |env| async move {
        let op = env.operator("op-0", 15).await;
        for (n, ip) in [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")] {
            env.add_node(n, ip, None).await;
        }
        env.apply_mesh("default", common::mesh_spec()).await;
        peers_where(&env, "3 peers", |p| p.len() == 3).await;
        env.report(
            "a",
            "key-a",
            NatType::FullCone,
            "192.168.1.10:51820",
            Some("198.51.100.1:40000"),
        )
        .await;
        peers_where(&env, "3 planned peers", |p| {
            p.len() == 3 && entry(p, "b", "a").is_some_and(|e| !e.public_key.is_empty())
        })
        .await;
        settled(QUIET, || op.writes()).await;
        let rv_before = env.resource_version().await;
        let peers_before = env.peer_list().await;
        let mesh_before = env.mesh("default").await;
        op.shutdown().await;

        let op2 = env.operator("op-1", 15).await;
        eventually(T, "new replica reconciled", || async {
            (op2.reconciles() >= 1).then_some(())
        })
        .await;
        settled(QUIET, || op2.writes()).await;
        assert_eq!(
            op2.writes(),
            0,
            "a restarted operator must not rewrite anything"
        );
        let peers_after = env.peer_list().await;
        for (a, b) in peers_before.iter().zip(&peers_after) {
            assert_eq!(
                a.resource_version(),
                b.resource_version(),
                "peer {} rewritten",
                a.name_any()
            );
        }
        assert_eq!(
            mesh_before.resource_version(),
            env.mesh("default").await.resource_version()
        );
        // Only the Lease moved.
        eprintln!(
            "resourceVersion {rv_before} -> {}",
            env.resource_version().await
        );
        op2.shutdown().await;
    });
}
