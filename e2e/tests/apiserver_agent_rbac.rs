//! RBAC and admission with the shipped config/rbac: the agent identity may patch its own
//! peer's status and nothing else.

use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::json;
use wirekube_e2e::apiserver::{ApiServer, ApiServerConfig, Identity};

fn peers(client: &kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "wirekube.io".into(),
        version: "v1alpha1".into(),
        api_version: "wirekube.io/v1alpha1".into(),
        kind: "WireKubePeer".into(),
        plural: "wirekubepeers".into(),
    };
    Api::all_with(client.clone(), &ar)
}

fn peer(name: &str, ip: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubePeer", "metadata": {"name": name},
        "spec": {"mesh": "default", "meshIP": ip, "meshCIDR": "10.99.0.0/16", "interfaceName": "wk0",
            "listenPort": 51820, "mtu": 1380, "relayMode": "auto", "directTimeout": "30s"}
    }))
    .unwrap()
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other:?}"),
    }
}

#[tokio::test]
async fn agent_may_patch_only_its_own_peer_status() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (crd, rbac) = (root.join("config/crd"), root.join("config/rbac"));
    if !crd.exists() || !rbac.exists() {
        eprintln!("config/crd or config/rbac missing; skipping");
        return;
    }
    let ns = root.join("config/operator/namespace.yaml");
    let cfg = ApiServerConfig {
        preload: vec![ns, crd, rbac],
        ..ApiServerConfig::default()
    };
    let server = ApiServer::start(cfg).await.unwrap();
    let admin = server.client(&Identity::Admin).await.unwrap();
    peers(&admin)
        .create(&PostParams::default(), &peer("n1", "10.99.0.1"))
        .await
        .unwrap();
    peers(&admin)
        .create(&PostParams::default(), &peer("n2", "10.99.0.2"))
        .await
        .unwrap();

    let agent = server.client(&Identity::Agent("n1".into())).await.unwrap();
    let api = peers(&agent);
    // Reads are allowed.
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
    // Its own peer's status: allowed (merge patch and server-side apply).
    let st = json!({"status": {"observedGeneration": 1}});
    api.patch_status("n1", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .unwrap();
    let apply = json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubePeer", "metadata": {"name": "n1"},
        "status": {"observedGeneration": 1}});
    api.patch_status(
        "n1",
        &PatchParams::apply("wirekube-agent"),
        &Patch::Apply(&apply),
    )
    .await
    .unwrap();
    // Another node's peer status: denied by the admission policy.
    let err = api
        .patch_status("n2", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .unwrap_err();
    assert_eq!(code(err), 403);
    // Spec, create, delete, update of status (PUT): denied by RBAC.
    let err = api
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mtu": 1280}})),
        )
        .await
        .unwrap_err();
    assert_eq!(code(err), 403);
    assert_eq!(
        code(
            api.create(&PostParams::default(), &peer("n3", "10.99.0.3"))
                .await
                .unwrap_err()
        ),
        403
    );
    assert_eq!(
        code(
            api.delete("n1", &DeleteParams::default())
                .await
                .unwrap_err()
        ),
        403
    );
    let current = api.get("n1").await.unwrap();
    assert_eq!(
        code(
            api.replace_status("n1", &PostParams::default(), &current)
                .await
                .unwrap_err()
        ),
        403
    );
    // Other resources.
    let secrets: Api<Secret> = Api::namespaced(agent.clone(), "wirekube-system");
    assert_eq!(
        code(secrets.list(&ListParams::default()).await.unwrap_err()),
        403
    );
    assert_eq!(code(secrets.get("other").await.unwrap_err()), 403);
    // A list pinned to the allowed name (what a watcher on one Secret does) is authorized
    // for that name, as in kube-apiserver; pinned to another name it is not.
    let pinned = |n: &str| ListParams::default().fields(&format!("metadata.name={n}"));
    assert!(
        secrets
            .list(&pinned("wirekube-relay-default"))
            .await
            .is_ok()
    );
    assert_eq!(code(secrets.list(&pinned("other")).await.unwrap_err()), 403);
    assert_eq!(
        code(secrets.get("wirekube-relay-default").await.unwrap_err()),
        404,
        "allowed by name, absent"
    );
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(agent);
    assert_eq!(
        code(nodes.list(&ListParams::default()).await.unwrap_err()),
        403
    );
    server.shutdown().await;
}
