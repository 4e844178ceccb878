//! Speed of the test API server: list and watch fan-out with 1,000 objects and 100 watchers.
//! `cargo bench -p wirekube-e2e --bench apiserver` (prints numbers; not a timed test).

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use wirekube_e2e::apiserver::{ApiServer, ApiServerConfig, Identity};

const OBJECTS: usize = 1_000;
const WATCHERS: usize = 100;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let server = ApiServer::start(ApiServerConfig::default())
        .await
        .expect("start");
    let client = server.client(&Identity::Admin).await.expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let t = Instant::now();
    for i in 0..OBJECTS {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": format!("cm-{i:04}"), "labels": {"bench": "yes", "i": (i % 10).to_string()}},
            "data": {"payload": "x".repeat(200)}
        }))
        .expect("configmap");
        api.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    let create = t.elapsed();
    println!(
        "create {OBJECTS} objects sequentially: {create:?} ({:.0}/s)",
        OBJECTS as f64 / create.as_secs_f64()
    );

    let mut lists = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let l = api.list(&ListParams::default()).await.expect("list");
        assert_eq!(l.items.len(), OBJECTS);
        lists.push(t.elapsed());
    }
    lists.sort();
    println!(
        "list {OBJECTS} objects: median {:?}, min {:?}",
        lists[5], lists[0]
    );
    let t = Instant::now();
    let l = api
        .list(&ListParams::default().labels("i=3"))
        .await
        .expect("list");
    println!(
        "list with label selector ({} of {OBJECTS}): {:?}",
        l.items.len(),
        t.elapsed()
    );
    let t = Instant::now();
    let mut pages = 0;
    let mut lp = ListParams::default().limit(100);
    loop {
        let l = api.list(&lp).await.expect("page");
        pages += 1;
        match l.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    println!("paginated list, {pages} pages of 100: {:?}", t.elapsed());

    // Watch fan-out: 100 watchers from the current RV, then 1,000 updates.
    let rv = api
        .list(&ListParams::default().limit(1))
        .await
        .expect("rv")
        .metadata
        .resource_version
        .expect("rv");
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(WATCHERS);
    for _ in 0..WATCHERS {
        let api = api.clone();
        let rv = rv.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = api
                .watch(&WatchParams::default().timeout(120), &rv)
                .await
                .expect("watch")
                .boxed();
            let _ = ready.send(()).await;
            let mut n = 0;
            let mut last = Instant::now();
            while n < OBJECTS {
                match s.next().await {
                    Some(Ok(WatchEvent::Modified(_))) => {
                        n += 1;
                        last = Instant::now();
                    }
                    Some(Ok(_)) => {}
                    other => panic!("watch ended early: {other:?}"),
                }
            }
            last
        }));
    }
    for _ in 0..WATCHERS {
        ready_rx.recv().await.expect("ready");
    }
    let t = Instant::now();
    for i in 0..OBJECTS {
        let p = json!({"data": {"n": "1"}});
        api.patch(
            &format!("cm-{i:04}"),
            &PatchParams::default(),
            &Patch::Merge(&p),
        )
        .await
        .expect("patch");
    }
    let writes = t.elapsed();
    let mut last = Duration::ZERO;
    for task in tasks {
        let done = task.await.expect("watcher");
        last = last.max(done.duration_since(t));
    }
    let delivered = OBJECTS * WATCHERS;
    println!(
        "watch fan-out: {OBJECTS} updates to {WATCHERS} watchers ({delivered} events): writes took {writes:?}, \
         last watcher done after {last:?} ({:.0} events/s delivered)",
        delivered as f64 / last.as_secs_f64()
    );

    // Initial-state fan-out: 100 watchers from RV 0 each get 1,000 ADDED events.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WATCHERS {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = api
                .watch(&WatchParams::default().timeout(120), "0")
                .await
                .expect("watch")
                .boxed();
            let mut n = 0;
            while n < OBJECTS {
                if let Some(Ok(WatchEvent::Added(_))) = s.next().await {
                    n += 1;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("watcher");
    }
    println!(
        "watch from RV 0: {WATCHERS} watchers x {OBJECTS} initial ADDED events: {:?}",
        t.elapsed()
    );
    server.shutdown().await;
}
