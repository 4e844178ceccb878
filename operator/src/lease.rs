//! The leader Lease (coordination.k8s.io/v1): acquire, renew, release. The decision is pure
//! ([`decide`]: what was read of the Lease and the time in, the next request out); the
//! campaign around it only sends requests and reports leadership on a watch channel.
//!
//! Why not kube-lease-manager (used until 2026-12-07): its first acquisition was seven
//! sequential requests (GET 404, create, GET, GET, PATCH, PATCH, GET), 2.8 s from the Lease
//! created to leadership reported on the 30-node start-up's loaded API server, and every
//! agent waited for the leader's first pass. Here a create or a replace that succeeds *is*
//! the acquisition: one request on a fresh cluster, and a replica starts by creating (a
//! Lease that exists answers 409, and only then is it read).
//!
//! Expiry is judged by the holder's `renewTime` plus its `leaseDurationSeconds` on this
//! replica's clock. A standby whose clock runs ahead of the holder's takes the Lease early;
//! the holder's writes are gated by [`crate::leadership`], which re-reads the Lease every
//! third of the grace while leading and stops writing once it shows another holder.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::leadership::{check_interval, now_ms, valid_ms};

/// The Lease's timing, as configured for this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// `leaseDurationSeconds` written by this replica.
    pub duration: Duration,
    /// Renew this long before our Lease expires.
    pub grace: Duration,
}

impl LeaseTiming {
    /// How often a standby re-reads a Lease another replica holds (a released one is taken
    /// within this), and how soon a failed request is retried.
    pub fn retry(&self) -> Duration {
        check_interval(self.grace)
    }
}

/// What this replica knows of the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Nothing yet (start-up, or the last write conflicted and no read followed).
    Unknown,
    Absent,
    Present(LeaseView),
}

impl Seen {
    fn of(known: Option<&Option<Lease>>) -> Self {
        match known {
            None => Seen::Unknown,
            Some(None) => Seen::Absent,
            Some(Some(l)) => Seen::Present(LeaseView::of(l)),
        }
    }
}

/// The fields of a Lease the decision needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    /// `renewTime`, milliseconds since the Unix epoch (the holder's clock).
    pub renewed_ms: Option<i64>,
    pub duration_s: Option<i32>,
}

impl LeaseView {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseView {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renewed_ms: spec.renew_time.map(|t| t.0.as_millisecond()),
            duration_s: spec.lease_duration_seconds,
        }
    }
}

/// The next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create the Lease, held by this replica.
    Create,
    /// Replace a free Lease (no holder, or expired) with one held by this replica.
    Take,
    /// Replace our Lease with a new `renewTime`.
    Renew,
    /// Nothing before this long (our renewal is not due, or another holder's Lease is valid).
    Wait(Duration),
}

/// The decision: a pure function of what was read, this replica's identity, the timing and
/// the time now (milliseconds since the Unix epoch).
pub fn decide(seen: &Seen, me: &str, t: LeaseTiming, now_ms: i64) -> Step {
    let view = match seen {
        Seen::Unknown | Seen::Absent => return Step::Create,
        Seen::Present(v) => v,
    };
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let Some(holder) = view.holder.as_deref() else {
        return Step::Take;
    };
    let Some(renewed) = view.renewed_ms else {
        return Step::Take;
    };
    if holder == me {
        let due = renewed.saturating_add(ms(t.duration.saturating_sub(t.grace)));
        return match u64::try_from(due.saturating_sub(now_ms)) {
            Ok(wait) if wait > 0 => Step::Wait(Duration::from_millis(wait)),
            _ => Step::Renew,
        };
    }
    let their_duration = view
        .duration_s
        .and_then(|s| u64::try_from(s).ok())
        .map_or(t.duration, Duration::from_secs);
    let expires = renewed.saturating_add(ms(their_duration));
    match u64::try_from(expires.saturating_sub(now_ms)) {
        Ok(left) if left > 0 => Step::Wait(Duration::from_millis(left).min(t.retry())),
        _ => Step::Take,
    }
}

/// Whether a Lease we wrote at `written_ms` still makes us leader at `now_ms`: until it would
/// expire, less the safety margin the write gate uses ([`crate::leadership`]).
pub fn still_held(written_ms: i64, t: LeaseTiming, now_ms: i64) -> bool {
    now_ms < written_ms.saturating_add(valid_ms(t.duration, t.grace))
}

/// The Lease as this replica writes it: `base` (the one read, for its resourceVersion and
/// metadata) held by `me`, renewed `now`.
pub fn held(base: Option<&Lease>, name: &str, me: &str, t: LeaseTiming, now_ms: i64) -> Lease {
    let mut lease = base.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let now = k8s_openapi::jiff::Timestamp::from_millisecond(now_ms)
        .map(MicroTime)
        .unwrap_or_else(|_| MicroTime(k8s_openapi::jiff::Timestamp::now()));
    let mut spec = lease.spec.take().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(me) {
        let moved = spec
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + i32::from(moved));
        spec.acquire_time = Some(now.clone());
        spec.holder_identity = Some(me.into());
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(i32::try_from(t.duration.as_secs()).unwrap_or(i32::MAX));
    lease.spec = Some(spec);
    lease
}

/// One replica's campaign for Lease `name`.
pub struct Campaign {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub timing: LeaseTiming,
}

impl Campaign {
    /// Starts the campaign: the receiver says whether this replica holds the Lease. Dropping
    /// every receiver ends it, releasing the Lease if held ([`CampaignTask::finish`] says
    /// `true`). `reachable` is set once the API server answered a Lease request.
    pub fn spawn(self, reachable: Arc<AtomicBool>) -> (watch::Receiver<bool>, CampaignTask) {
        let (tx, rx) = watch::channel(false);
        (
            rx,
            CampaignTask(Some(tokio::spawn(self.run(tx, reachable)))),
        )
    }

    async fn run(self, tx: watch::Sender<bool>, reachable: Arc<AtomicBool>) -> Result<bool> {
        // What was last read or written of the Lease: `None` until known, `Some(None)` absent.
        let mut known: Option<Option<Lease>> = None;
        // When we last wrote the Lease as ours (ms): leadership lasts while `still_held`.
        let mut written: Option<i64> = None;
        loop {
            let now = now_ms();
            let holding = written.is_some_and(|w| still_held(w, self.timing, now));
            tx.send_if_modified(|l| std::mem::replace(l, holding) != holding);
            let seen = Seen::of(known.as_ref());
            let outcome = match decide(&seen, &self.identity, self.timing, now) {
                Step::Wait(d) => Outcome::Pause(d, !holding),
                Step::Create => {
                    let l = held(None, &self.name, &self.identity, self.timing, now);
                    self.wrote(self.api.create(&PostParams::default(), &l).await, now)
                }
                Step::Take | Step::Renew => {
                    let base = known.as_ref().and_then(Option::as_ref);
                    let l = held(base, &self.name, &self.identity, self.timing, now);
                    let r = self
                        .api
                        .replace(&self.name, &PostParams::default(), &l)
                        .await;
                    self.wrote(r, now)
                }
            };
            let read = match outcome {
                Outcome::Won(l, at) => {
                    reachable.store(true, Ordering::SeqCst);
                    known = Some(Some(*l));
                    written = Some(at);
                    continue;
                }
                Outcome::Conflict => {
                    reachable.store(true, Ordering::SeqCst);
                    true
                }
                Outcome::Pause(d, read_after) => {
                    tokio::select! {
                        () = tokio::time::sleep(d) => read_after,
                        () = tx.closed() => break,
                    }
                }
            };
            if tx.is_closed() {
                break;
            }
            if read {
                match self.api.get_opt(&self.name).await {
                    Ok(l) => {
                        reachable.store(true, Ordering::SeqCst);
                        let holder = l.as_ref().map(|l| LeaseView::of(l).holder);
                        if holder.is_some_and(|h| h.as_deref() != Some(self.identity.as_str())) {
                            written = None;
                        }
                        known = Some(l);
                    }
                    Err(e) => {
                        debug!(error = %e, "reading the Lease");
                        self.pause(&tx).await;
                    }
                }
            }
        }
        self.release(known.flatten(), written.is_some()).await
    }

    fn wrote(&self, r: kube::Result<Lease>, at: i64) -> Outcome {
        match r {
            Ok(l) => Outcome::Won(Box::new(l), at),
            Err(kube::Error::Api(s)) if s.code == 409 => Outcome::Conflict,
            Err(kube::Error::Api(s)) if s.code == 403 => {
                warn!(
                    error = %s, retry_in = ?self.timing.retry(),
                    "leader election: the Lease may not be written; the operator's Role must \
                     allow get, create and update on coordination.k8s.io leases \
                     (config/rbac/operator.yaml)"
                );
                Outcome::Pause(self.timing.retry(), true)
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?self.timing.retry(), "leader election: writing the Lease failed");
                Outcome::Pause(self.timing.retry(), true)
            }
        }
    }

    async fn pause(&self, tx: &watch::Sender<bool>) {
        tokio::select! {
            () = tokio::time::sleep(self.timing.retry()) => {}
            () = tx.closed() => {}
        }
    }

    /// Gives the Lease up (no holder) so another replica takes it at once.
    async fn release(&self, lease: Option<Lease>, held: bool) -> Result<bool> {
        let Some(mut lease) = lease.filter(|_| held) else {
            return Ok(false);
        };
        if let Some(spec) = lease.spec.as_mut() {
            *spec = LeaseSpec {
                lease_transitions: spec.lease_transitions,
                ..LeaseSpec::default()
            };
        }
        (self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await)
            .map(|_| true)
            .map_err(|source| Error::Kube {
                verb: "release",
                what: format!("Lease {}", self.name),
                source,
            })
    }
}

/// The running campaign. Dropped without [`CampaignTask::finish`] (its replica's task
/// aborted), it stops at once and releases nothing, as a killed process would: a replica
/// whose `run` is aborted must not keep renewing, and the failover test's "killed" leader
/// must not hand the Lease over either.
pub struct CampaignTask(Option<JoinHandle<Result<bool>>>);

impl CampaignTask {
    /// Waits for the campaign to end (after every receiver was dropped): whether it released
    /// the Lease.
    pub async fn finish(mut self) -> std::result::Result<Result<bool>, tokio::task::JoinError> {
        match self.0.take() {
            Some(task) => task.await,
            None => Ok(Ok(false)),
        }
    }
}

impl Drop for CampaignTask {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

enum Outcome {
    /// The Lease was written as ours at this time.
    Won(Box<Lease>, i64),
    /// The Lease changed since it was read (or exists, for a create): read it again.
    Conflict,
    /// Wait, then read the Lease again or not.
    Pause(Duration, bool),
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
