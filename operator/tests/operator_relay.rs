//! Relay part of the mesh controller against the real control plane, with the lab cloud giving
//! LoadBalancer Services their address (`common`): managed LoadBalancer and
//! NodePort, switching to external, `mode: always` / `never`.

mod common;

use std::time::Duration;

use common::{LB_IP, NS, condition, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::{Api, ResourceExt};
use serde_json::json;
use wirekube_crds::{NatType, PathReason, PlannedPath};

const T: Duration = Duration::from_secs(20);
const NAME: &str = "wirekube-relay-default";
const RELAY_PODS: &str = "app.kubernetes.io/instance=default";

fn spec(relay: serde_json::Value) -> serde_json::Value {
    json!({"meshCIDR": "10.99.0.0/24", "relay": relay})
}

#[test]
fn managed_relay_lifecycle() {
    common::run("opr", |env| async move {
        let op = env.operator("op-0", 15).await;
        env.add_node("a", "10.0.0.1", Some("198.51.100.1")).await;
        env.add_node("b", "10.0.0.2", None).await;
        let deps: Api<Deployment> = Api::namespaced(env.admin.clone(), NS);
        let svcs: Api<Service> = Api::namespaced(env.admin.clone(), NS);
        let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), NS);

        // Managed LoadBalancer: Deployment, Service and Secret, owned by the mesh; LB IP published.
        env.apply_mesh(
            "default",
            spec(json!({"managed": {"serviceType": "LoadBalancer", "replicas": 1}})),
        )
        .await;
        let m = eventually(T, "LB endpoint published", || async {
            let m = env.mesh("default").await;
            (m.status.as_ref()?.relay_endpoints == [format!("{LB_IP}:3478")]).then_some(m)
        })
        .await;
        let d = deps.get(NAME).await.unwrap();
        let svc = svcs.get(NAME).await.unwrap();
        let secret = secrets.get(NAME).await.unwrap();
        for owners in [
            d.owner_references(),
            svc.owner_references(),
            secret.owner_references(),
        ] {
            assert_eq!(owners[0].kind, "WireKubeMesh");
            assert_eq!(Some(&owners[0].uid), m.metadata.uid.as_ref());
        }
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert!(
            c.args
                .as_ref()
                .unwrap()
                .contains(&"--token-file=/etc/wirekube/token/token".to_string())
        );
        let token = secret.data.as_ref().unwrap()["token"].0.clone();
        assert!(token.len() >= 32);
        let rr = condition(&m, "RelayReady").unwrap();
        assert_eq!(
            (rr.status.as_str(), rr.reason.as_str()),
            ("False", "RelayUnavailable")
        );
        // The relay pod comes up on node a (the harness binds it and marks it Running and Ready,
        // as the scheduler and a's kubelet would): RelayReady turns True.
        env.run_pods(NS, RELAY_PODS, &["a"]).await;
        eventually(T, "RelayReady=True", || async {
            let m = env.mesh("default").await;
            condition(&m, "RelayReady")
                .is_some_and(|c| c.status == "True")
                .then_some(())
        })
        .await;
        eventually(T, "peers carry the relay endpoint", || async {
            let p = env.peer_list().await;
            (p.len() == 2
                && p.iter()
                    .all(|x| x.spec.relay_endpoints == [format!("{LB_IP}:3478")]))
            .then_some(())
        })
        .await;

        // NodePort: the node running the relay pod is published, its ExternalIP with the
        // nodePort (several nodes and the InternalIP fallback: relay_tests.rs).
        env.apply_mesh(
            "default",
            spec(json!({"managed": {"serviceType": "NodePort", "nodePort": 31478}})),
        )
        .await;
        env.run_pods(NS, RELAY_PODS, &["a"]).await;
        eventually(T, "NodePort endpoints", || async {
            let m = env.mesh("default").await;
            (m.status.as_ref()?.relay_endpoints == ["198.51.100.1:31478"]).then_some(())
        })
        .await;
        assert_eq!(
            svcs.get(NAME).await.unwrap().spec.unwrap().type_.as_deref(),
            Some("NodePort")
        );
        let again = secrets.get(NAME).await.unwrap();
        assert_eq!(
            again.data.unwrap()["token"].0,
            token,
            "the token is never rotated by accident"
        );

        // External: the managed objects are removed, the configured endpoint published.
        env.apply_mesh(
            "default",
            spec(
                json!({"provider": "external", "external": {"endpoint": "relay.example.com:443"}}),
            ),
        )
        .await;
        eventually(T, "managed objects removed", || async {
            let gone = deps.get_opt(NAME).await.unwrap().is_none()
                && svcs.get_opt(NAME).await.unwrap().is_none()
                && secrets.get_opt(NAME).await.unwrap().is_none();
            gone.then_some(())
        })
        .await;
        eventually(T, "external endpoint", || async {
            let m = env.mesh("default").await;
            (m.status.as_ref()?.relay_endpoints == ["relay.example.com:443"]).then_some(())
        })
        .await;
        op.shutdown().await;
    });
}

#[test]
fn relay_modes_always_and_never() {
    common::run("opr", |env| async move {
        let op = env.operator("op-0", 15).await;
        env.add_node("a", "10.0.0.1", None).await;
        env.add_node("b", "10.0.0.2", None).await;
        let deps: Api<Deployment> = Api::namespaced(env.admin.clone(), NS);
        env.apply_mesh("default", spec(json!({"mode": "always"})))
            .await;
        eventually(T, "peers", || async {
            (env.peer_list().await.len() == 2).then_some(())
        })
        .await;
        env.report(
            "a",
            "key-a",
            NatType::Open,
            "198.51.100.1:51820",
            Some("198.51.100.1:51820"),
        )
        .await;
        env.report(
            "b",
            "key-b",
            NatType::Open,
            "198.51.100.2:51820",
            Some("198.51.100.2:51820"),
        )
        .await;
        eventually(T, "mode always relays every pair", || async {
            let p = env.peer_list().await;
            p.iter()
                .all(|x| {
                    x.spec
                        .peers
                        .iter()
                        .all(|e| e.path == PlannedPath::Relay && e.reason == PathReason::ModeAlways)
                })
                .then_some(())
        })
        .await;
        assert!(deps.get_opt(NAME).await.unwrap().is_some());

        env.apply_mesh("default", spec(json!({"mode": "never"})))
            .await;
        eventually(T, "mode never: direct, no relay objects", || async {
            let p = env.peer_list().await;
            let direct =
                p.iter().all(|x| {
                    x.spec.peers.iter().all(|e| {
                        e.path == PlannedPath::Direct && e.reason != PathReason::ModeAlways
                    }) && x.spec.relay_endpoints.is_empty()
                });
            (direct && deps.get_opt(NAME).await.unwrap().is_none()).then_some(())
        })
        .await;
        // The mesh status is written after the peers and the Deployment: wait for it too.
        let m = eventually(T, "mode never: the status lists no relay", || async {
            let m = env.mesh("default").await;
            let none = m
                .status
                .as_ref()
                .is_some_and(|s| s.relay_endpoints.is_empty());
            none.then_some(m)
        })
        .await;
        let rr = condition(&m, "RelayReady").unwrap();
        assert_eq!(
            (rr.status.as_str(), rr.reason.as_str()),
            ("False", "RelayDisabled")
        );
        op.shutdown().await;
    });
}
