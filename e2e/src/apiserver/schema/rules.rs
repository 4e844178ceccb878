//! `x-kubernetes-validations`: CEL rules evaluated with `self` (and `oldSelf`) bound to a node.

use std::sync::Arc;

use cel::Value as CelValue;
use cel::objects::{Key, Map, OptionalValue};
use serde_json::Value;

use super::compile::{Node, Rule, Type};
use super::{FieldError, FieldErrorReason};
use crate::apiserver::cel::json_to_value;

/// Converts `value` to CEL guided by its schema: `number` fields become `double` even when written
/// as integers, as Kubernetes does.
pub(super) fn to_cel(node: Option<&Node>, value: &Value) -> CelValue {
    let Some(node) = node else {
        return json_to_value(value);
    };
    match value {
        Value::Number(n) if node.ty == Some(Type::Number) => {
            CelValue::Float(n.as_f64().unwrap_or(f64::NAN))
        }
        Value::Array(items) => CelValue::List(Arc::new(
            items
                .iter()
                .map(|v| to_cel(node.items.as_deref(), v))
                .collect(),
        )),
        Value::Object(fields) => {
            let map = fields
                .iter()
                .map(|(k, v)| {
                    let sub = node
                        .properties
                        .get(k)
                        .or(node.additional_properties.as_deref());
                    (Key::String(Arc::new(k.clone())), to_cel(sub, v))
                })
                .collect();
            CelValue::Map(Map { map: Arc::new(map) })
        }
        other => json_to_value(other),
    }
}

/// The name Kubernetes shows as the "value" of a failed rule: the node's type.
fn type_name(node: &Node, value: &Value) -> &'static str {
    if let Some(ty) = node.ty {
        return ty.name();
    }
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Joins a rule's `fieldPath` (`.a.b`, `['x']`, `[0]`) onto the node's path.
fn join_field_path(path: &str, field_path: Option<&str>) -> String {
    let Some(fp) = field_path.map(str::trim).filter(|fp| !fp.is_empty()) else {
        return path.to_string();
    };
    let joined = if fp.starts_with('.') || fp.starts_with('[') {
        format!("{path}{fp}")
    } else {
        format!("{path}.{fp}")
    };
    joined.trim_start_matches('.').to_string()
}

pub(super) fn error_body(reason: FieldErrorReason, shown_value: &str, detail: &str) -> String {
    match reason {
        FieldErrorReason::Required => format!("Required value: {detail}"),
        FieldErrorReason::Forbidden => format!("Forbidden: {detail}"),
        FieldErrorReason::Duplicate => format!("Duplicate value: {shown_value}: {detail}"),
        FieldErrorReason::NotSupported => format!("Unsupported value: {shown_value}: {detail}"),
        FieldErrorReason::TooLong => format!("Too long: {detail}"),
        FieldErrorReason::TooMany => format!("Too many: {shown_value}: {detail}"),
        FieldErrorReason::Invalid => format!("Invalid value: {shown_value}: {detail}"),
    }
}

/// Evaluates `node`'s rules against `value`; `old` is the correlated old value (updates only).
pub(super) fn check(
    node: &Node,
    value: &Value,
    old: Option<&Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    if node.rules.is_empty() {
        return;
    }
    let shown = format!("\"{}\"", type_name(node, value));
    let self_value = to_cel(Some(node), value);
    for rule in &node.rules {
        if rule.transition && old.is_none() && !rule.optional_old_self {
            continue;
        }
        let mut vars = vec![("self", self_value.clone())];
        if rule.transition {
            let old_value = old.map(|o| to_cel(Some(node), o));
            let bound = if rule.optional_old_self {
                CelValue::Opaque(Arc::new(match old_value {
                    Some(v) => OptionalValue::of(v),
                    None => OptionalValue::none(),
                }))
            } else {
                old_value.unwrap_or(CelValue::Null)
            };
            vars.push(("oldSelf", bound));
        }
        match rule.program.eval_bool(&vars) {
            Ok(true) => {}
            Ok(false) => {
                let detail = failure_message(rule, &vars);
                errors.push(FieldError {
                    path: join_field_path(path, rule.field_path.as_deref()),
                    reason: rule.reason,
                    message: error_body(rule.reason, &shown, &detail),
                });
            }
            Err(e) => errors.push(FieldError {
                path: path.to_string(),
                reason: FieldErrorReason::Invalid,
                message: error_body(
                    FieldErrorReason::Invalid,
                    &shown,
                    &format!(
                        "rule {:?} could not be evaluated: {e}",
                        rule.program.expression()
                    ),
                ),
            }),
        }
    }
}

/// `messageExpression` if it yields a non-empty string, else `message`, else "failed rule: ...".
fn failure_message(rule: &Rule, vars: &[(&str, CelValue)]) -> String {
    if let Some(expr) = &rule.message_expression
        && let Ok(msg) = expr.eval_string(vars)
        && !msg.trim().is_empty()
    {
        return msg;
    }
    match &rule.message {
        Some(m) if !m.is_empty() => m.clone(),
        _ => format!("failed rule: {}", rule.program.expression()),
    }
}
