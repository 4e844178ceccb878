//! A pod's status from what the kubelet observed of its containers (pure).

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::restart::RestartPolicy;

/// The state of one container as the kubelet saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        pid: u32,
        started_at: Timestamp,
    },
    Terminated {
        pid: u32,
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        started_at: Timestamp,
        finished_at: Timestamp,
    },
}

impl State {
    /// A waiting state.
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        Self::Waiting {
            reason: reason.to_owned(),
            message,
        }
    }
}

/// One container, observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerObs {
    pub name: String,
    pub image: String,
    pub state: State,
    /// The previous run's termination, once it restarted or is waiting to.
    pub last: Option<State>,
    pub restart_count: i32,
    pub ready: bool,
}

/// The whole pod, observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodObs {
    pub host_ip: String,
    pub pod_ip: Option<String>,
    pub start_time: Timestamp,
    /// `None` while the sandbox (netns, network, volumes) is being set up, then its outcome.
    pub sandbox: Option<Result<(), (String, String)>>,
    pub containers: Vec<ContainerObs>,
}

/// The pod phase (as the kubelet computes it, without init containers).
pub fn phase(policy: RestartPolicy, containers: &[ContainerObs]) -> &'static str {
    let (mut pending, mut running, mut failed) = (0, 0, 0);
    for c in containers {
        match &c.state {
            State::Running { .. } => running += 1,
            State::Waiting { .. } if c.last.is_some() => running += 1,
            State::Waiting { .. } => pending += 1,
            State::Terminated { exit_code, .. } if policy.restarts(*exit_code) => running += 1,
            State::Terminated { exit_code, .. } if *exit_code != 0 => failed += 1,
            State::Terminated { .. } => {}
        }
    }
    match () {
        () if containers.is_empty() || pending > 0 => "Pending",
        () if running > 0 => "Running",
        () if failed > 0 => "Failed",
        () => "Succeeded",
    }
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn container_state(s: &State) -> ContainerState {
    match s {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..ContainerState::default()
        },
        State::Running { started_at, .. } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..ContainerState::default()
        },
        State::Terminated {
            pid,
            exit_code,
            signal,
            reason,
            started_at,
            finished_at,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                container_id: Some(container_id(*pid)),
                exit_code: *exit_code,
                signal: *signal,
                reason: Some(reason.clone()),
                started_at: Some(time(*started_at)),
                finished_at: Some(time(*finished_at)),
                message: None,
            }),
            ..ContainerState::default()
        },
    }
}

/// The container ID the lab reports: the process ID of the container's main process.
pub fn container_id(pid: u32) -> String {
    format!("lab://{pid}")
}

fn container_status(c: &ContainerObs) -> ContainerStatus {
    let pid = match &c.state {
        State::Running { pid, .. } | State::Terminated { pid, .. } => Some(*pid),
        State::Waiting { .. } => None,
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: String::new(),
        container_id: pid.map(container_id),
        ready: c.ready,
        started: Some(matches!(c.state, State::Running { .. })),
        restart_count: c.restart_count,
        state: Some(container_state(&c.state)),
        last_state: Some(c.last.as_ref().map(container_state).unwrap_or_default()),
        ..ContainerStatus::default()
    }
}

/// A condition, keeping the previous transition time when its status did not change.
fn condition(
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    prev: Option<&PodStatus>,
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let earlier = prev
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    PodCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: (!ok).then(|| reason.map(str::to_owned)).flatten(),
        message: (!ok).then_some(message).flatten(),
        last_transition_time: Some(earlier.unwrap_or(time(now))),
        ..PodCondition::default()
    }
}

/// The status to report for `obs`. `prev` is the status last reported (for transition times).
pub fn build(
    policy: RestartPolicy,
    obs: &PodObs,
    prev: Option<&PodStatus>,
    now: Timestamp,
) -> PodStatus {
    let phase = phase(policy, &obs.containers);
    let unready: Vec<&str> = obs
        .containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let ready = unready.is_empty() && !obs.containers.is_empty();
    let (ready_reason, ready_msg) = match phase {
        "Succeeded" | "Failed" => ("PodCompleted", None),
        _ => (
            "ContainersNotReady",
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        ),
    };
    let (sandbox_ok, sandbox_reason, sandbox_msg) = match &obs.sandbox {
        Some(Ok(())) => (true, None, None),
        Some(Err((r, m))) => (false, Some(r.as_str()), Some(m.clone())),
        None => (false, None, None),
    };
    let conditions = vec![
        condition(
            "PodReadyToStartContainers",
            sandbox_ok,
            sandbox_reason,
            sandbox_msg,
            prev,
            now,
        ),
        condition("Initialized", true, None, None, prev, now),
        condition(
            "Ready",
            ready,
            Some(ready_reason),
            ready_msg.clone(),
            prev,
            now,
        ),
        condition(
            "ContainersReady",
            ready,
            Some(ready_reason),
            ready_msg,
            prev,
            now,
        ),
        condition("PodScheduled", true, None, None, prev, now),
    ];
    PodStatus {
        phase: Some(phase.to_owned()),
        host_ip: Some(obs.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: obs.host_ip.clone(),
        }]),
        pod_ip: obs.pod_ip.clone(),
        pod_ips: obs.pod_ip.as_ref().map(|ip| vec![PodIP { ip: ip.clone() }]),
        start_time: Some(time(obs.start_time)),
        conditions: Some(conditions),
        container_statuses: Some(obs.containers.iter().map(container_status).collect()),
        ..PodStatus::default()
    }
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
