//! Value validation against a compiled schema: OpenAPI keywords, Kubernetes extensions, CEL rules.

use std::net::IpAddr;

use serde_json::Value;

use super::compile::{ListType, Node, Type};
use super::rules::{self, error_body};
use super::{FieldError, FieldErrorReason};

fn field(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// How Kubernetes shows a value in an error: JSON for scalars, the kind for compound values.
fn shown(value: &Value) -> String {
    match value {
        Value::Object(_) => "\"object\"".to_string(),
        Value::Array(_) => "\"array\"".to_string(),
        other => other.to_string(),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if is_integer(n) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(n: &serde_json::Number) -> bool {
    n.is_i64()
        || n.is_u64()
        || n.as_f64()
            .is_some_and(|f| f.fract() == 0.0 && f.is_finite())
}

struct Errors<'a>(&'a mut Vec<FieldError>);

impl Errors<'_> {
    fn push(&mut self, path: &str, reason: FieldErrorReason, value: &Value, detail: &str) {
        self.0.push(FieldError {
            path: path.to_string(),
            reason,
            message: error_body(reason, &shown(value), detail),
        });
    }
}

/// Validates `value` at `path`; `old` is the correlated old value on updates. A value deep-equal to
/// its old value is not re-validated (validation ratcheting, Kubernetes 1.30+ default).
pub(super) fn validate(
    node: &Node,
    value: &Value,
    old: Option<&Value>,
    path: &str,
    resource_root: bool,
    errors: &mut Vec<FieldError>,
) {
    if old == Some(value) {
        return;
    }
    let mut errs = Errors(errors);
    if value.is_null() {
        if !node.nullable
            && let Some(ty) = node.ty
        {
            let detail = format!(
                "{} in body must be of type {}: \"null\"",
                display(path),
                ty.name()
            );
            errs.push(
                path,
                FieldErrorReason::Invalid,
                &Value::String("null".into()),
                &detail,
            );
        }
        return;
    }
    if !type_matches(node, value) {
        let want = if node.int_or_string {
            "integer or string"
        } else {
            node.ty.map(Type::name).unwrap_or("any")
        };
        let got = json_type(value);
        let detail = format!(
            "{} in body must be of type {want}: \"{got}\"",
            display(path)
        );
        errs.push(
            path,
            FieldErrorReason::Invalid,
            &Value::String(got.into()),
            &detail,
        );
        return;
    }
    if let Some(allowed) = &node.enum_values
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        let detail = format!("supported values: {}", list.join(", "));
        errs.push(path, FieldErrorReason::NotSupported, value, &detail);
    }
    match value {
        Value::Number(n) => check_number(node, n, value, path, &mut errs),
        Value::String(s) => check_string(node, s, value, path, &mut errs),
        Value::Array(items) => check_array(node, items, old, path, errs.0),
        Value::Object(fields) => check_object(node, fields, old, path, resource_root, errs.0),
        _ => {}
    }
    check_combinators(node, value, path, errors);
    rules::check(node, value, old, path, errors);
}

fn display(path: &str) -> &str {
    if path.is_empty() { "body" } else { path }
}

fn type_matches(node: &Node, value: &Value) -> bool {
    if node.int_or_string {
        return matches!(value, Value::String(_))
            || matches!(value, Value::Number(n) if is_integer(n));
    }
    match (node.ty, value) {
        (None, _) => true,
        (Some(Type::Object), Value::Object(_))
        | (Some(Type::Array), Value::Array(_))
        | (Some(Type::String), Value::String(_))
        | (Some(Type::Number), Value::Number(_))
        | (Some(Type::Boolean), Value::Bool(_)) => true,
        (Some(Type::Integer), Value::Number(n)) => is_integer(n),
        _ => false,
    }
}

fn check_number(node: &Node, n: &serde_json::Number, value: &Value, path: &str, errs: &mut Errors) {
    let p = display(path);
    let f = n.as_f64().unwrap_or(f64::NAN);
    if let Some(min) = node.minimum {
        if node.exclusive_minimum && f <= min {
            errs.push(
                path,
                FieldErrorReason::Invalid,
                value,
                &format!("{p} in body should be greater than {min}"),
            );
        } else if f < min {
            let detail = format!("{p} in body should be greater than or equal to {min}");
            errs.push(path, FieldErrorReason::Invalid, value, &detail);
        }
    }
    if let Some(max) = node.maximum {
        if node.exclusive_maximum && f >= max {
            errs.push(
                path,
                FieldErrorReason::Invalid,
                value,
                &format!("{p} in body should be less than {max}"),
            );
        } else if f > max {
            let detail = format!("{p} in body should be less than or equal to {max}");
            errs.push(path, FieldErrorReason::Invalid, value, &detail);
        }
    }
    if let Some(m) = node.multiple_of.filter(|m| *m > 0.0) {
        let q = f / m;
        if (q - q.round()).abs() > 1e-9 {
            errs.push(
                path,
                FieldErrorReason::Invalid,
                value,
                &format!("{p} in body should be a multiple of {m}"),
            );
        }
    }
    let out_of_range = match node.format.as_deref() {
        Some("int32") => n.as_i64().is_none_or(|i| i32::try_from(i).is_err()),
        Some("int64") => n.as_i64().is_none() && !(f.fract() == 0.0 && f.abs() < 9.2e18),
        _ => false,
    };
    if out_of_range {
        let fmt = node.format.as_deref().unwrap_or_default();
        errs.push(
            path,
            FieldErrorReason::Invalid,
            value,
            &format!("{p} in body must be of type {fmt}"),
        );
    }
}

/// Whether `s` is valid for string `format`; unknown formats are accepted.
fn format_ok(format: &str, s: &str) -> bool {
    let hex = |c: char| c.is_ascii_hexdigit();
    match format {
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, len)| {
            let max = match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => 32,
                Ok(IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            len.parse::<u8>().is_ok_and(|l| l <= max)
        }),
        "uuid" => {
            let parts: Vec<&str> = s.split('-').collect();
            parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
                && parts.iter().all(|p| p.chars().all(hex))
        }
        "mac" => {
            let parts: Vec<&str> = s.split([':', '-']).collect();
            parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(hex))
        }
        "hostname" => {
            !s.is_empty()
                && s.len() <= 253
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        }
        "byte" => {
            s.len().is_multiple_of(4)
                && s.trim_end_matches('=')
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
        }
        "date" => s.len() == 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-',
        "date-time" | "datetime" => s.len() >= 20 && s.contains('T'),
        _ => true,
    }
}

fn check_string(node: &Node, s: &str, value: &Value, path: &str, errs: &mut Errors) {
    let p = display(path);
    let len = s.chars().count() as u64;
    if let Some(min) = node.min_length
        && len < min
    {
        let detail = format!("{p} in body should be at least {min} chars long");
        errs.push(path, FieldErrorReason::Invalid, value, &detail);
    }
    if let Some(max) = node.max_length
        && len > max
    {
        errs.push(
            path,
            FieldErrorReason::TooLong,
            value,
            &format!("may not be more than {max} bytes"),
        );
    }
    if let Some(re) = &node.pattern
        && !re.is_match(s)
    {
        let detail = format!("{p} in body should match '{}'", re.as_str());
        errs.push(path, FieldErrorReason::Invalid, value, &detail);
    }
    if let Some(fmt) = node.format.as_deref()
        && !format_ok(fmt, s)
    {
        let detail = format!("{p} in body must be of type {fmt}: {value}");
        errs.push(path, FieldErrorReason::Invalid, value, &detail);
    }
}

/// The key of a `listType: map` item: its map-key fields.
fn map_key(node: &Node, item: &Value) -> Value {
    let mut key = serde_json::Map::new();
    for k in &node.list_map_keys {
        key.insert(k.clone(), item.get(k).cloned().unwrap_or(Value::Null));
    }
    Value::Object(key)
}

fn check_array(
    node: &Node,
    items: &[Value],
    old: Option<&Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let mut errs = Errors(errors);
    let p = display(path);
    let len = items.len() as u64;
    let whole = Value::Number(len.into());
    if let Some(min) = node.min_items
        && len < min
    {
        let detail = format!("{p} in body should have at least {min} items");
        errs.push(path, FieldErrorReason::Invalid, &whole, &detail);
    }
    if let Some(max) = node.max_items
        && len > max
    {
        errs.push(
            path,
            FieldErrorReason::TooMany,
            &whole,
            &format!("must have at most {max} items"),
        );
    }
    let list_map = node.list_type == Some(ListType::Map);
    if node.unique_items || node.list_type == Some(ListType::Set) || list_map {
        for (i, item) in items.iter().enumerate() {
            let key = if list_map {
                map_key(node, item)
            } else {
                item.clone()
            };
            let seen = items[..i].iter().any(|prev| {
                if list_map {
                    map_key(node, prev) == key
                } else {
                    *prev == key
                }
            });
            if seen {
                errs.push(
                    &format!("{path}[{i}]"),
                    FieldErrorReason::Duplicate,
                    &key,
                    "duplicate entries",
                );
            }
        }
    }
    let Some(item_node) = node.items.as_deref() else {
        return;
    };
    let old_items = old.and_then(Value::as_array);
    for (i, item) in items.iter().enumerate() {
        // Only map lists correlate items with the old list (as for transition rules in Kubernetes).
        let old_item = old_items.filter(|_| list_map).and_then(|olds| {
            let key = map_key(node, item);
            olds.iter().find(|o| map_key(node, o) == key)
        });
        let item_path = format!("{path}[{i}]");
        validate(
            item_node,
            item,
            old_item,
            &item_path,
            item_node.embedded_resource,
            errors,
        );
    }
}

fn check_object(
    node: &Node,
    fields: &serde_json::Map<String, Value>,
    old: Option<&Value>,
    path: &str,
    resource_root: bool,
    errors: &mut Vec<FieldError>,
) {
    let mut errs = Errors(errors);
    let p = display(path);
    let count = fields.len() as u64;
    let whole = Value::Number(count.into());
    if let Some(min) = node.min_properties
        && count < min
    {
        let detail = format!("{p} in body should have at least {min} properties");
        errs.push(path, FieldErrorReason::Invalid, &whole, &detail);
    }
    if let Some(max) = node.max_properties
        && count > max
    {
        errs.push(
            path,
            FieldErrorReason::TooMany,
            &whole,
            &format!("must have at most {max} items"),
        );
    }
    for name in &node.required {
        if fields.get(name).is_none_or(|v| v.is_null()) {
            errs.0.push(FieldError {
                path: field(path, name),
                reason: FieldErrorReason::Required,
                message: "Required value".to_string(),
            });
        }
    }
    let old_fields = old.and_then(Value::as_object);
    for (name, v) in fields {
        if resource_root && name == "metadata" {
            continue;
        }
        let old_v = old_fields.and_then(|o| o.get(name));
        if let Some(sub) = node.properties.get(name) {
            validate(
                sub,
                v,
                old_v,
                &field(path, name),
                sub.embedded_resource,
                errors,
            );
        } else if let Some(sub) = node.additional_properties.as_deref() {
            validate(
                sub,
                v,
                old_v,
                &format!("{path}[{name}]"),
                sub.embedded_resource,
                errors,
            );
        }
    }
}

/// `allOf`, `anyOf`, `oneOf`, `not` (value validation only, as in structural schemas).
fn check_combinators(node: &Node, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let p = display(path);
    let passes = |sub: &Node| {
        let mut tmp = Vec::new();
        validate(sub, value, None, path, false, &mut tmp);
        tmp
    };
    for sub in &node.all_of {
        errors.extend(passes(sub));
    }
    let mut errs = Errors(errors);
    if !node.any_of.is_empty() && node.any_of.iter().all(|s| !passes(s).is_empty()) {
        let detail = format!("{p} in body must validate at least one schema (anyOf)");
        errs.push(path, FieldErrorReason::Invalid, value, &detail);
    }
    if !node.one_of.is_empty() {
        let ok = node.one_of.iter().filter(|s| passes(s).is_empty()).count();
        if ok != 1 {
            let detail =
                format!("{p} in body must validate one and only one schema (oneOf), {ok} matched");
            errs.push(path, FieldErrorReason::Invalid, value, &detail);
        }
    }
    if let Some(not) = node.not.as_deref()
        && passes(not).is_empty()
    {
        let detail = format!("{p} in body should not validate the schema (not)");
        errs.push(path, FieldErrorReason::Invalid, value, &detail);
    }
}
