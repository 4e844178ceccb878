use super::*;
use RestartPolicy::*;

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).unwrap()
}

fn running() -> State {
    State::Running {
        pid: 42,
        started_at: ts(1),
    }
}

fn exited(code: i32) -> State {
    State::Terminated {
        pid: 42,
        exit_code: code,
        signal: None,
        reason: if code == 0 { "Completed" } else { "Error" }.into(),
        started_at: ts(1),
        finished_at: ts(2),
    }
}

fn c(state: State, last: Option<State>, ready: bool) -> ContainerObs {
    ContainerObs {
        name: "c".into(),
        image: "img".into(),
        state,
        last,
        restart_count: 0,
        ready,
    }
}

fn creating() -> State {
    State::waiting("ContainerCreating", None)
}

#[test]
fn phase_table() {
    let backoff = State::waiting("CrashLoopBackOff", None);
    let cases = [
        (Always, vec![], "Pending"),
        (Always, vec![c(creating(), None, false)], "Pending"),
        (
            Always,
            vec![c(running(), None, true), c(creating(), None, false)],
            "Pending",
        ),
        (Always, vec![c(running(), None, false)], "Running"),
        (
            Always,
            vec![c(backoff.clone(), Some(exited(1)), false)],
            "Running",
        ),
        (Always, vec![c(exited(0), None, false)], "Running"),
        (Never, vec![c(exited(0), None, false)], "Succeeded"),
        (
            Never,
            vec![c(exited(0), None, false), c(exited(2), None, false)],
            "Failed",
        ),
        (
            Never,
            vec![c(exited(0), None, false), c(running(), None, true)],
            "Running",
        ),
        (OnFailure, vec![c(exited(0), None, false)], "Succeeded"),
        (OnFailure, vec![c(exited(1), None, false)], "Running"),
        (
            Never,
            vec![c(State::waiting("ErrImagePull", None), None, false)],
            "Pending",
        ),
    ];
    for (policy, containers, want) in cases {
        assert_eq!(
            phase(policy, &containers),
            want,
            "{policy:?} {containers:?}"
        );
    }
}

fn obs(containers: Vec<ContainerObs>) -> PodObs {
    PodObs {
        host_ip: "10.0.0.11".into(),
        pod_ip: Some("10.244.1.5".into()),
        start_time: ts(0),
        sandbox: Some(Ok(())),
        containers,
    }
}

fn cond<'a>(s: &'a PodStatus, kind: &str) -> &'a PodCondition {
    s.conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == kind)
        .unwrap()
}

#[test]
fn ready_pod_status() {
    let s = build(Always, &obs(vec![c(running(), None, true)]), None, ts(5));
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(s.pod_ip.as_deref(), Some("10.244.1.5"));
    assert_eq!(s.pod_ips.as_ref().unwrap()[0].ip, "10.244.1.5");
    assert_eq!(s.host_ip.as_deref(), Some("10.0.0.11"));
    for kind in [
        "PodScheduled",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodReadyToStartContainers",
    ] {
        assert_eq!(cond(&s, kind).status, "True", "{kind}");
    }
    let cs = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!(cs.container_id.as_deref(), Some("lab://42"));
    assert_eq!(
        (cs.ready, cs.started, cs.image_id.as_str()),
        (true, Some(true), "")
    );
    assert!(cs.state.as_ref().unwrap().running.is_some());
}

#[test]
fn unready_and_failed_sandbox() {
    let mut o = obs(vec![c(creating(), None, false)]);
    o.sandbox = Some(Err((
        "FailedCreatePodSandBox".into(),
        "CNI bridge ADD: boom".into(),
    )));
    o.pod_ip = None;
    let s = build(Always, &o, None, ts(5));
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    let sandbox = cond(&s, "PodReadyToStartContainers");
    assert_eq!(sandbox.status, "False");
    assert_eq!(sandbox.message.as_deref(), Some("CNI bridge ADD: boom"));
    let ready = cond(&s, "Ready");
    assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some("containers with unready status: [c]")
    );
    assert!(s.pod_ips.is_none());
}

#[test]
fn restarted_container_reports_last_state() {
    let mut restarted = c(running(), Some(exited(137)), true);
    restarted.restart_count = 1;
    let s = build(Always, &obs(vec![restarted]), None, ts(5));
    let cs = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!(cs.restart_count, 1);
    let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(last.exit_code, 137);
    assert_eq!(last.container_id.as_deref(), Some("lab://42"));
}

#[test]
fn transition_times_survive_unchanged_conditions() {
    let first = build(Always, &obs(vec![c(running(), None, false)]), None, ts(5));
    let same = build(
        Always,
        &obs(vec![c(running(), None, false)]),
        Some(&first),
        ts(9),
    );
    assert_eq!(cond(&same, "Ready").last_transition_time, Some(Time(ts(5))));
    let ready = build(
        Always,
        &obs(vec![c(running(), None, true)]),
        Some(&same),
        ts(12),
    );
    assert_eq!(
        cond(&ready, "Ready").last_transition_time,
        Some(Time(ts(12)))
    );
    assert_eq!(
        cond(&ready, "PodScheduled").last_transition_time,
        Some(Time(ts(5)))
    );
}

#[test]
fn completed_pod() {
    let s = build(Never, &obs(vec![c(exited(0), None, false)]), None, ts(5));
    assert_eq!(s.phase.as_deref(), Some("Succeeded"));
    assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
}
