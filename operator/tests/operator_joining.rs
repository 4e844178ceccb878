//! Spec updates wait while a mass start's keys are still arriving (`joining`), against the
//! real control plane (`common`): of four nodes, a publishes its key alone (written at once),
//! then b and c one after another while d has none: no spec is updated until the keys have
//! been quiet for the hold's quiet time, a node that joins meanwhile gets its peer at once,
//! and then every spec is written once more, with all three keys.

mod common;

use std::time::{Duration, Instant};

use common::{Env, eventually};
use wirekube_crds::{NatType, WireKubePeer};
use wirekube_operator::joining::HoldTimes;

const T: Duration = Duration::from_secs(20);
/// The hold's quiet time in this test: long against the time two status patches take, so
/// that they land within one hold, and against [`NOT_HELD`].
const QUIET: Duration = Duration::from_secs(8);
const NOT_HELD: Duration = Duration::from_secs(4);

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

async fn report(env: &Env, node: &str, i: u8) {
    let host = format!("10.0.0.{i}:51820");
    let srflx = format!("198.51.100.{i}:40000");
    let key = format!("key-{node}");
    env.report(node, &key, NatType::FullCone, &host, Some(&srflx))
        .await;
}

/// The generations of the peers of `nodes`, in order.
async fn generations(env: &Env, nodes: &[&str]) -> Vec<Option<i64>> {
    let mut v = Vec::new();
    for n in nodes {
        v.push(peer(env, n).await.and_then(|p| p.metadata.generation));
    }
    v
}

#[test]
fn spec_updates_wait_for_a_mass_starts_keys() {
    common::run("opjoin", |env| async move {
        let times = HoldTimes {
            quiet: QUIET,
            max: QUIET * 2,
            // Long enough that a's key still counts when b's arrives (the nodes joined
            // before the mesh existed: no join in it).
            window: Duration::from_secs(5),
        };
        let op = env.operator_with("op-0", 15, |s| s.key_hold = times).await;
        let all = ["a", "b", "c", "d"];
        for (i, n) in all.iter().enumerate() {
            env.add_node(n, &format!("10.0.0.{}", i + 1), None).await;
        }
        env.apply_mesh("default", common::mesh_spec()).await;
        eventually(T, "4 peers", || async {
            (env.peer_list().await.len() == 4).then_some(())
        })
        .await;
        assert_eq!(generations(&env, &all).await, [Some(1); 4]);

        // A key alone is no mass start: in the other specs at once.
        report(&env, "a", 1).await;
        eventually(NOT_HELD, "a's key in b's, c's and d's specs", || async {
            for n in ["b", "c", "d"] {
                (keyed(&peer(&env, n).await?) == ["a"]).then_some(())?;
            }
            Some(())
        })
        .await;
        assert_eq!(generations(&env, &all).await, [1, 2, 2, 2].map(Some));

        // b and c one after another, d still without a key: half the mesh's keys new.
        let reported = Instant::now();
        report(&env, "b", 2).await;
        report(&env, "c", 3).await;
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
        let held = generations(&env, &all).await;
        assert!(
            reported.elapsed() < QUIET,
            "the checks above ran within the hold ({:?}); nothing to conclude",
            reported.elapsed()
        );
        assert_eq!(held, [1, 2, 2, 2].map(Some), "every update held");

        // Then each spec is written once, with every key.
        eventually(QUIET + T, "the keys in every spec", || async {
            for n in all {
                let p = peer(&env, n).await?;
                let want: Vec<&str> = ["a", "b", "c"].into_iter().filter(|m| *m != n).collect();
                (keyed(&p) == want).then_some(())?;
            }
            Some(())
        })
        .await;
        assert!(reported.elapsed() >= QUIET, "written before the quiet time");
        let after = generations(&env, &all).await;
        assert_eq!(after, [2, 3, 3, 3].map(Some), "one write each");
        eventually(T, "nothing held", || async {
            (op.held_for_keys("default") == 0).then_some(())
        })
        .await;
        op.shutdown().await;
    });
}
