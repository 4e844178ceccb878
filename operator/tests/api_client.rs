//! The API client the operator and the agent share (`wirekube-kubeclient`), against the real
//! control plane: a request dropped while it waits in the API server's priority-and-fairness
//! queue is taken out of the queue and never executed, and a request sent after it is.
//!
//! The agent's status writer relies on it when a newer path replaces a write in flight
//! (docs/agent.md, "Status"). Over HTTP/1.1 the server does not notice the drop while the
//! request queues (it reads the request body, and with it the closed connection, only once
//! the request leaves the queue): measured with this test, the dropped request then stayed
//! queued until the API server's own limit on queue waits took it out 15 s later, and the
//! test fails. Over HTTP/2 it left the queue within milliseconds.
//!
//! How a request is made to queue: a test priority level, matched by a test user's requests
//! only, whose every seat is taken by requests from that user that cannot finish because etcd
//! is paused (SIGSTOP) meanwhile.

mod common;

use std::path::Path;
use std::time::Duration;

use common::eventually;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use wirekube_kubelab::controlplane::Component;

const T: Duration = Duration::from_secs(30);
const NS: &str = "apf-test";
const USER: &str = "apf-test";
const LEVEL: &str = "wirekube-test-queue";
/// A dropped request leaves the queue within this. Not a speed target: the API server takes
/// any request out of the queue after waiting a quarter of its request timeout (15 s by
/// default), so a drop the server did not notice (HTTP/1.1) shows as a 15 s wait.
const NOTICED: Duration = Duration::from_secs(5);
/// ConfigMaps created for the requests that hold the level's seats: more than the level gets.
const CONFIGMAPS: usize = 12;

const LEVEL_YAML: &str = "apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: PriorityLevelConfiguration
metadata: {name: wirekube-test-queue}
spec:
  type: Limited
  limited:
    nominalConcurrencyShares: 1
    lendablePercent: 0
    borrowingLimitPercent: 0
    limitResponse:
      type: Queue
      queuing: {queues: 1, handSize: 1, queueLengthLimit: 50}
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {name: wirekube-test-queue}
spec:
  priorityLevelConfiguration: {name: wirekube-test-queue}
  matchingPrecedence: 100
  distinguisherMethod: {type: ByUser}
  rules:
  - subjects: [{kind: User, user: {name: apf-test}}]
    resourceRules:
    - {verbs: [\"*\"], apiGroups: [\"\"], resources: [configmaps], namespaces: [\"*\"]}
";

#[test]
fn a_request_dropped_while_it_queues_is_never_executed() {
    let lab = common::lab("apq");
    let level = lab.cp.dir.join("test-level.yaml");
    std::fs::write(&level, LEVEL_YAML).expect("write level.yaml");
    let level = level.to_string_lossy().into_owned();
    lab.kubectl(&["create", "namespace", NS])
        .expect("namespace");
    let role = ["-n", NS, "create", "role", "cm", "--verb=get,patch"];
    lab.kubectl(&[&role[..], &["--resource=configmaps"]].concat())
        .expect("role");
    let user = format!("--user={USER}");
    lab.kubectl(&["-n", NS, "create", "rolebinding", "cm", "--role=cm", &user])
        .expect("rolebinding");
    for i in 0..CONFIGMAPS {
        let name = format!("cm-{i}");
        lab.kubectl(&["-n", NS, "create", "configmap", &name])
            .expect("configmap");
    }
    lab.kubectl(&["apply", "-f", &level])
        .expect("priority level and flow schema");
    let user_kc = lab
        .cp
        .write_kubeconfig("apf-test", USER, &[])
        .expect("test user kubeconfig");
    let admin_kc = lab.cp.admin_kubeconfig();
    let etcd = lab.cp.pid(Component::Etcd).expect("etcd running");
    common::in_dmz(&lab, move || async move {
        let admin = common::client(&admin_kc).await;
        let user = shared_client(&user_kc).await;
        drop_while_queued(&admin, &user, etcd).await;
    });
    lab.shutdown().expect("lab shutdown");
}

async fn drop_while_queued(admin: &Client, user: &Client, etcd: u32) {
    let seats = eventually(T, "the test level's seats in the metrics", || async {
        nominal_seats(admin).await.filter(|s| *s >= 1)
    })
    .await;
    assert!(seats < CONFIGMAPS, "the level got {seats} seats");
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(user.clone(), NS);
    let patch = |name: String, value: &str| {
        let (cms, body) = (cms.clone(), json!({"data": {"v": value}}));
        async move {
            cms.patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                .await
        }
    };
    signal(etcd, "-STOP");
    let blockers: Vec<_> = (0..seats)
        .map(|i| tokio::spawn(patch(format!("cm-{i}"), "blocker")))
        .collect();
    wait_level(admin, "every seat taken", |l| l.executing == seats).await;
    let last = format!("cm-{seats}");
    let dropped = tokio::spawn(patch(last.clone(), "dropped"));
    wait_level(admin, "one request queued", |l| l.waiting == 1).await;
    let at = std::time::Instant::now();
    dropped.abort();
    let _ = dropped.await;
    let out = wait_level(admin, "the dropped request out of the queue", |l| {
        l.waiting == 0 && l.cancelled == 1
    })
    .await;
    assert!(
        at.elapsed() < NOTICED,
        "the dropped request left the queue {:?} after the drop: the API server's own limit on \
         queue waits took it out, not the drop",
        at.elapsed()
    );
    assert_eq!(
        out.dispatched, seats,
        "nothing dispatched but the seat holders"
    );
    let kept = tokio::spawn(patch(last.clone(), "kept"));
    wait_level(admin, "the next request queued", |l| l.waiting == 1).await;
    signal(etcd, "-CONT");
    let stored = kept
        .await
        .expect("join")
        .expect("the request after the dropped one");
    assert_eq!(
        stored.data.and_then(|d| d.get("v").cloned()).as_deref(),
        Some("kept")
    );
    for b in blockers {
        b.await.expect("join").expect("a request that held a seat");
    }
    let end = level(admin).await.expect("the test level");
    assert_eq!(
        (end.dispatched, end.cancelled),
        (seats + 1, 1),
        "dispatched: the seat holders and the request after the dropped one, never the dropped one"
    );
}

/// A client as the agent and the operator build it.
async fn shared_client(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig");
    wirekube_kubeclient::client(cfg, &wirekube_kubeclient::Keepalive::DEFAULT).expect("client")
}

/// Pauses (`-STOP`) or resumes (`-CONT`) a process.
fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// One row of the API server's priority-level dump (`/debug/api_priority_and_fairness/`),
/// which it serves from memory, also while etcd is paused (its `/metrics` then stalls).
#[derive(Debug, Clone, Copy)]
struct Level {
    waiting: usize,
    executing: usize,
    dispatched: usize,
    cancelled: usize,
}

async fn level(admin: &Client) -> Option<Level> {
    let req = http::Request::get("/debug/api_priority_and_fairness/dump_priority_levels")
        .body(Vec::new())
        .ok()?;
    let text = admin.request_text(req).await.ok()?;
    // PriorityLevelName, ActiveQueues, IsIdle, IsQuiescing, WaitingRequests,
    // ExecutingRequests, DispatchedRequests, RejectedRequests, TimedoutRequests,
    // CancelledRequests: comma-separated.
    let row = text.lines().find(|l| l.starts_with(&format!("{LEVEL},")))?;
    let cols: Vec<usize> = row
        .split(',')
        .skip(4)
        .map(|c| c.trim().parse().ok())
        .collect::<Option<_>>()?;
    Some(Level {
        waiting: *cols.first()?,
        executing: *cols.get(1)?,
        dispatched: *cols.get(2)?,
        cancelled: *cols.get(5)?,
    })
}

/// Waits until the test level satisfies `ok`, and returns it.
async fn wait_level(admin: &Client, what: &str, ok: impl Fn(&Level) -> bool) -> Level {
    eventually(T, what, || async { level(admin).await.filter(|l| ok(l)) }).await
}

/// The test level's seats (`apiserver_flowcontrol_nominal_limit_seats`), once it has them.
async fn nominal_seats(admin: &Client) -> Option<usize> {
    let req = http::Request::get("/metrics").body(Vec::new()).ok()?;
    let text = admin.request_text(req).await.ok()?;
    let series = format!("apiserver_flowcontrol_nominal_limit_seats{{priority_level=\"{LEVEL}\"}}");
    let line = text.lines().find(|l| l.starts_with(&series))?;
    let seats: f64 = line.rsplit(' ').next()?.parse().ok()?;
    Some(seats as usize)
}
