//! Spec writes that only record an endpoint the node already uses wait (`deferral`), against
//! the real control plane (`common`): a symmetric peer's observed address lands in the
//! spec at once while the node reports the pair still connecting, and only after the record
//! delay once the node reports it Direct over that very address.

mod common;

use std::time::Duration;

use common::{Env, eventually};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use wirekube_crds::{NatType, PeerEntry, PlannedPath, WireKubePeer};

const T: Duration = Duration::from_secs(20);
/// The operator's record delay in this test: long against the deadline that proves a write
/// was not held ([`NOT_HELD`]).
const DELAY: Duration = Duration::from_secs(12);
const NOT_HELD: Duration = Duration::from_secs(6);

const B_SEEN: &str = "198.51.100.2:31000";
const C_SEEN: &str = "198.51.100.3:32000";

async fn a_entry(env: &Env, to: &str) -> Option<PeerEntry> {
    let a: WireKubePeer = env.peers().get("a").await.ok()?;
    a.spec.peers.into_iter().find(|e| e.name == to)
}

/// What node a's agent reports: its candidates with the peers' addresses it observed
/// (`prflx`), and its connections.
async fn report_a(env: &Env, observed: &[(&str, &str)], connections: serde_json::Value) {
    let mut candidates = vec![
        json!({"kind": "host", "address": "192.168.1.10:51820", "prefixLength": 24}),
        json!({"kind": "srflx", "address": "198.51.100.1:40000"}),
    ];
    for (peer, addr) in observed {
        candidates.push(json!({"kind": "prflx", "address": addr, "observedBy": peer}));
    }
    env.peers()
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "candidates": candidates, "connections": connections,
            }})),
        )
        .await
        .unwrap();
}

fn conn(peer: &str, path: &str, endpoint: &str) -> serde_json::Value {
    json!({"name": peer, "path": path, "endpoint": endpoint, "rxBytes": 1, "txBytes": 1,
           "fallback": false, "transitions": 1})
}

#[test]
fn endpoint_records_wait_and_then_land() {
    common::run("oprec", |env| async move {
        let op = env
            .operator_with("op-0", 15, |s| s.record_delay = DELAY)
            .await;
        for (n, ip) in [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")] {
            env.add_node(n, ip, None).await;
        }
        env.apply_mesh("default", common::mesh_spec()).await;
        eventually(T, "3 peers", || async {
            (env.peer_list().await.len() == 3).then_some(())
        })
        .await;
        let a = ("a", "192.168.1.10:51820", Some("198.51.100.1:40000"));
        env.report(a.0, "key-a", NatType::FullCone, a.1, a.2).await;
        let b = ("b", "192.168.2.10:51820", Some("198.51.100.2:40000"));
        env.report(b.0, "key-b", NatType::Symmetric, b.1, b.2).await;
        let c = ("c", "192.168.3.10:51820", Some("198.51.100.3:40000"));
        env.report(c.0, "key-c", NatType::Symmetric, c.1, c.2).await;
        // a reaches its symmetric peers direct, at the address it will observe (none yet).
        for peer in ["b", "c"] {
            eventually(T, "a's symmetric peers planned direct", || async {
                let e = a_entry(&env, peer).await?;
                (e.path == PlannedPath::Direct && e.endpoint.is_none()).then_some(())
            })
            .await;
        }

        // Observed while the pair is still connecting: the plan's new endpoint is news to the
        // node's own configuration, written at once (well within the delay).
        report_a(
            &env,
            &[("b", B_SEEN)],
            json!([conn("b", "connecting", B_SEEN)]),
        )
        .await;
        eventually(NOT_HELD, "a -> b endpoint written at once", || async {
            let e = a_entry(&env, "b").await?;
            (e.endpoint.as_deref() == Some(B_SEEN)).then_some(())
        })
        .await;

        // Observed and Direct over that address: only a record, held for the delay.
        let direct = json!([conn("b", "direct", B_SEEN), conn("c", "direct", C_SEEN)]);
        report_a(&env, &[("b", B_SEEN), ("c", C_SEEN)], direct).await;
        eventually(T, "the record held", || async {
            (op.records_held("default") == 1).then_some(())
        })
        .await;
        let held = a_entry(&env, "c").await.unwrap();
        assert_eq!(held.endpoint, None, "held, not written: {held:?}");
        let generation = env.peers().get("a").await.unwrap().metadata.generation;

        // Then written, with nothing else of the spec changed, and no longer held.
        eventually(DELAY + T, "a -> c endpoint recorded", || async {
            let e = a_entry(&env, "c").await?;
            (e.endpoint.as_deref() == Some(C_SEEN)).then_some(())
        })
        .await;
        let after = env.peers().get("a").await.unwrap();
        assert_eq!(
            after.metadata.generation,
            generation.map(|g| g + 1),
            "one write of a's spec"
        );
        eventually(T, "nothing held", || async {
            (op.records_held("default") == 0).then_some(())
        })
        .await;
        op.shutdown().await;
    });
}
