//! Kubernetes label and toleration syntax (the rules of `IsQualifiedName`, `IsValidLabelValue`
//! and `ValidateTolerations` in k8s.io/apimachinery and k8s.io/kubernetes), so a bad relay
//! placement is reported on the mesh instead of as a rejected Deployment.

use k8s_openapi::api::core::v1::Toleration;

use super::{Problem, problem};

const LABEL_FIX: &str = "label keys are [prefix/]name: name 1-63 characters [A-Za-z0-9-_.] starting and ending alphanumeric, optional prefix a lowercase DNS subdomain; values 0-63 characters of the same set";

/// Why `key` is not a valid label key, or `None`.
pub fn label_key_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        return Some(format!(
            "prefix {p:?} is not a lowercase DNS subdomain of at most 253 characters"
        ));
    }
    if name.is_empty() {
        return Some("the name part is empty".into());
    }
    if !is_label_name(name) {
        return Some(format!(
            "name {name:?} is not 1-63 characters [A-Za-z0-9-_.] starting and ending alphanumeric"
        ));
    }
    None
}

/// Why `value` is not a valid label value, or `None` (the empty value is valid).
pub fn label_value_error(value: &str) -> Option<String> {
    (!value.is_empty() && !is_label_name(value)).then(|| {
        format!("{value:?} is not 0-63 characters [A-Za-z0-9-_.] starting and ending alphanumeric")
    })
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

fn is_dns_subdomain(s: &str) -> bool {
    let label = |l: &str| {
        let b = l.as_bytes();
        (1..=63).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    (1..=253).contains(&s.len()) && s.split('.').all(label)
}

/// Problems of a label map at `field` (each named `field["key"]`).
pub fn check_labels<'a>(
    field: &str,
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    problems: &mut Vec<Problem>,
) {
    for (k, v) in labels {
        let why = match (label_key_error(k), label_value_error(v)) {
            (Some(e), _) => format!("key {k:?}: {e}"),
            (None, Some(e)) => format!("value {e}"),
            (None, None) => continue,
        };
        problems.push(problem(format!("{field}[{k:?}]"), why, LABEL_FIX));
    }
}

const EFFECTS: [&str; 4] = ["", "NoSchedule", "PreferNoSchedule", "NoExecute"];

/// Problems of a pod's tolerations at `field` (each named `field[i].<attribute>`).
pub fn check_tolerations(field: &str, tolerations: &[Toleration], problems: &mut Vec<Problem>) {
    for (i, t) in tolerations.iter().enumerate() {
        let at = |attr: &str| format!("{field}[{i}].{attr}");
        let key = t.key.as_deref().unwrap_or("");
        let op = t.operator.as_deref().unwrap_or("");
        let value = t.value.as_deref().unwrap_or("");
        let effect = t.effect.as_deref().unwrap_or("");
        if let Some(e) = (!key.is_empty()).then(|| label_key_error(key)).flatten() {
            problems.push(problem(at("key"), format!("{key:?}: {e}"), LABEL_FIX));
        }
        match op {
            "Exists" if !value.is_empty() => problems.push(problem(
                at("value"),
                "must be empty when operator is Exists",
                "remove value, or use operator: Equal",
            )),
            "Exists" => {}
            "" | "Equal" if key.is_empty() => problems.push(problem(
                at("operator"),
                "an empty key (match every taint) needs operator: Exists",
                "set operator: Exists, or name the taint key",
            )),
            "" | "Equal" => {
                if let Some(e) = label_value_error(value) {
                    problems.push(problem(at("value"), e, LABEL_FIX));
                }
            }
            other => problems.push(problem(
                at("operator"),
                format!("{other:?} is not a toleration operator"),
                "use Equal (the default) or Exists",
            )),
        }
        if !EFFECTS.contains(&effect) {
            problems.push(problem(
                at("effect"),
                format!("{effect:?} is not a taint effect"),
                "use NoSchedule, PreferNoSchedule or NoExecute, or leave it empty to match all",
            ));
        }
        if t.toleration_seconds.is_some() && effect != "NoExecute" {
            problems.push(problem(
                at("tolerationSeconds"),
                "only applies to effect NoExecute",
                "set effect: NoExecute or remove tolerationSeconds",
            ));
        }
    }
}
