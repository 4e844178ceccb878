//! Kubernetes Events, published off the reconcile path. Each Event is one API request, and a
//! reconcile that published its decisions one after the other held the next re-plan back by
//! a request's time per changed pair: at 20 nodes ~15 decisions took 2.3 s on the lab's two
//! cores, and agents whose NAT type arrived meanwhile waited for it (docs/operator.md). The
//! reconcile now queues them and one task publishes them in order.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use tokio::sync::mpsc;
use tracing::warn;

use crate::leadership::Leadership;
use crate::metrics::Metrics;

/// Events waiting to be published. Beyond this the newest are dropped (and counted): an API
/// server that slow is better off without them, and planning never waits for them.
pub const EVENT_QUEUE: usize = 1024;

struct Pending {
    about: ObjectReference,
    event: Event,
}

/// The sending side; clone-free, kept in the controller's context.
pub struct EventQueue {
    tx: mpsc::Sender<Pending>,
    metrics: Metrics,
}

impl EventQueue {
    /// Starts the publishing task (it ends when the queue is dropped). Events are published
    /// only while `leader` is set, as every other write.
    pub fn start(recorder: Recorder, metrics: Metrics, leader: Arc<Leadership>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(EVENT_QUEUE);
        let m = metrics.clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                if !leader.may_write(crate::leadership::now_ms()) {
                    continue;
                }
                match recorder.publish(&p.event, &p.about).await {
                    Ok(()) => m.write("Event", "create"),
                    Err(e) => {
                        m.write_failure("Event", "api");
                        warn!(error = %e, reason = %p.event.reason, "publishing event failed");
                    }
                }
            }
        });
        Self { tx, metrics }
    }

    /// Queues `event` about `about` without waiting for the API server.
    pub fn send(&self, about: ObjectReference, event: Event) {
        let reason = event.reason.clone();
        if let Err(e) = self.tx.try_send(Pending { about, event }) {
            self.metrics.write_failure("Event", "queue-full");
            warn!(%reason, error = %e, "event not published: the queue is full or closed");
        }
    }
}
