//! The pod worker: runs a pod from its first sight to its teardown, reacting to updates from
//! the pod manager (deletion, disappearance, kubelet shutdown).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use super::Ctx;
use super::container::{self, StopRx, Supervised};
use super::error::api_code;
use super::pod::{
    Ending, Msg, SHUTDOWN_GRACE, Sandbox, cleanup, containers, deletion_grace, initial_obs, key,
    policy, setup_retrying, uid,
};
use super::restart::next_delay;
use super::status::{self, PodObs, State};
use super::volfs::{self, TokenFile};

/// Retry delay for a failed token renewal or status update.
const RETRY: Duration = Duration::from_secs(1);

/// Runs one pod until it is deleted, vanishes, or the kubelet shuts down.
pub async fn run(ctx: Arc<Ctx>, pod: Pod, rx: mpsc::UnboundedReceiver<Msg>) {
    let span = info_span!("pod", pod = %key(&pod), uid = %uid(&pod));
    run_inner(ctx, pod, rx).instrument(span).await;
}

/// Waits for the message that ends the pod, keeping `pod` up to date meanwhile.
async fn next_ending(rx: &mut mpsc::UnboundedReceiver<Msg>, pod: &mut Pod) -> Ending {
    loop {
        match rx.recv().await {
            None | Some(Msg::Shutdown) => return Ending::Shutdown,
            Some(Msg::Gone) => return Ending::Gone,
            Some(Msg::Update(p)) => {
                *pod = *p;
                if let Some(grace) = deletion_grace(pod) {
                    return Ending::Delete(grace);
                }
            }
        }
    }
}

async fn run_inner(ctx: Arc<Ctx>, mut pod: Pod, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let terminal = matches!(phase, Some("Succeeded" | "Failed"));
    if terminal || deletion_grace(&pod).is_some() {
        // Not ours to run (finished, or already being deleted when we first saw it).
        let end = match deletion_grace(&pod) {
            Some(g) => Ending::Delete(g),
            None => next_ending(&mut rx, &mut pod).await,
        };
        cleanup(&ctx, &pod).await;
        if let Ending::Delete(_) = end {
            final_delete(&ctx, &pod).await;
        }
        return;
    }
    info!("starting pod");
    let (obs_tx, obs_rx) = watch::channel(initial_obs(&pod, &ctx.node_ip.to_string()));
    let status =
        tokio::spawn(status_loop(ctx.client.clone(), pod.clone(), obs_rx).in_current_span());
    let setup_pod = pod.clone();
    let outcome = tokio::select! {
        s = setup_retrying(&ctx, &setup_pod, &obs_tx) => Ok(s),
        end = next_ending(&mut rx, &mut pod) => Err(end),
    };
    let end = match outcome {
        Err(end) => end,
        Ok(sandbox) => run_containers(&ctx, &mut pod, &mut rx, sandbox, &obs_tx).await,
    };
    status.abort();
    cleanup(&ctx, &pod).await;
    if let Ending::Delete(_) = end {
        final_delete(&ctx, &pod).await;
    }
    info!(?end, "pod torn down");
}

/// Starts the containers, serves until the end, stops them.
async fn run_containers(
    ctx: &Ctx,
    pod: &mut Pod,
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    sandbox: Sandbox,
    obs: &watch::Sender<PodObs>,
) -> Ending {
    let (stop_tx, stop_rx) = watch::channel(None);
    let names: Vec<String> = containers(pod).iter().map(|c| c.name.clone()).collect();
    let mut set = JoinSet::new();
    for (index, (planned, name)) in sandbox.containers.into_iter().zip(names).enumerate() {
        match planned {
            Ok(p) => {
                let sup = Supervised {
                    index,
                    name,
                    spec: p.spec,
                    policy: policy(pod),
                    readiness: p.readiness,
                    liveness: p.liveness,
                    obs: obs.clone(),
                    stop: stop_rx.clone(),
                };
                set.spawn(container::supervise(sup).in_current_span());
            }
            Err(e) => {
                warn!(container = %name, error = %e, "container cannot run");
                set.spawn(image_backoff(
                    index,
                    e.to_string(),
                    obs.clone(),
                    stop_rx.clone(),
                ));
            }
        }
    }
    let end = serve(ctx, pod, rx, &sandbox.tokens, sandbox.refresh).await;
    let grace = match end {
        Ending::Delete(g) => g,
        Ending::Gone | Ending::Shutdown => SHUTDOWN_GRACE,
    };
    stop_tx.send_replace(Some(grace));
    while set.join_next().await.is_some() {}
    end
}

/// Waits for the end while renewing tokens.
async fn serve(
    ctx: &Ctx,
    pod: &mut Pod,
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    tokens: &[TokenFile],
    refresh: Option<Duration>,
) -> Ending {
    let mut next = refresh.map(|d| Instant::now() + d);
    loop {
        let renew = async {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            end = next_ending(rx, pod) => return end,
            () = renew => next = Some(Instant::now() + renew_tokens(ctx, pod, tokens).await),
        }
    }
}

/// Rewrites every token file; returns when the next renewal is due.
async fn renew_tokens(ctx: &Ctx, pod: &Pod, tokens: &[TokenFile]) -> Duration {
    let mut soonest: Option<Duration> = None;
    for t in tokens {
        let d = match volfs::write_token(&ctx.client, pod, t).await {
            Ok(d) => {
                info!(file = %t.file.display(), renew_in = ?d, "token renewed");
                d
            }
            Err(e) => {
                warn!(file = %t.file.display(), error = %e, "token renewal failed");
                RETRY
            }
        };
        soonest = Some(soonest.map_or(d, |s| s.min(d)));
    }
    soonest.unwrap_or(RETRY)
}

/// A container whose image has no binary: `ErrImagePull` and `ImagePullBackOff` in turn, as
/// a kubelet retrying a pull shows, until the pod stops.
async fn image_backoff(index: usize, msg: String, obs: watch::Sender<PodObs>, mut stop: StopRx) {
    let mut delay = None;
    let mut reason = "ErrImagePull";
    loop {
        obs.send_modify(|o| {
            if let Some(c) = o.containers.get_mut(index) {
                c.state = State::waiting(reason, Some(msg.clone()));
            }
        });
        let d = next_delay(delay, Duration::ZERO);
        delay = Some(d);
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            _ = stop.wait_for(Option::is_some) => return,
        }
        reason = if reason == "ErrImagePull" {
            "ImagePullBackOff"
        } else {
            "ErrImagePull"
        };
    }
}

/// Reports the pod's status whenever the observation changes (and differs from the last report).
async fn status_loop(client: Client, pod: Pod, mut rx: watch::Receiver<PodObs>) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let restart = policy(&pod);
    let mut prev: Option<PodStatus> = pod.status.clone();
    let mut reported = false;
    loop {
        let obs = rx.borrow_and_update().clone();
        let st = status::build(restart, &obs, prev.as_ref(), Timestamp::now());
        if !reported || prev.as_ref() != Some(&st) {
            let patch = json!({"status": st});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    prev = Some(st);
                    reported = true;
                }
                Err(e) => {
                    warn!(error = %e, "status update failed");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The kubelet's final delete (grace period 0) once everything of the pod is gone.
async fn final_delete(ctx: &Ctx, pod: &Pod) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => info!("pod deleted"),
        Err(e) if matches!(api_code(&e), Some(404 | 409)) => {}
        Err(e) => warn!(error = %e, "final delete failed"),
    }
}
