//! Two operator replicas: one leader writes, the other follows the cluster and plans nothing;
//! when the leader dies the standby takes over and reconciles at once.

mod common;

use std::time::Duration;

use common::{eventually, settled};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use wirekube_operator::metrics::ReasonLabel;

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

/// The Lease taken over under a leader whose lease manager has not noticed yet (it only looks
/// at its next renewal, 20 s apart with a 30 s Lease): the leader's own Lease check stops its
/// writes within seconds. This is what keeps an old leader from writing beside the new one
/// after an API server outage, when its lease manager retries on a long backoff.
#[test]
fn writes_stop_when_the_lease_is_no_longer_ours() {
    common::run("ols", |env| async move {
        let a = env.operator("op-a", 30).await;
        eventually(Duration::from_secs(10), "op-a leads", || async {
            a.is_leader().then_some(())
        })
        .await;
        env.add_node("n1", "10.0.0.1", None).await;
        let relay = json!({"provider": "external", "external": {"endpoint": "198.51.100.50:3478"}});
        env.apply_mesh("default", json!({"relay": relay})).await;
        eventually(Duration::from_secs(10), "peer n1", || async {
            (env.peer_list().await.len() == 1).then_some(())
        })
        .await;

        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let leases: Api<Lease> = Api::namespaced(env.admin.clone(), common::NS);
        let takeover = json!({"spec": {
            "holderIdentity": "another-replica", "acquireTime": now, "renewTime": now,
            "leaseDurationSeconds": 30,
        }});
        leases
            .patch(
                "wirekube-operator",
                &PatchParams::default(),
                &Patch::Merge(&takeover),
            )
            .await
            .expect("take the Lease over");

        // Every mesh change asks for writes; op-a must refuse them, before it is told.
        let mut mtu = 1300;
        eventually(Duration::from_secs(10), "op-a refuses to write", || {
            mtu += 1;
            let spec = json!({"relay": relay, "mtu": mtu});
            let (env, a) = (&env, &a);
            async move {
                env.apply_mesh("default", spec).await;
                (not_leader_failures(a) > 0).then_some(())
            }
        })
        .await;
        let writes = a.writes();
        env.apply_mesh("default", json!({"relay": relay, "mtu": 1280}))
            .await;
        settled(Duration::from_millis(800), || a.writes()).await;
        assert_eq!(a.writes(), writes, "no write after the Lease moved");
        assert!(
            env.peer_list().await.iter().all(|p| p.spec.mtu != 1280),
            "the last change was not written"
        );

        // The Lease back in op-a's name (its lease manager never noticed it gone): writing
        // resumes at the next Lease check, and the refused change is written then, not at
        // the refused pass's 30 s retry.
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let back = json!({"spec": {"holderIdentity": "op-a", "renewTime": now}});
        leases
            .patch(
                "wirekube-operator",
                &PatchParams::default(),
                &Patch::Merge(&back),
            )
            .await
            .expect("give the Lease back");
        eventually(
            Duration::from_secs(15),
            "the refused change written once the Lease is ours again",
            || async {
                let peers = env.peer_list().await;
                peers.iter().all(|p| p.spec.mtu == 1280).then_some(())
            },
        )
        .await;
        a.kill().await;
    });
}

fn not_leader_failures(r: &common::Replica) -> u64 {
    r.metrics
        .failures
        .get_or_create(&ReasonLabel {
            reason: "not-leader".into(),
        })
        .get()
}
