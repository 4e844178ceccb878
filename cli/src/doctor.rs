//! `kubectl wirekube doctor`: health checks computed only from what the API holds (CRDs,
//! the mesh and peer statuses, the operator's Lease, the workloads), each failure with a fix.
//! No probes from this machine: the agents' own reports say whether the relay and STUN answer
//! from where it matters, the nodes.

use jiff::Timestamp;
use serde::Serialize;
use wirekube_crds::{WireKubePeer, conditions};

use crate::snapshot::{
    AGENT_DAEMONSET, CRD_NAMES, OPERATOR_DEPLOYMENT, OPERATOR_LEASE, Snapshot, age_seconds,
    human_age, is_true, mesh_condition, peer_condition, peer_name,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    /// What to do about a warning or failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            level: Level::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn bad(
        name: &'static str,
        level: Level,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            level,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check, in the order a reader would fix them (API first, nodes last).
pub fn checks(s: &Snapshot, now: Timestamp) -> Vec<Check> {
    vec![
        crds(s),
        mesh(s),
        nodes_planned(s),
        operator(s, now),
        agents(s, now),
        relay(s),
        stun(s),
        keys(s),
        clock(s, now),
        mtu(s),
        engines(s),
    ]
}

/// Exit status of `doctor`: 1 when a check failed.
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.level == Level::Fail)
}

fn crds(s: &Snapshot) -> Check {
    const FIX: &str = "install the CRDs: kubectl apply --server-side -k config/crd (or the whole install, -k config/default)";
    if !s.crds_readable {
        return Check::bad(
            "crds",
            Level::Warn,
            "cannot read CustomResourceDefinitions with these credentials",
            "ask for get on customresourcedefinitions, or check with a cluster admin",
        );
    }
    let mut found = Vec::new();
    for name in CRD_NAMES {
        let Some(crd) = s
            .crds
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
        else {
            return Check::bad("crds", Level::Fail, format!("{name} is not installed"), FIX);
        };
        let established = crd
            .status
            .as_ref()
            .and_then(|st| st.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        let served: Vec<&str> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name.as_str())
            .collect();
        if !established {
            return Check::bad(
                "crds",
                Level::Fail,
                format!("{name} is not Established"),
                format!("kubectl describe crd {name}"),
            );
        }
        if !served.contains(&wirekube_crds::VERSION) {
            return Check::bad(
                "crds",
                Level::Fail,
                format!(
                    "{name} serves {} but this plugin reads {}",
                    served.join(", "),
                    wirekube_crds::VERSION
                ),
                "install the CRDs of the same release as the plugin (kubectl apply --server-side -k config/crd)",
            );
        }
        found.push(format!("{name} {}", served.join(",")));
    }
    Check::ok("crds", found.join("; "))
}

fn mesh(s: &Snapshot) -> Check {
    let Some(m) = &s.mesh else {
        return Check::bad(
            "mesh",
            Level::Fail,
            "no WireKubeMesh",
            "create one: kubectl apply -f config/samples/mesh-external-relay.yaml (see docs/operator.md)",
        );
    };
    let ready = mesh_condition(m, conditions::READY);
    let written = mesh_condition(m, conditions::PEERS_WRITTEN);
    if is_true(written) == Some(false) {
        let msg = written.map(|c| c.message.clone()).unwrap_or_default();
        return Check::bad(
            "mesh",
            Level::Fail,
            format!("the operator could not write every peer: {msg}"),
            format!(
                "kubectl -n {} logs deploy/{OPERATOR_DEPLOYMENT}",
                s.namespace
            ),
        );
    }
    match (is_true(ready), ready) {
        (Some(true), Some(c)) => {
            Check::ok("mesh", format!("{} Ready: {}", s.mesh_name(), c.message))
        }
        (Some(false), Some(c)) => Check::bad(
            "mesh",
            Level::Fail,
            format!("{} not Ready ({}): {}", s.mesh_name(), c.reason, c.message),
            "fix what the message names (kubectl describe wkmesh); InvalidSpec lists every bad field",
        ),
        _ => Check::bad(
            "mesh",
            Level::Fail,
            format!(
                "{} has no Ready condition: the operator has not reconciled it",
                s.mesh_name()
            ),
            "check that the operator runs (see the operator check)",
        ),
    }
}

/// Nodes the mesh selects that have no WireKubePeer: the operator has not planned them.
fn nodes_planned(s: &Snapshot) -> Check {
    let Some(m) = &s.mesh else {
        return Check::bad("nodes", Level::Warn, "no mesh", "see the mesh check");
    };
    let selected = s.nodes.iter().filter(|n| {
        let labels = n.metadata.labels.clone().unwrap_or_default();
        m.spec
            .node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    });
    let missing: Vec<String> = selected
        .filter_map(|n| n.metadata.name.clone())
        .filter(|n| s.peer(n).is_none())
        .collect();
    if !missing.is_empty() {
        return Check::bad(
            "nodes",
            Level::Warn,
            format!(
                "selected by the mesh but without a WireKubePeer: {}",
                missing.join(", ")
            ),
            "a node that just joined gets one within seconds; otherwise see the operator check and its logs",
        );
    }
    Check::ok(
        "nodes",
        format!(
            "{} nodes in the mesh, every selected node planned",
            s.peers.len()
        ),
    )
}

fn operator(s: &Snapshot, now: Timestamp) -> Check {
    let ns = &s.namespace;
    let logs = format!(
        "kubectl -n {ns} get pods -l app.kubernetes.io/name={OPERATOR_DEPLOYMENT}; kubectl -n {ns} logs deploy/{OPERATOR_DEPLOYMENT}"
    );
    let Some(spec) = s.lease.as_ref().and_then(|l| l.spec.as_ref()) else {
        return Check::bad(
            "operator",
            Level::Fail,
            format!("no leader: Lease {ns}/{OPERATOR_LEASE} not found"),
            logs,
        );
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec.renew_time.as_ref().map(|t| age_seconds(now, t.0));
    let fresh = renewed.is_some_and(|age| age <= duration);
    if holder.is_empty() || !fresh {
        let when = renewed.map_or("never".to_string(), |a| format!("{} ago", human_age(a)));
        return Check::bad(
            "operator",
            Level::Fail,
            format!(
                "no live leader: Lease held by {holder:?}, last renewed {when} (duration {duration}s)"
            ),
            logs,
        );
    }
    let available = s
        .operator
        .as_ref()
        .and_then(|d| d.status.as_ref())
        .and_then(|st| st.available_replicas)
        .unwrap_or(0);
    let replicas = s
        .operator
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|sp| sp.replicas)
        .unwrap_or(1);
    let detail = format!(
        "leader {holder} (renewed {} ago)",
        human_age(renewed.unwrap_or(0))
    );
    match &s.operator {
        None => Check::bad(
            "operator",
            Level::Warn,
            format!(
                "{detail}; Deployment {ns}/{OPERATOR_DEPLOYMENT} not found (operator runs elsewhere?)"
            ),
            "pass -n if WireKube is installed in another namespace",
        ),
        Some(_) if available < replicas => Check::bad(
            "operator",
            Level::Warn,
            format!("{detail}; {available}/{replicas} replicas available"),
            logs,
        ),
        Some(_) => Check::ok(
            "operator",
            format!("{detail}; {available}/{replicas} replicas available"),
        ),
    }
}

/// When the agent last wrote its status, by the API server's clock (managedFields).
pub fn agent_write_time(p: &WireKubePeer) -> Option<Timestamp> {
    p.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|f| f.manager.as_deref() == Some(wirekube_crds::AGENT_MANAGER))
        .filter_map(|f| f.time.as_ref().map(|t| t.0))
        .max()
}

/// The agent re-applies its status every heartbeat (60 s by default), but the API server
/// records a write only when the content changed; byte counters and handshakes normally
/// change it within minutes, an idle node may not. Hence a warning, not a failure.
const STALE_STATUS_SECS: i64 = 600;

/// Per node: the agent never reported or is not Ready (failures), or its status has not
/// changed for a long time (warnings).
fn agent_problems(s: &Snapshot, now: Timestamp) -> (Vec<String>, Vec<String>) {
    let (mut fails, mut stale) = (Vec::new(), Vec::new());
    for p in &s.peers {
        let name = peer_name(p);
        if p.status.is_none() {
            fails.push(format!("{name}: agent has not reported"));
            continue;
        }
        if is_true(peer_condition(p, conditions::READY)) != Some(true) {
            let why = peer_condition(p, conditions::DATAPLANE_READY)
                .map(|c| c.message.clone())
                .unwrap_or_else(|| "no Ready condition".into());
            fails.push(format!("{name}: not Ready ({why})"));
        } else if let Some(age) = agent_write_time(p).map(|t| age_seconds(now, t))
            && age > STALE_STATUS_SECS
        {
            stale.push(format!(
                "{name}: status unchanged for {} (agent gone, or an idle node)",
                human_age(age)
            ));
        }
    }
    (fails, stale)
}

fn agents(s: &Snapshot, now: Timestamp) -> Check {
    let ns = &s.namespace;
    let (problems, stale) = agent_problems(s, now);
    let ds = s.agents.as_ref().and_then(|d| d.status.as_ref());
    let pods = ds.map(|st| {
        format!(
            "; DaemonSet {}/{} pods ready",
            st.number_ready, st.desired_number_scheduled
        )
    });
    let fix = format!(
        "kubectl -n {ns} get pods -l app.kubernetes.io/name={AGENT_DAEMONSET} -o wide --field-selector spec.nodeName=<node>, then kubectl -n {ns} logs <pod>"
    );
    if s.peers.is_empty() {
        return Check::bad(
            "agents",
            Level::Fail,
            "no WireKubePeer: the operator has planned no node",
            "check the mesh's nodeSelector and the operator check",
        );
    }
    if !problems.is_empty() {
        return Check::bad(
            "agents",
            Level::Fail,
            format!("{}{}", problems.join("; "), pods.unwrap_or_default()),
            fix,
        );
    }
    if !stale.is_empty() {
        return Check::bad(
            "agents",
            Level::Warn,
            format!("{}{}", stale.join("; "), pods.unwrap_or_default()),
            fix,
        );
    }
    match ds {
        Some(st) if st.number_ready < st.desired_number_scheduled => Check::bad(
            "agents",
            Level::Warn,
            format!("every peer Ready{}", pods.unwrap_or_default()),
            fix,
        ),
        _ => Check::ok(
            "agents",
            format!(
                "{} of {} agents Ready{}",
                s.peers.len(),
                s.peers.len(),
                pods.unwrap_or_default()
            ),
        ),
    }
}

#[path = "doctor_nodes.rs"]
mod nodes;
use nodes::{clock, engines, keys, mtu, relay, stun};

#[cfg(test)]
#[path = "doctor_tests.rs"]
mod tests;

impl Check {
    fn line(&self) -> String {
        let tag = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        let mut out = format!("[{tag}] {:<9} {}\n", self.name, self.detail);
        if let Some(fix) = &self.fix {
            out.push_str(&format!("       {:<9} fix: {fix}\n", ""));
        }
        out
    }
}

/// Terminal rendering: one line per check, its fix under it, a summary last.
pub fn to_text(checks: &[Check]) -> String {
    let mut out: String = checks.iter().map(Check::line).collect();
    let count = |l| checks.iter().filter(|c| c.level == l).count();
    out.push_str(&format!(
        "\n{} ok, {} warnings, {} failures\n",
        count(Level::Ok),
        count(Level::Warn),
        count(Level::Fail)
    ));
    out
}

// Shared with doctor_nodes.rs.
fn names(list: &[String]) -> String {
    list.join("; ")
}
