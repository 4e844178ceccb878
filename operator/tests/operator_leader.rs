//! Two operator replicas: one leader writes, the other follows the cluster and plans nothing;
//! when the leader dies the standby takes over and reconciles at once.

mod common;

use std::time::Duration;

use common::{eventually, settled};
use serde_json::json;

#[test]
fn one_leader_and_failover() {
    common::run("opl", |env| async move {
        let a = env.operator("op-a", 2).await;
        eventually(Duration::from_secs(10), "op-a leads", || async {
            a.is_leader().then_some(())
        })
        .await;
        let b = env.operator("op-b", 2).await;
        env.add_node("n1", "10.0.0.1", None).await;
        env.apply_mesh(
        "default",
        json!({"relay": {"provider": "external", "external": {"endpoint": "198.51.100.50:3478"}}}),
    )
    .await;
        eventually(Duration::from_secs(10), "peer n1", || async {
            (env.peer_list().await.len() == 1).then_some(())
        })
        .await;
        settled(Duration::from_millis(800), || a.writes() + b.writes()).await;
        assert!(a.is_leader() && !b.is_leader());
        assert!(a.writes() > 0);
        assert_eq!(b.writes(), 0, "the standby never writes");
        assert_eq!(b.reconciles(), 0, "the standby plans nothing");

        // The leader dies without releasing the Lease: the standby takes over once it expires.
        a.kill().await;
        eventually(Duration::from_secs(15), "op-b leads", || async {
            b.is_leader().then_some(())
        })
        .await;
        // Its caches followed the cluster all along: gaining the Lease alone reconciles the
        // mesh, before anything changes.
        eventually(
            Duration::from_secs(10),
            "op-b reconciles on gaining the Lease",
            || async { (b.reconciles() > 0).then_some(()) },
        )
        .await;
        env.add_node("n2", "10.0.0.2", None).await;
        eventually(
            Duration::from_secs(10),
            "peer n2 written by op-b",
            || async {
                let p = env.peer_list().await;
                (p.len() == 2 && p.iter().all(|x| x.spec.peers.len() == 1)).then_some(())
            },
        )
        .await;
        assert!(b.writes() > 0);

        // A graceful shutdown releases the Lease so a new replica leads at once.
        b.shutdown().await;
        let c = env.operator("op-c", 30).await;
        eventually(
            Duration::from_secs(5),
            "op-c leads right after release",
            || async { c.is_leader().then_some(()) },
        )
        .await;
        c.shutdown().await;
    });
}
