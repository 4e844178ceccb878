//! Leader election: every replica runs the controller (warm caches), only the Lease holder
//! plans and writes.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::controller::{self, ControllerSettings};
use crate::error::Result;
use crate::leadership::{Leadership, LeaseSeen, now_ms};
use crate::lease::{Campaign, LeaseTiming};
use crate::metrics::Metrics;

/// Settings of one operator replica.
#[derive(Clone, Debug)]
pub struct OperatorSettings {
    pub controller: ControllerSettings,
    /// Lease name (in `controller.namespace`).
    pub lease_name: String,
    /// Lease duration in seconds; a standby takes over this long after the leader vanished.
    pub lease_duration: u64,
}

impl Default for OperatorSettings {
    fn default() -> Self {
        OperatorSettings {
            controller: ControllerSettings::default(),
            lease_name: "wirekube-operator".into(),
            lease_duration: 15,
        }
    }
}

/// Grace period: renew this long before the lease expires.
pub fn grace_for(duration: u64) -> u64 {
    (duration / 3).clamp(1, duration.saturating_sub(1).max(1))
}

/// This replica's controller. Dropping it aborts the task: a `run` future that is dropped (its
/// task aborted, the runtime shutting down) must not leave a detached controller behind.
/// (Found by the failover test: the "killed" leader kept writing.)
struct Controller {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Controller {
    fn start(
        client: Client,
        settings: &ControllerSettings,
        metrics: &Metrics,
        leader: &Arc<Leadership>,
        gained: mpsc::UnboundedReceiver<()>,
    ) -> Self {
        let stop = CancellationToken::new();
        let gained = futures::stream::unfold(gained, |mut rx| async move {
            rx.recv().await.map(|()| ((), rx))
        });
        let task = tokio::spawn(controller::run(
            client,
            settings.clone(),
            metrics.clone(),
            leader.clone(),
            gained,
            stop.clone().cancelled_owned(),
        ));
        Controller {
            stop,
            task: Some(task),
        }
    }

    /// Lets in-flight reconciles finish for up to 5 s, then stops the controller regardless.
    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(std::time::Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            warn!("controller did not stop in 5s; aborting it");
            task.abort();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// While this replica is elected, re-reads the Lease (every
/// [`crate::leadership::check_interval`]) so that writes stop when it stopped being ours
/// (`Leadership::may_write`), even while the campaign still reports it held. Logs when
/// writing stops and resumes; on resuming it reconciles every mesh (`gained`), since the
/// passes refused meanwhile would otherwise wait for their 30 s retry.
async fn check_lease(
    client: Client,
    settings: OperatorSettings,
    leader: Arc<Leadership>,
    gained: mpsc::UnboundedSender<()>,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.controller.namespace);
    let mut writing = true;
    loop {
        tokio::select! {
            () = tokio::time::sleep(leader.check_interval()) => {}
            () = shutdown.cancelled() => return,
        }
        if !leader.is_elected() {
            writing = true;
            continue;
        }
        let read_at_ms = now_ms();
        match api.get_opt(&settings.lease_name).await {
            Ok(lease) => {
                let spec = lease.and_then(|l| l.spec).unwrap_or_default();
                leader.observe(LeaseSeen {
                    read_at_ms,
                    holder: spec.holder_identity,
                    renewed_ms: spec.renew_time.map(|t| t.0.as_millisecond()),
                });
            }
            Err(e) => debug!(error = %e, "reading the Lease"),
        }
        let may = leader.may_write(now_ms());
        if may != writing {
            writing = may;
            if may {
                info!("the Lease is ours again: writing resumes, reconciling every mesh");
                let _ = gained.send(());
            } else {
                warn!(
                    "the Lease is no longer ours (another holder, or expired by our last \
                     renewal) while the campaign still reports it held: writes stop"
                );
            }
        }
    }
}

/// Runs one replica until `shutdown` is cancelled. The controller starts at once, so its
/// caches fill while the replica campaigns for the Lease and stay warm on a standby: a new
/// leader (at start-up, or after a failover) plans from them at once instead of listing every
/// object first. Only the Lease holder plans and writes; gaining the Lease reconciles every
/// mesh, losing it makes every later write fail before it is sent (`Writer`). `ready` is set
/// once the Lease is reachable. On shutdown the Lease is released.
pub async fn run(
    client: Client,
    settings: OperatorSettings,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Result<()> {
    let leader = Arc::new(Leadership::new(
        settings.controller.identity.clone(),
        std::time::Duration::from_secs(settings.lease_duration),
        std::time::Duration::from_secs(grace_for(settings.lease_duration)),
    ));
    let (gained, gained_rx) = mpsc::unbounded_channel();
    let controller = Controller::start(
        client.clone(),
        &settings.controller,
        &metrics,
        &leader,
        gained_rx,
    );
    // The API server may not be reachable yet when the pod starts (in the lab, kube-proxy had
    // not routed its Service for the first second): the campaign retries instead of exiting,
    // which left the restart to the kubelet's back-off. Ready once the Lease answered.
    let campaign = Campaign {
        api: Api::namespaced(client.clone(), &settings.controller.namespace),
        name: settings.lease_name.clone(),
        identity: settings.controller.identity.clone(),
        timing: LeaseTiming {
            duration: std::time::Duration::from_secs(settings.lease_duration),
            grace: std::time::Duration::from_secs(grace_for(settings.lease_duration)),
        },
    };
    let (mut rx, lease_task) = campaign.spawn(ready);
    let identity = &settings.controller.identity;
    let check = tokio::spawn(check_lease(
        client.clone(),
        settings.clone(),
        leader.clone(),
        gained.clone(),
        shutdown.clone(),
    ));
    loop {
        let is_leader = *rx.borrow_and_update();
        let was_leader = leader.is_elected();
        if is_leader != was_leader {
            leader.set_elected(is_leader, now_ms());
        }
        if is_leader && !was_leader {
            info!(%identity, "leadership acquired: reconciling every mesh");
            metrics.leader.set(1);
            // The controller outlives this loop, so its receiver is still there.
            let _ = gained.send(());
        } else if !is_leader && was_leader {
            warn!(%identity, "leadership lost: standing by");
            metrics.leader.set(0);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() {
                warn!("the Lease campaign stopped");
                break;
            },
            () = shutdown.cancelled() => break,
        }
    }
    // In-flight reconciles may still write while the Lease is held.
    controller.stop().await;
    check.abort();
    leader.set_elected(false, now_ms());
    metrics.leader.set(0);
    drop(rx);
    match lease_task.finish().await {
        Ok(Ok(true)) => info!("lease released"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => warn!(error = %e, "releasing lease"),
        Err(e) => warn!(error = %e, "lease task"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_is_shorter_than_duration() {
        assert_eq!(grace_for(15), 5);
        assert_eq!(grace_for(3), 1);
        assert_eq!(grace_for(2), 1);
        assert_eq!(grace_for(1), 1);
    }
}
