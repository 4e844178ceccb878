//! The status write, off the main loop. The loop hands each pass's status over and goes on;
//! one task writes them in order, always the latest, and only when due
//! ([`crate::status::write_due`]).
//!
//! Why not in the loop: on a loaded API server one patch took 0.7-2.2 s (the 30-node lab's
//! audit log), and an unreachable one holds a patch until the connection's keepalive gives up
//! (about 11 s). While the loop awaited the patch it read no spec, no WireGuard stats and sent
//! no probe: a node's new peers waited behind its own status reports, and a failover behind a
//! report of the path that failed. A status that changed while a write was in flight replaces
//! the one waiting, so a slow API server also gets fewer writes, not a queue of stale ones.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use wirekube_crds::WireKubePeerStatus;

use crate::metrics::Metrics;
use crate::status::{changed_fields, replaces_in_flight, write_due};

/// First wait after a failed write; doubles up to [`RETRY_MAX`], back to this after a success.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Hands statuses to the writing task; dropping it stops the task.
pub struct StatusWriter {
    latest: watch::Sender<Option<WireKubePeerStatus>>,
    task: JoinHandle<()>,
}

impl StatusWriter {
    /// Starts the task; `patch` writes one status (the server-side apply of the status
    /// subresource in the agent; a fake in tests).
    pub fn spawn<P, F, E>(heartbeat: Duration, metrics: Arc<Metrics>, patch: P) -> Self
    where
        P: FnMut(WireKubePeerStatus) -> F + Send + 'static,
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let (latest, rx) = watch::channel(None);
        let task = tokio::spawn(write_loop(rx, heartbeat, metrics, patch));
        StatusWriter { latest, task }
    }

    /// Replaces the status to write; never waits.
    pub fn submit(&self, status: WireKubePeerStatus) {
        self.latest.send_replace(Some(status));
    }

    /// The status last submitted (written or not). A short read lock: hold it only while
    /// building the next status.
    pub fn submitted(&self) -> watch::Ref<'_, Option<WireKubePeerStatus>> {
        self.latest.borrow()
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn write_loop<P, F, E>(
    mut rx: watch::Receiver<Option<WireKubePeerStatus>>,
    heartbeat: Duration,
    metrics: Arc<Metrics>,
    mut patch: P,
) where
    P: FnMut(WireKubePeerStatus) -> F,
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut written: Option<(WireKubePeerStatus, Instant)> = None;
    let mut retry = RETRY_MIN;
    while rx.changed().await.is_ok() {
        // Until the latest status is written (or needs no write): a failure retries with
        // whatever is latest by then, and a write replaced in flight gives way to it.
        // When the first write of the current run of replaced ones was sent.
        let mut unlanded_since: Option<tokio::time::Instant> = None;
        loop {
            let Some(status) = rx.borrow_and_update().clone() else {
                break;
            };
            let now = Instant::now();
            let last = written.as_ref().map(|(s, at)| (s, *at));
            if !write_due(last, &status, now, heartbeat) {
                break;
            }
            metrics.status_patches.inc();
            tracing::debug!(
                changed = %changed_fields(last.map(|(s, _)| s), &status),
                "status write"
            );
            let sent_at = tokio::time::Instant::now();
            let replace_until = unlanded_since.unwrap_or(sent_at) + REPLACE_FOR;
            match write_or_replace(&mut rx, &status, patch(status.clone()), replace_until).await {
                Written::Replaced => {
                    metrics.status_patches_replaced.inc();
                    tracing::debug!("status write replaced in flight by a newer path");
                    unlanded_since.get_or_insert(sent_at);
                }
                Written::Done(Ok(())) => {
                    written = Some((status, now));
                    retry = RETRY_MIN;
                    unlanded_since = None;
                }
                Written::Done(Err(e)) => {
                    metrics.status_patch_errors.inc();
                    tracing::warn!(error = %e, retry_in = ?retry, "status apply failed");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

/// How long newer paths may keep replacing the writes in flight, from the first of them, before
/// one has to land: paths that change faster than the API server writes still get reported,
/// at least this often plus one write's time. A time, not a count: with a count of three, at
/// 60 nodes the fourth write of a burst, sent 1.5 s into it, could no longer be replaced and
/// spent 2.3 s in the API server while the path it did not carry was already up.
const REPLACE_FOR: Duration = Duration::from_secs(3);

enum Written<E> {
    Done(Result<(), E>),
    /// Dropped in flight for a newer status ([`replaces_in_flight`]).
    Replaced,
}

/// Awaits `write` of `writing`, unless a newer status that [`replaces_in_flight`] arrives
/// before `replace_until`: then the write is dropped, which closes its request. A request still queued in the API server's priority and fairness queue is removed
/// unexecuted; one already executing either has committed (the newer write lands after it)
/// or fails its storage update on the cancelled request context.
async fn write_or_replace<F, E>(
    rx: &mut watch::Receiver<Option<WireKubePeerStatus>>,
    writing: &WireKubePeerStatus,
    write: F,
    replace_until: tokio::time::Instant,
) -> Written<E>
where
    F: Future<Output = Result<(), E>>,
{
    tokio::pin!(write);
    loop {
        tokio::select! {
            biased;
            r = &mut write => return Written::Done(r),
            changed = rx.changed() => {
                if changed.is_err() {
                    // The agent is going away: let the write finish.
                    return Written::Done(write.await);
                }
                let newer = rx.borrow();
                let in_time = tokio::time::Instant::now() < replace_until;
                if in_time && newer.as_ref().is_some_and(|n| replaces_in_flight(writing, n)) {
                    return Written::Replaced;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::{Semaphore, mpsc};

    fn marked(key: &str) -> WireKubePeerStatus {
        WireKubePeerStatus {
            public_key: Some(key.into()),
            ..Default::default()
        }
    }

    type Write = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

    /// A fake API server: reports each write's status, then holds it until `gate` lets it
    /// finish; `fail_first` writes fail. A write dropped before it finished reports
    /// `dropped <key>`.
    fn fake(
        gate: Arc<Semaphore>,
        mut fail_first: usize,
    ) -> (
        impl FnMut(WireKubePeerStatus) -> Write + Send + 'static,
        mpsc::UnboundedReceiver<String>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let patch = move |s: WireKubePeerStatus| -> Write {
            let key = s.public_key.unwrap_or_default();
            let _ = tx.send(key.clone());
            let (gate, tx) = (gate.clone(), tx.clone());
            let fail = fail_first > 0;
            fail_first = fail_first.saturating_sub(1);
            Box::pin(async move {
                let mut report = DropReport(Some((key.clone(), tx)));
                gate.acquire().await.map_err(|e| e.to_string())?.forget();
                report.0 = None;
                if fail {
                    Err(format!("{key} refused"))
                } else {
                    Ok(())
                }
            })
        };
        (patch, rx)
    }

    /// A writer (60 s heartbeat) on [`fake`]: the writer, the fake's gate, the writes it
    /// reports and the writer's metrics.
    fn writer_on_fake(
        fail_first: usize,
    ) -> (
        StatusWriter,
        Arc<Semaphore>,
        mpsc::UnboundedReceiver<String>,
        Arc<Metrics>,
    ) {
        let gate = Arc::new(Semaphore::new(0));
        let (patch, writes) = fake(gate.clone(), fail_first);
        let metrics = Metrics::new();
        let w = StatusWriter::spawn(Duration::from_secs(60), metrics.clone(), patch);
        (w, gate, writes, metrics)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a write within 10 s")
            .expect("writer alive")
    }

    /// Lets the writer run until it waits again. The test runtime has one thread, and the
    /// writer needs a few polls at most between two awaits (no I/O of its own).
    async fn settle() {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_slow_write_holds_nobody_and_only_the_latest_status_follows_it() {
        let (w, gate, mut writes, metrics) = writer_on_fake(0);
        w.submit(marked("k1"));
        assert_eq!(next(&mut writes).await, "k1");
        // k1 is in flight: these return at once and replace each other.
        for k in ["k2", "k3", "k4"] {
            w.submit(marked(k));
        }
        gate.add_permits(1);
        assert_eq!(next(&mut writes).await, "k4", "k2 and k3 were superseded");
        gate.add_permits(1);
        settle().await;
        // The status just written, again: nothing to write.
        w.submit(marked("k4"));
        settle().await;
        assert!(
            writes.try_recv().is_err(),
            "an unchanged status is not rewritten"
        );
        assert_eq!(metrics.status_patches.get(), 2);
        w.submit(marked("k5"));
        assert_eq!(next(&mut writes).await, "k5");
    }

    /// Waits out the real retry delay (0.5 s).
    #[tokio::test]
    async fn a_failed_write_is_retried_with_the_latest_status() {
        let (w, gate, mut writes, metrics) = writer_on_fake(1);
        w.submit(marked("k1"));
        assert_eq!(next(&mut writes).await, "k1");
        w.submit(marked("k2"));
        gate.add_permits(2);
        assert_eq!(next(&mut writes).await, "k2", "the retry writes the latest");
        assert_eq!(metrics.status_patch_errors.get(), 1);
        assert_eq!(metrics.status_patches.get(), 2);
    }

    /// A status with one connection `b` on `path`, marked `key`.
    fn with_path(key: &str, path: wirekube_crds::ActualPath) -> WireKubePeerStatus {
        WireKubePeerStatus {
            connections: vec![wirekube_crds::PeerConnection {
                name: "b".into(),
                path,
                ..Default::default()
            }],
            ..marked(key)
        }
    }

    /// Sends `dropped <key>` when a write is dropped before it finished.
    struct DropReport(Option<(String, mpsc::UnboundedSender<String>)>);

    impl Drop for DropReport {
        fn drop(&mut self) {
            if let Some((key, tx)) = self.0.take() {
                let _ = tx.send(format!("dropped {key}"));
            }
        }
    }

    /// On paused time: the test moves the clock past the replacement window.
    #[tokio::test(start_paused = true)]
    async fn a_new_path_replaces_the_write_in_flight_and_other_news_waits() {
        use wirekube_crds::ActualPath::{Connecting, Direct, Relay};
        let (w, gate, mut writes, metrics) = writer_on_fake(0);
        w.submit(with_path("k1", Connecting));
        assert_eq!(next(&mut writes).await, "k1");
        // Only a new key (no path moved): waits for k1.
        w.submit(with_path("k2", Connecting));
        settle().await;
        assert!(writes.try_recv().is_err(), "k1 stays in flight");
        // The handshake: k1 is dropped and k3 written at once.
        w.submit(with_path("k3", Direct));
        assert_eq!(next(&mut writes).await, "dropped k1");
        assert_eq!(next(&mut writes).await, "k3");
        assert_eq!(metrics.status_patches_replaced.get(), 1);
        gate.add_permits(1);
        settle().await;
        assert!(writes.try_recv().is_err(), "k3 landed, nothing newer");
        assert_eq!(metrics.status_patches.get(), 2);
        // A path that flaps faster than writes land: each newer path replaces the write in
        // flight for REPLACE_FOR from the first replaced one's start, then the write in
        // flight is awaited and the latest follows it.
        w.submit(with_path("f0", Relay));
        assert_eq!(next(&mut writes).await, "f0");
        for (i, path) in [Direct, Relay, Direct, Relay].into_iter().enumerate() {
            tokio::time::advance(Duration::from_millis(700)).await;
            w.submit(with_path(&format!("f{}", i + 1), path));
            assert_eq!(next(&mut writes).await, format!("dropped f{i}"));
            assert_eq!(next(&mut writes).await, format!("f{}", i + 1));
        }
        // 2.8 s after f0 was sent; at 3.0 s no more.
        tokio::time::advance(Duration::from_millis(200)).await;
        w.submit(with_path("f5", Direct));
        settle().await;
        assert!(writes.try_recv().is_err(), "f4 is not replaced after 3 s");
        gate.add_permits(1);
        assert_eq!(next(&mut writes).await, "f5");
        assert_eq!(metrics.status_patches_replaced.get(), 5);
        // f5 landed: a new run may replace again.
        gate.add_permits(1);
        settle().await;
        w.submit(with_path("g0", Relay));
        assert_eq!(next(&mut writes).await, "g0");
        w.submit(with_path("g1", Direct));
        assert_eq!(next(&mut writes).await, "dropped g0");
        assert_eq!(next(&mut writes).await, "g1");
    }
}
