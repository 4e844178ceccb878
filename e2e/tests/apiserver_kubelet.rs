//! The minimal kubelet: a Deployment runs as local processes with env and Secret volumes,
//! Pod/Deployment status follow, exited processes restart, deletion kills them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use wirekube_e2e::apiserver::{ApiServer, ApiServerConfig, Identity, KubeletConfig, PodPlacement};

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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read(p: &PathBuf) -> Option<String> {
    std::fs::read_to_string(p).ok().filter(|s| !s.is_empty())
}

#[tokio::test]
async fn deployment_runs_as_local_processes() {
    let out = tempfile::tempdir().unwrap();
    let kubelet = KubeletConfig {
        images: vec![("example.com/shell:*".into(), PathBuf::from("/bin/sh"))],
        placement: Arc::new(|ctx| PodPlacement {
            node_name: Some("dmz".into()),
            command_prefix: vec![],
            pod_ip: Some(format!("10.0.0.{}", ctx.pod.len())),
        }),
        restart_backoff: Duration::from_millis(100),
        ..KubeletConfig::default()
    };
    let server = ApiServer::start(ApiServerConfig {
        kubelet: Some(kubelet),
        ..ApiServerConfig::default()
    })
    .await
    .unwrap();
    let client = server.client(&Identity::Admin).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let s: Secret = serde_json::from_value(
        json!({"metadata": {"name": "relay"}, "stringData": {"token": "t0k3n"}}),
    )
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();

    let dir = out.path().display().to_string();
    let script = "cat /etc/relay/token > $OUT/file; echo $TOKEN > $OUT/env; echo $POD > $OUT/pod; echo $$ > $OUT/pid; exec sleep 600";
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "relay"},
        "spec": {"selector": {"matchLabels": {"app": "relay"}}, "template": {
            "metadata": {"labels": {"app": "relay"}},
            "spec": {"containers": [{"name": "relay", "image": "example.com/shell:v1",
                "command": ["/entrypoint", "-c"], "args": [script],
                "env": [{"name": "OUT", "value": dir},
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "relay", "key": "token"}}},
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "volumeMounts": [{"name": "tok", "mountPath": "/etc/relay"}]}],
                "volumes": [{"name": "tok", "secret": {"secretName": "relay"}}]}}}
    }))
    .unwrap();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deploys.create(&PostParams::default(), &d).await.unwrap();

    let p = |f: &str| out.path().join(f);
    let pid1 = eventually("the process to start", || async { read(&p("pid")) }).await;
    eventually("outputs", || async {
        (read(&p("file")).is_some() && read(&p("pod")).is_some()).then_some(())
    })
    .await;
    assert_eq!(
        read(&p("file")).unwrap(),
        "t0k3n",
        "secret volume at the rewritten mountPath"
    );
    assert_eq!(read(&p("env")).unwrap().trim(), "t0k3n", "secretKeyRef env");
    let pod_name = read(&p("pod")).unwrap().trim().to_string();

    eventually("readyReplicas 1", || {
        let deploys = deploys.clone();
        async move {
            let d = deploys.get("relay").await.ok()?;
            (d.status?.ready_replicas == Some(1)).then_some(())
        }
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = pods.get(&pod_name).await.unwrap();
    assert_eq!(pod.metadata.owner_references.unwrap()[0].kind, "Deployment");
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("dmz"));
    assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Running"));

    // The process exits: restarted, restartCount counts it.
    std::fs::remove_file(p("pid")).unwrap();
    std::process::Command::new("kill")
        .arg(pid1.trim())
        .status()
        .unwrap();
    let pid2 = eventually("a restart", || async { read(&p("pid")) }).await;
    assert_ne!(pid1, pid2);
    eventually("restartCount 1", || {
        let pods = pods.clone();
        let name = pod_name.clone();
        async move {
            let st = pods.get(&name).await.ok()?.status?;
            (st.container_statuses?[0].restart_count >= 1).then_some(())
        }
    })
    .await;

    // Deleting the Deployment kills the process and (GC) removes the Pod.
    deploys
        .delete("relay", &DeleteParams::default())
        .await
        .unwrap();
    let proc_path = PathBuf::from(format!("/proc/{}", pid2.trim()));
    eventually("the process to be gone", || {
        let gone = !proc_path.exists()
            || std::fs::read_to_string(proc_path.join("stat")).is_ok_and(|s| s.contains(") Z "));
        async move { gone.then_some(()) }
    })
    .await;
    eventually("the pod to be collected", || {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        }
    })
    .await;
    server.shutdown().await;
}
