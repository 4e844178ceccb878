//! Spec updates wait while nodes publish their first keys (`joining`), against the real
//! control plane (`common`): three nodes report their keys one after another while a fourth
//! has none; no spec is updated until the keys have been quiet for the hold's quiet time,
//! a node that joins meanwhile gets its peer at once, and then every spec is written once,
//! with all three keys.

mod common;

use std::time::{Duration, Instant};

use common::{Env, eventually};
use serde_json::json;
use wirekube_crds::{NatType, WireKubePeer};
use wirekube_operator::joining::HoldTimes;

const T: Duration = Duration::from_secs(20);
/// The hold's quiet time in this test: long against the time three status patches take, so
/// that they land within one hold, and against [`NOT_HELD`].
const QUIET: Duration = Duration::from_secs(8);
const NOT_HELD: Duration = Duration::from_secs(4);

fn mesh_spec() -> serde_json::Value {
    json!({
        "meshCIDR": "10.99.0.0/24",
        "nodeSelector": {"wirekube.io/enabled": "true"},
        "relay": {"provider": "external", "external": {"endpoint": "198.51.100.50:3478"}},
    })
}

/// The peers whose key `p`'s spec carries.
fn keyed(p: &WireKubePeer) -> Vec<&str> {
    (p.spec.peers.iter())
        .filter(|e| !e.public_key.is_empty())
        .map(|e| e.name.as_str())
        .collect()
}

async fn peer(env: &Env, node: &str) -> Option<WireKubePeer> {
    env.peers().get(node).await.ok()
}

#[test]
fn spec_updates_wait_for_the_keys_still_arriving() {
    common::run("opjoin", |env| async move {
        let times = HoldTimes {
            quiet: QUIET,
            max: QUIET * 2,
        };
        let op = env.operator_with("op-0", 15, |s| s.key_hold = times).await;
        let nodes = [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")];
        for (n, ip) in nodes.iter().chain(&[("d", "10.0.0.4")]) {
            env.add_node(n, ip, None).await;
        }
        env.apply_mesh("default", mesh_spec()).await;
        eventually(T, "4 peers", || async {
            (env.peer_list().await.len() == 4).then_some(())
        })
        .await;
        let created = env.peer_list().await;
        for p in &created {
            assert_eq!(p.metadata.generation, Some(1), "{:?}", p.metadata.name);
            assert!(keyed(p).is_empty(), "no keys yet: {:?}", keyed(p));
        }

        // Three keys one after another; d has none.
        let reported = Instant::now();
        for (i, (n, ip)) in nodes.iter().enumerate() {
            let host = format!("{ip}:51820");
            let srflx = format!("198.51.100.{}:4000{i}", i + 1);
            env.report(
                n,
                &format!("key-{n}"),
                NatType::FullCone,
                &host,
                Some(&srflx),
            )
            .await;
        }
        eventually(NOT_HELD, "the updates held", || async {
            (op.held_for_keys("default") == 4).then_some(())
        })
        .await;

        // A node joining meanwhile gets its peer at once.
        env.add_node("e", "10.0.0.5", None).await;
        eventually(NOT_HELD, "e's peer created during the hold", || async {
            peer(&env, "e").await.map(|_| ())
        })
        .await;
        assert!(
            reported.elapsed() < QUIET,
            "the checks above ran within the hold ({:?}); nothing to conclude",
            reported.elapsed()
        );
        for n in ["a", "b", "c", "d"] {
            let p = peer(&env, n).await.unwrap();
            assert_eq!(p.metadata.generation, Some(1), "{n}'s spec held");
        }

        // Then each spec is written once, with every key.
        eventually(QUIET + T, "the keys in every spec", || async {
            for n in ["a", "b", "c", "d"] {
                let p = peer(&env, n).await?;
                let want: Vec<&str> = ["a", "b", "c"].into_iter().filter(|m| *m != n).collect();
                (keyed(&p) == want).then_some(())?;
            }
            Some(())
        })
        .await;
        assert!(reported.elapsed() >= QUIET, "written before the quiet time");
        for n in ["a", "b", "c", "d"] {
            let p = peer(&env, n).await.unwrap();
            assert_eq!(
                p.metadata.generation,
                Some(2),
                "{n}: one write with every key, keys of {:?}",
                keyed(&p)
            );
        }
        eventually(T, "nothing held", || async {
            (op.held_for_keys("default") == 0).then_some(())
        })
        .await;
        op.shutdown().await;
    });
}
