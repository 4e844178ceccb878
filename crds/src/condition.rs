//! Condition merging for both statuses (the operator's mesh status, the agent's peer status):
//! a condition as decided ([`Cond`]) becomes a Kubernetes `Condition` whose
//! `lastTransitionTime` moves only when its status flips (that is what the field means).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as decided now, before timestamps. `ok` is the status (`True` when set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Cond {
    pub fn new(type_: &'static str, ok: bool, reason: &str, message: impl Into<String>) -> Cond {
        Cond {
            type_,
            ok,
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn status(&self) -> &'static str {
        if self.ok { "True" } else { "False" }
    }
}

/// `c` as a `Condition`: `lastTransitionTime` from the condition of its type in `old` when
/// that one has the same status, else `now`; reason, message and observedGeneration are new.
pub fn condition(old: &[Condition], c: &Cond, generation: Option<i64>, now: &Time) -> Condition {
    let status = c.status();
    let last_transition_time = old
        .iter()
        .find(|o| o.type_ == c.type_ && o.status == status)
        .map(|o| o.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: c.type_.into(),
        status: status.into(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Sets `c` in `conditions`, keeping the other types; the list stays sorted by type.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    c: &Cond,
    generation: Option<i64>,
    now: &Time,
) {
    let new = condition(conditions, c, generation, now);
    conditions.retain(|x| x.type_ != c.type_);
    conditions.push(new);
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Exactly `decided`, as conditions sorted by type, with transition times carried over from
/// `old` (types not decided now are dropped).
pub fn conditions(
    old: &[Condition],
    decided: impl IntoIterator<Item = Cond>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = (decided.into_iter())
        .map(|c| condition(old, &c, generation, now))
        .collect();
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let mut list = Vec::new();
        set_condition(
            &mut list,
            &Cond::new("B", true, "Up", "up"),
            Some(1),
            &t(10),
        );
        set_condition(
            &mut list,
            &Cond::new("A", false, "No", "no"),
            Some(1),
            &t(10),
        );
        // (condition, now, expected status, expected transition time)
        let steps = [
            (Cond::new("B", true, "StillUp", "again"), 20, "True", 10),
            (Cond::new("B", false, "Down", "down"), 30, "False", 30),
            (Cond::new("B", false, "Down", "still"), 40, "False", 30),
            (Cond::new("B", true, "Up", "back"), 50, "True", 50),
        ];
        for (c, now, status, ltt) in steps {
            set_condition(&mut list, &c, Some(2), &t(now));
            let types: Vec<&str> = list.iter().map(|x| x.type_.as_str()).collect();
            assert_eq!(types, ["A", "B"], "other types kept, sorted");
            let b = &list[1];
            assert_eq!(
                (b.status.as_str(), b.last_transition_time.clone()),
                (status, t(ltt)),
                "{c:?}"
            );
            assert_eq!(
                (b.reason.as_str(), b.observed_generation),
                (c.reason.as_str(), Some(2))
            );
        }
        assert_eq!(list[0].last_transition_time, t(10), "A untouched");
    }

    #[test]
    fn conditions_are_exactly_the_decided_ones() {
        let old = conditions(
            &[],
            [
                Cond::new("Z", true, "r", "m"),
                Cond::new("Y", true, "r", "m"),
            ],
            None,
            &t(1),
        );
        let new = conditions(&old, [Cond::new("Z", true, "r", "m2")], Some(3), &t(5));
        assert_eq!(new.len(), 1, "Y is no longer decided");
        assert_eq!(new[0].last_transition_time, t(1));
        assert_eq!(new[0].observed_generation, Some(3));
    }
}
