//! Supervising one container: start, probe, restart with back-off, stop with a grace period.
//! Everything it observes goes into the pod's [`PodObs`].

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::process::Child;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::probe::{self, ProbeSpec, Tracker};
use super::restart::{RestartPolicy, next_delay};
use super::runtime::{self, SpawnSpec};
use super::status::{PodObs, State};

/// `Some(grace)` once the container must stop.
pub type StopRx = watch::Receiver<Option<Duration>>;

/// Grace period for a container killed by a failed liveness probe.
const LIVENESS_GRACE: Duration = Duration::from_secs(5);

/// One container to supervise.
pub struct Supervised {
    pub index: usize,
    pub name: String,
    pub spec: SpawnSpec,
    pub policy: RestartPolicy,
    pub readiness: Option<ProbeSpec>,
    pub liveness: Option<ProbeSpec>,
    pub obs: watch::Sender<PodObs>,
    pub stop: StopRx,
}

impl Supervised {
    fn update(&self, f: impl FnOnce(&mut super::status::ContainerObs)) {
        self.obs.send_modify(|o| {
            if let Some(c) = o.containers.get_mut(self.index) {
                f(c);
            }
        });
    }
}

/// Waits until a stop is requested; returns its grace period (zero if the pod worker is gone).
async fn stop_requested(stop: &mut StopRx) -> Duration {
    match stop.wait_for(Option::is_some).await {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

/// TERM to the container's process group, KILL after `grace`; returns the exit status.
async fn terminate(
    child: &mut Child,
    pid: u32,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    runtime::signal_group(pid, libc::SIGTERM);
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        runtime::signal_group(pid, libc::SIGKILL);
        return status.ok();
    }
    runtime::signal_group(pid, libc::SIGKILL);
    child.wait().await.ok()
}

/// Exit code and signal of a finished process (128 + signal when killed, as runtimes report).
fn exit_of(status: Option<std::process::ExitStatus>) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => (code, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            (None, None) => (-1, None),
        },
        None => (-1, None),
    }
}

/// Runs the readiness probe of one container run until it is dropped.
async fn readiness_loop(spec: ProbeSpec, pid: u32, sup: &Supervised) {
    tokio::time::sleep(spec.initial_delay).await;
    let mut tracker = Tracker::new(false);
    loop {
        let ok = probe::run_once(&spec, pid).await;
        let ready = tracker.record(ok, &spec);
        sup.update(|c| c.ready = ready);
        tokio::time::sleep(spec.period).await;
    }
}

/// Runs the liveness probe of one container run; returns when it fails.
async fn liveness_loop(spec: ProbeSpec, pid: u32, failed: &Notify) {
    tokio::time::sleep(spec.initial_delay).await;
    let mut tracker = Tracker::new(true);
    loop {
        if !tracker.record(probe::run_once(&spec, pid).await, &spec) {
            failed.notify_one();
            return;
        }
        tokio::time::sleep(spec.period).await;
    }
}

/// How one run ended.
enum Ended {
    Exited,
    Stopped,
}

/// One run of the container: wait for its exit while probing; stop it on request.
async fn run_once(sup: &Supervised, mut child: Child, pid: u32) -> (Ended, i32, Option<i32>) {
    let failed = Notify::new();
    let readiness = sup.readiness.clone();
    let liveness = sup.liveness.clone();
    let probes = async {
        let r = async {
            match readiness {
                Some(spec) => readiness_loop(spec, pid, sup).await,
                None => std::future::pending().await,
            }
        };
        let l = async {
            match liveness {
                Some(spec) => liveness_loop(spec, pid, &failed).await,
                None => std::future::pending().await,
            }
        };
        tokio::join!(r, l);
    };
    let mut stop = sup.stop.clone();
    let (ended, status) = tokio::select! {
        status = child.wait() => (Ended::Exited, status.ok()),
        grace = stop_requested(&mut stop) => (Ended::Stopped, terminate(&mut child, pid, grace).await),
        () = failed.notified() => {
            warn!(container = %sup.name, pid, "liveness probe failed: restarting");
            (Ended::Exited, terminate(&mut child, pid, LIVENESS_GRACE).await)
        }
        () = probes => (Ended::Exited, child.wait().await.ok()),
    };
    let (code, signal) = exit_of(status);
    (ended, code, signal)
}

/// Supervises the container until it is stopped or finished for good.
pub async fn supervise(mut sup: Supervised) {
    let mut delay: Option<Duration> = None;
    let mut runs = 0u32;
    loop {
        if sup.stop.borrow().is_some() {
            return;
        }
        let started = Instant::now();
        let started_at = Timestamp::now();
        let child = match runtime::spawn(&sup.spec) {
            Ok(c) => c,
            Err(e) => {
                warn!(container = %sup.name, error = %e, "cannot start container");
                sup.update(|c| c.state = State::waiting("RunContainerError", Some(e.to_string())));
                let d = next_delay(delay, Duration::ZERO);
                delay = Some(d);
                if wait_or_stop(&mut sup.stop, d).await {
                    return;
                }
                continue;
            }
        };
        let pid = child.id().unwrap_or_default();
        // Read before anything can end the run (spawn returns after the exec).
        let mount_ns = runtime::RunNamespace::pin(pid);
        info!(container = %sup.name, pid, argv = ?sup.spec.argv, "container started");
        let no_readiness = sup.readiness.is_none();
        let restarted = runs > 0;
        runs = runs.saturating_add(1);
        sup.update(|c| {
            c.state = State::Running { pid, started_at };
            c.ready = no_readiness;
            if restarted {
                c.restart_count = c.restart_count.saturating_add(1);
            }
        });
        let (ended, exit_code, signal) = run_once(&sup, child, pid).await;
        // The container is over: nothing it started survives it, as in a real runtime.
        if let Some(ns) = mount_ns {
            let killed = runtime::kill_leftovers(ns.ino());
            if !killed.is_empty() {
                info!(container = %sup.name, pid, ?killed, "killed the processes left in the container");
            }
        }
        let reason = if exit_code == 0 { "Completed" } else { "Error" };
        info!(container = %sup.name, pid, exit_code, "container exited");
        let terminated = State::Terminated {
            pid,
            exit_code,
            signal,
            reason: reason.to_owned(),
            started_at,
            finished_at: Timestamp::now(),
        };
        let stopped = matches!(ended, Ended::Stopped) || sup.stop.borrow().is_some();
        if stopped || !sup.policy.restarts(exit_code) {
            sup.update(|c| {
                c.state = terminated;
                c.ready = false;
            });
            return;
        }
        let d = next_delay(delay, started.elapsed());
        delay = Some(d);
        let msg = format!("back-off {d:?} restarting failed container={}", sup.name);
        sup.update(|c| {
            c.state = State::waiting("CrashLoopBackOff", Some(msg));
            c.last = Some(terminated);
            c.ready = false;
        });
        if wait_or_stop(&mut sup.stop, d).await {
            return;
        }
    }
}

/// Sleeps `d`; true if a stop was requested meanwhile.
async fn wait_or_stop(stop: &mut StopRx, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        _ = stop_requested(stop) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn exit_codes() {
        let cases = [
            (Some(ExitStatus::from_raw(0)), (0, None)),
            (Some(ExitStatus::from_raw(3 << 8)), (3, None)),
            (Some(ExitStatus::from_raw(libc::SIGKILL)), (137, Some(9))),
            (Some(ExitStatus::from_raw(libc::SIGTERM)), (143, Some(15))),
            (None, (-1, None)),
        ];
        for (status, want) in cases {
            assert_eq!(exit_of(status), want, "{status:?}");
        }
    }
}
