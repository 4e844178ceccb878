//! Mesh status computation (pure); condition merging itself is `wirekube_crds::condition`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use wirekube_crds::condition::set_condition;
use wirekube_crds::conditions::{
    PEERS_WRITTEN, PUBLIC_KEYS_VALID, READY, RELAY_READY, ROUTES_CARRIED,
};
use wirekube_crds::{NodeCounts, Problem, WireKubeMeshStatus, WireKubePeerStatus};

use crate::plan::PlanOutcome;

pub use wirekube_crds::Cond;

/// Sets `c` in `conditions` (`wirekube_crds::condition::set_condition`): lastTransitionTime
/// moves only when the status flips; other types are kept, sorted by type.
pub fn merge_condition(conditions: &mut Vec<Condition>, c: &Cond, generation: i64, now: &Time) {
    set_condition(conditions, c, Some(generation), now);
}

/// One line naming every problem's field and fix.
pub fn problems_message(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}; fix: {}", p.field, p.message, p.fix))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Status for an invalid spec: only Ready (False, InvalidSpec) and observedGeneration change;
/// everything else (endpoints, counts, RelayReady) is the previous good state.
pub fn invalid_status(
    prev: Option<&WireKubeMeshStatus>,
    problems: &[Problem],
    generation: i64,
    now: &Time,
) -> WireKubeMeshStatus {
    let mut s = prev.cloned().unwrap_or_default();
    s.observed_generation = Some(generation);
    merge_condition(
        &mut s.conditions,
        &Cond::new(READY, false, "InvalidSpec", problems_message(problems)),
        generation,
        now,
    );
    s
}

/// Node counts from the selected nodes' statuses and the planner's pending list.
pub fn node_counts<'a>(
    total: usize,
    statuses: impl IntoIterator<Item = &'a WireKubePeerStatus>,
    pending: usize,
) -> NodeCounts {
    let ready = statuses
        .into_iter()
        .filter(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == READY && c.status == "True")
        })
        .count();
    NodeCounts {
        total: total as u32,
        ready: ready as u32,
        pending: pending as u32,
    }
}

/// The Ready condition after a successful plan.
pub fn ready_condition(outcome: &PlanOutcome, nodes: &NodeCounts) -> Cond {
    if let Some(first) = outcome.issues.first() {
        let msg = outcome
            .issues
            .iter()
            .map(|i| i.message.as_str())
            .collect::<Vec<_>>()
            .join(" | ");
        return Cond::new(READY, false, &first.reason, msg);
    }
    let mut msg = format!(
        "{} node(s) planned: {} direct, {} relay, {} down pair(s)",
        nodes.total, outcome.summary.direct, outcome.summary.relay, outcome.summary.down
    );
    if nodes.pending > 0 {
        msg.push_str(&format!(
            "; {} node(s) waiting for their agent's public key",
            nodes.pending
        ));
    }
    let quarantined = outcome.quarantined();
    if quarantined > 0 {
        msg.push_str(&format!(
            "; {quarantined} node(s) quarantined for their public key (see {PUBLIC_KEYS_VALID})"
        ));
    }
    Cond::new(READY, true, "Reconciled", msg)
}

/// `RoutesCarried`: True with the count, or False naming every prefix left out and why.
pub fn routes_condition(outcome: &PlanOutcome) -> Cond {
    if outcome.dropped_routes.is_empty() {
        return Cond::new(
            ROUTES_CARRIED,
            true,
            "AllCarried",
            format!(
                "{} prefix(es) besides the mesh IPs carried",
                outcome.carried_routes
            ),
        );
    }
    Cond::new(
        ROUTES_CARRIED,
        false,
        "PrefixesLeftOut",
        outcome.dropped_routes.join("; "),
    )
}

/// `PublicKeysValid`: True, or False with the first problem's reason and every problem
/// (each names its nodes).
pub fn keys_condition(outcome: &PlanOutcome) -> Cond {
    let Some(first) = outcome.key_problems.first() else {
        return Cond::new(
            PUBLIC_KEYS_VALID,
            true,
            "AllValid",
            "every node reported a well-formed public key of its own",
        );
    };
    let msg = outcome
        .key_problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" | ");
    Cond::new(PUBLIC_KEYS_VALID, false, first.reason(), msg)
}

/// `PeersWritten`: True, or False naming each node whose peer could not be written and why
/// (`failed`: node, error text; the other peers of the pass were written).
pub fn written_condition(failed: &[(String, String)]) -> Cond {
    if failed.is_empty() {
        return Cond::new(
            PEERS_WRITTEN,
            true,
            "AllWritten",
            "every planned peer is written",
        );
    }
    let msg = failed
        .iter()
        .map(|(n, e)| format!("{n}: {e}"))
        .collect::<Vec<_>>()
        .join(" | ");
    Cond::new(PEERS_WRITTEN, false, "WriteFailed", msg)
}

/// The full status after a successful reconcile.
pub fn computed_status(
    prev: Option<&WireKubeMeshStatus>,
    generation: i64,
    outcome: &PlanOutcome,
    nodes: NodeCounts,
    relay_endpoints: Vec<String>,
    relay: &Cond,
    now: &Time,
) -> WireKubeMeshStatus {
    let mut conditions = prev.map(|p| p.conditions.clone()).unwrap_or_default();
    merge_condition(
        &mut conditions,
        &ready_condition(outcome, &nodes),
        generation,
        now,
    );
    merge_condition(&mut conditions, relay, generation, now);
    merge_condition(&mut conditions, &routes_condition(outcome), generation, now);
    merge_condition(&mut conditions, &keys_condition(outcome), generation, now);
    WireKubeMeshStatus {
        observed_generation: Some(generation),
        conditions,
        relay_endpoints,
        nodes,
        paths: outcome.summary.clone(),
        pending_nodes: outcome.pending.clone(),
    }
}

/// Whether `RELAY_READY` is the type of `c` (helper for callers building relay conditions).
pub fn relay_cond(status: bool, reason: &str, message: impl Into<String>) -> Cond {
    Cond::new(RELAY_READY, status, reason, message)
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
