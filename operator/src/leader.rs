//! Leader election: only the Lease holder runs the controller and writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::controller::{self, ControllerSettings};
use crate::error::Result;
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

/// This replica's running controller. Dropping it aborts the task: a `run` future that is
/// dropped (its task aborted, the runtime shutting down) must not leave a detached controller
/// writing without the Lease. (Found by the failover test: the "killed" leader kept writing.)
struct Controller {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Runs one replica until `shutdown` is cancelled: campaigns for the Lease; while it holds it
/// the controller runs (a fresh start, hence a full reconcile, each time leadership is
/// gained); on losing it the controller stops at once. `ready` is set once the Lease is
/// reachable. On shutdown the Lease is released.
pub async fn run(
    client: Client,
    settings: OperatorSettings,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Result<()> {
    // The API server may not be reachable yet when the pod starts (in the lab, kube-proxy had
    // not routed its Service for the first second): retry instead of exiting, which left the
    // restart to the kubelet's back-off.
    let mut wait = std::time::Duration::from_millis(200);
    let manager = loop {
        let built = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
            .with_namespace(&settings.controller.namespace)
            .with_identity(&settings.controller.identity)
            .with_duration(settings.lease_duration)
            .with_grace(grace_for(settings.lease_duration))
            .build()
            .await;
        match built {
            Ok(m) => break m,
            Err(e) => warn!(error = %e, retry_in = ?wait, "leader election: Lease not reachable"),
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(5));
    };
    ready.store(true, Ordering::SeqCst);
    let (mut rx, lease_task) = manager.watch().await;
    let leader = Arc::new(AtomicBool::new(false));
    let mut running: Option<Controller> = None;
    loop {
        let is_leader = *rx.borrow_and_update();
        if is_leader && running.is_none() {
            info!(identity = %settings.controller.identity, "leadership acquired: starting controller");
            leader.store(true, Ordering::SeqCst);
            metrics.leader.set(1);
            let stop = CancellationToken::new();
            let task = tokio::spawn(controller::run(
                client.clone(),
                settings.controller.clone(),
                metrics.clone(),
                leader.clone(),
                stop.clone().cancelled_owned(),
            ));
            running = Some(Controller {
                stop,
                task: Some(task),
            });
        } else if !is_leader && let Some(mut c) = running.take() {
            warn!(identity = %settings.controller.identity, "leadership lost: stopping controller");
            leader.store(false, Ordering::SeqCst);
            metrics.leader.set(0);
            if let Some(task) = c.task.take() {
                task.abort();
                let _ = task.await;
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() {
                warn!("lease manager stopped");
                break;
            },
            () = shutdown.cancelled() => break,
        }
    }
    if let Some(mut c) = running.take() {
        c.stop.cancel();
        // Give in-flight reconciles a moment, then stop writing regardless.
        if let Some(mut task) = c.task.take()
            && tokio::time::timeout(std::time::Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            warn!("controller did not stop in 5s; aborting it");
            task.abort();
        }
    }
    leader.store(false, Ordering::SeqCst);
    metrics.leader.set(0);
    drop(rx);
    match lease_task.await {
        Ok(Ok(_)) => info!("lease released"),
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
