//! kube-rs against the test API server: CRUD, server-side apply, status, watchers surviving
//! 410 Gone and restarts, a Controller, leader election, garbage collection, fault hooks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use wirekube_e2e::apiserver::{ApiServer, ApiServerConfig, ApiServerHandle, Identity};

const WIDGET_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "widgets.test.wirekube.io"},
  "spec": {"group": "test.wirekube.io", "scope": "Namespaced",
    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wdg"]},
    "versions": [{"name": "v1alpha1", "served": true, "storage": true, "subresources": {"status": {}},
      "schema": {"openAPIV3Schema": {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {"size": {"type": "integer"}, "color": {"type": "string"}}},
        "status": {"type": "object", "properties": {"phase": {"type": "string"}, "ready": {"type": "boolean"}}}}}}}]}}"#;

async fn start() -> (ApiServerHandle, Client) {
    let server = ApiServer::start(ApiServerConfig::default()).await.unwrap();
    let client = server.client(&Identity::Admin).await.unwrap();
    (server, client)
}

fn widget_api(client: &Client) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "test.wirekube.io".into(),
        version: "v1alpha1".into(),
        api_version: "test.wirekube.io/v1alpha1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    Api::namespaced_with(client.clone(), "default", &ar)
}

async fn install_widget_crd(client: &Client) {
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::erase::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>(&()),
    );
    let crd: DynamicObject = serde_json::from_str(WIDGET_CRD).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
}

/// Polls `f` until it returns `Some`, with a deadline.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw HTTP/1.1 GET as admin; returns the whole response text.
async fn raw_get(server: &ApiServerHandle, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        server.token(&Identity::Admin)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn cm(name: &str, labels: serde_json::Value, data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": data}))
        .unwrap()
}

#[tokio::test]
async fn crud_conflicts_and_selectors() {
    let (server, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let a = api
        .create(
            &PostParams::default(),
            &cm("a", json!({"tier": "x"}), json!({"k": "1"})),
        )
        .await
        .unwrap();
    api.create(
        &PostParams::default(),
        &cm("b", json!({"tier": "y"}), json!({})),
    )
    .await
    .unwrap();
    let err = api
        .create(&PostParams::default(), &cm("a", json!({}), json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );

    let got = api.get("a").await.unwrap();
    assert_eq!(got.uid(), a.uid());
    let names = |l: kube::core::ObjectList<ConfigMap>| {
        l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("tier in (x,z)"))
                .await
                .unwrap()
        ),
        ["a"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("tier!=x"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let rest = api
        .list(
            &ListParams::default()
                .limit(1)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(names(rest), ["b"]);

    // Replace with a stale resourceVersion: 409 Conflict.
    let mut fresh = got.clone();
    fresh.data = Some([("k".to_string(), "2".to_string())].into());
    let updated = api
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_ne!(updated.resource_version(), got.resource_version());
    let err = api
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );

    // Merge and JSON patches.
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"m": "1"}})),
    )
    .await
    .unwrap();
    let p: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/data/k"}])).unwrap();
    let after = api
        .patch("a", &PatchParams::default(), &Patch::Json::<()>(p))
        .await
        .unwrap();
    assert_eq!(after.data.unwrap().keys().collect::<Vec<_>>(), ["m"]);

    api.delete("a", &DeleteParams::default()).await.unwrap();
    let err = api.get("a").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );

    // Unknown token: 401.
    let mut bad = server.client(&Identity::Admin).await.unwrap();
    let cfg = {
        let mut kc =
            kube::config::Kubeconfig::from_yaml(&server.kubeconfig(&Identity::Admin)).unwrap();
        kc.auth_infos[0].auth_info.as_mut().unwrap().token = Some("nope".to_string().into());
        kc.clusters[0].cluster.as_mut().unwrap().server = Some(server.url());
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap()
    };
    bad = Client::try_from(cfg).unwrap_or(bad);
    let err = Api::<ConfigMap>::namespaced(bad, "default")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 401),
        "{err:?}"
    );
}

#[tokio::test]
async fn server_side_apply_and_status() {
    let (_server, client) = start().await;
    install_widget_crd(&client).await;
    let api = widget_api(&client);
    let obj = |spec: serde_json::Value| json!({"apiVersion": "test.wirekube.io/v1alpha1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec});
    let ssa = |m: &str| PatchParams::apply(m);
    let w = api
        .patch(
            "w",
            &ssa("alice"),
            &Patch::Apply(obj(json!({"size": 1, "color": "red"}))),
        )
        .await
        .unwrap();
    assert_eq!(w.metadata.generation, Some(1));
    let mf = w.metadata.managed_fields.as_ref().unwrap();
    assert_eq!(mf[0].manager.as_deref(), Some("alice"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));

    // Bob conflicts on size, not on the same color value.
    let err = api
        .patch(
            "w",
            &ssa("bob"),
            &Patch::Apply(obj(json!({"size": 2, "color": "red"}))),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message.contains("conflict with \"alice\"") && s.message.contains(".spec.size"),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }
    let w = api
        .patch(
            "w",
            &ssa("bob").force(),
            &Patch::Apply(obj(json!({"size": 2, "color": "red"}))),
        )
        .await
        .unwrap();
    assert_eq!(w.data["spec"]["size"], 2);
    assert_eq!(w.metadata.generation, Some(2));

    // Alice stops applying color: bob still owns it, so it stays; a field only alice owned goes.
    api.patch(
        "w",
        &ssa("alice"),
        &Patch::Apply(obj(json!({"extra": "x"}))),
    )
    .await
    .unwrap();
    let w = api
        .patch("w", &ssa("alice"), &Patch::Apply(obj(json!({}))))
        .await
        .unwrap();
    assert_eq!(w.data["spec"], json!({"size": 2, "color": "red"}));

    // Status: apply on the status subresource, generation unchanged; main endpoint ignores status.
    let status = json!({"apiVersion": "test.wirekube.io/v1alpha1", "kind": "Widget", "metadata": {"name": "w"},
        "status": {"phase": "Ready", "ready": true}});
    let w = api
        .patch_status("w", &ssa("agent"), &Patch::Apply(status))
        .await
        .unwrap();
    assert_eq!(w.data["status"]["phase"], "Ready");
    assert_eq!(w.metadata.generation, Some(2));
    let w = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Hacked"}})),
        )
        .await
        .unwrap();
    assert_eq!(w.data["status"]["phase"], "Ready");
    let w = api
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": false}})),
        )
        .await
        .unwrap();
    assert_eq!(w.data["status"], json!({"phase": "Ready", "ready": false}));
    let managers: Vec<_> = w
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .map(|m| (m.manager.clone().unwrap(), m.subresource.clone()))
        .collect();
    assert!(
        managers.contains(&("agent".into(), Some("status".into()))),
        "{managers:?}"
    );
}

#[tokio::test]
async fn watcher_survives_gone_and_restart() {
    let (server, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    let w = tokio::spawn(
        watcher(api.clone(), watcher::Config::default()).for_each(move |ev| {
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev {
                seen2.lock().unwrap().push(o.name_any());
            }
            futures::future::ready(())
        }),
    );
    let has = |n: &'static str| {
        let s = seen.clone();
        move || {
            let ok = s.lock().unwrap().iter().any(|x| x == n);
            async move { ok.then_some(()) }
        }
    };
    api.create(&PostParams::default(), &cm("one", json!({}), json!({})))
        .await
        .unwrap();
    eventually("watch event for one", has("one")).await;

    // History compacted and watches dropped: the re-watch gets 410 Gone and re-lists.
    server.compact_history();
    server.drop_watches();
    api.create(&PostParams::default(), &cm("two", json!({}), json!({})))
        .await
        .unwrap();
    eventually("watch event for two after 410", has("two")).await;

    // Server stop and restart (state kept).
    server.stop().await;
    assert!(api.list(&ListParams::default()).await.is_err());
    server.restart().await.unwrap();
    api.create(&PostParams::default(), &cm("three", json!({}), json!({})))
        .await
        .unwrap();
    eventually("watch event for three after restart", has("three")).await;
    assert!(api.get("one").await.is_ok());

    // Requests failing for a while (503), then recovering.
    server.fail_requests_for(Duration::from_secs(2));
    assert!(
        raw_get(&server, "/api/v1/namespaces/default/configmaps/one")
            .await
            .starts_with("HTTP/1.1 503")
    );
    eventually("recovery after 503s", || {
        let api = api.clone();
        async move { api.get("one").await.ok() }
    })
    .await;
    w.abort();
}

#[tokio::test]
async fn watch_bookmarks_and_timeout() {
    let cfg = ApiServerConfig {
        bookmark_interval: Duration::from_millis(100),
        ..ApiServerConfig::default()
    };
    let server = ApiServer::start(cfg).await.unwrap();
    let client = server.client(&Identity::Admin).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = kube::api::WatchParams {
        bookmarks: true,
        ..Default::default()
    }
    .timeout(1);
    let events: Vec<_> = api
        .watch(&wp, &rv)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, kube::api::WatchEvent::Bookmark(_))),
        "{events:?}"
    );
    // An old resourceVersion after compaction: ERROR 410 in the stream.
    api.create(&PostParams::default(), &cm("x", json!({}), json!({})))
        .await
        .unwrap();
    server.compact_history();
    let mut s = api
        .watch(&kube::api::WatchParams::default().timeout(1), &rv)
        .await
        .unwrap()
        .boxed();
    match s.try_next().await.unwrap() {
        Some(kube::api::WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn controller_reconciles_changes() {
    let (_server, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let count = Arc::new(AtomicUsize::new(0));
    let ctx = Arc::new((api.clone(), count.clone()));
    async fn reconcile(
        o: Arc<ConfigMap>,
        ctx: Arc<(Api<ConfigMap>, Arc<AtomicUsize>)>,
    ) -> Result<Action, kube::Error> {
        ctx.1.fetch_add(1, Ordering::SeqCst);
        let want = o
            .data
            .as_ref()
            .and_then(|d| d.get("in"))
            .cloned()
            .unwrap_or_default();
        if o.annotations().get("out") != Some(&want) {
            let p = json!({"metadata": {"annotations": {"out": want}}});
            ctx.0
                .patch(&o.name_any(), &PatchParams::default(), &Patch::Merge(p))
                .await?;
        }
        Ok(Action::await_change())
    }
    fn error_policy(
        _: Arc<ConfigMap>,
        _: &kube::Error,
        _: Arc<(Api<ConfigMap>, Arc<AtomicUsize>)>,
    ) -> Action {
        Action::requeue(Duration::from_millis(100))
    }
    let ctl = tokio::spawn(
        Controller::new(api.clone(), watcher::Config::default())
            .run(reconcile, error_policy, ctx)
            .for_each(|_| futures::future::ready(())),
    );
    api.create(
        &PostParams::default(),
        &cm("c", json!({}), json!({"in": "1"})),
    )
    .await
    .unwrap();
    let out = |v: &'static str| {
        let api = api.clone();
        move || {
            let api = api.clone();
            async move {
                api.get("c")
                    .await
                    .ok()
                    .filter(|c| c.annotations().get("out").map(String::as_str) == Some(v))
            }
        }
    };
    eventually("reconciled out=1", out("1")).await;
    api.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"in": "2"}})),
    )
    .await
    .unwrap();
    eventually("reconciled out=2", out("2")).await;
    assert!(count.load(Ordering::SeqCst) >= 2);
    ctl.abort();
}

#[tokio::test]
async fn leader_election_with_lease_manager() {
    let (_server, client) = start().await;
    let mk = |id: &str| {
        kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "wirekube-operator")
            .with_namespace("default")
            .with_identity(id)
            .with_duration(2)
            .with_grace(1)
            .build()
    };
    let a = mk("a").await.unwrap();
    let b = mk("b").await.unwrap();
    let (mut ach, atask) = a.watch().await;
    let (mut bch, btask) = b.watch().await;
    let leader = eventually("a leader", || {
        let (a, b) = (*ach.borrow_and_update(), *bch.borrow_and_update());
        async move { (a != b).then_some(if a { "a" } else { "b" }) }
    })
    .await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "default");
    let lease = leases.get("wirekube-operator").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some(leader));
    // The leader steps down (drops its channel, releasing the lease): the other takes over.
    let (dropped, other_ch, other_task, dropped_task) = if leader == "a" {
        (ach, &mut bch, btask, atask)
    } else {
        (bch, &mut ach, atask, btask)
    };
    drop(dropped);
    let _ = dropped_task.await;
    eventually("the other to lead", || {
        let v = *other_ch.borrow_and_update();
        async move { v.then_some(()) }
    })
    .await;
    other_task.abort();
}

#[tokio::test]
async fn garbage_collection_follows_owner_references() {
    let (_server, client) = start().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
    let node = nodes.create(&PostParams::default(), &node).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut dep = cm("dep", json!({}), json!({}));
    dep.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: "n1".into(),
            uid: node.uid().unwrap(),
            ..Default::default()
        },
    ]);
    api.create(&PostParams::default(), &dep).await.unwrap();
    api.create(&PostParams::default(), &cm("free", json!({}), json!({})))
        .await
        .unwrap();
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    eventually("the dependent to be collected", || {
        let api = api.clone();
        async move { api.get_opt("dep").await.unwrap().is_none().then_some(()) }
    })
    .await;
    assert!(api.get_opt("free").await.unwrap().is_some());
}
