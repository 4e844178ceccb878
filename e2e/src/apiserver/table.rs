//! `meta.k8s.io/v1` Table output with printer columns, and the JSONPath subset they use:
//! `.a.b`, `.a[0]`, `.a[*]`, `.a[?(@.k=='v')].b` (also `==`/`!=` with numbers), optional `{}`.

use serde_json::{Value, json};

use super::resources::{PrinterColumn, ResourceInfo};
use super::util;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    Filter {
        path: Vec<String>,
        eq: bool,
        value: Value,
    },
}

fn parse(path: &str) -> Vec<Step> {
    let p = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut steps = Vec::new();
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end > 0 {
                steps.push(Step::Field(r[..end].to_string()));
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').unwrap_or(r.len());
            let inner = &r[..end];
            rest = r.get(end + 1..).unwrap_or("");
            if inner == "*" {
                steps.push(Step::All);
            } else if let Ok(i) = inner.parse() {
                steps.push(Step::Index(i));
            } else if let Some(f) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (lhs, eq, rhs) = if let Some((l, r)) = f.split_once("!=") {
                    (l, false, r)
                } else if let Some((l, r)) = f.split_once("==") {
                    (l, true, r)
                } else {
                    (f, true, "")
                };
                let rhs = rhs.trim();
                let value = if (rhs.starts_with('\'') || rhs.starts_with('"')) && rhs.len() >= 2 {
                    json!(rhs[1..rhs.len() - 1])
                } else {
                    serde_json::from_str(rhs).unwrap_or(json!(rhs))
                };
                steps.push(Step::Filter {
                    path: lhs.trim().split('.').map(String::from).collect(),
                    eq,
                    value,
                });
            }
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            steps.push(Step::Field(rest[..end].to_string()));
            rest = &rest[end..];
        }
    }
    steps
}

/// All values a JSONPath selects.
pub fn eval<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut cur = vec![obj];
    for step in parse(path) {
        let mut next = Vec::new();
        for v in cur {
            match &step {
                Step::Field(f) => next.extend(v.get(f)),
                Step::Index(i) => next.extend(v.get(*i)),
                Step::All => next.extend(v.as_array().into_iter().flatten()),
                Step::Filter { path, eq, value } => {
                    for item in v.as_array().into_iter().flatten() {
                        let mut x = Some(item);
                        for seg in path {
                            x = x.and_then(|x| x.get(seg));
                        }
                        if (x == Some(value)) == *eq {
                            next.push(item);
                        }
                    }
                }
            }
        }
        cur = next;
    }
    cur
}

fn cell(obj: &Value, c: &PrinterColumn) -> Value {
    let Some(v) = eval(obj, &c.json_path).into_iter().next() else {
        return Value::Null;
    };
    match c.type_.as_str() {
        "date" => v
            .as_str()
            .map(|s| json!(util::human_age(s)))
            .unwrap_or(Value::Null),
        "integer" | "number" | "boolean" => v.clone(),
        _ => match v {
            Value::String(_) => v.clone(),
            other => json!(other.to_string()),
        },
    }
}

/// What rows carry in `object` (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

fn row(ri: &ResourceInfo, obj: &Value, include: IncludeObject) -> Value {
    let mut cells = vec![json!(util::meta_name(obj))];
    cells.extend(ri.printer_columns.iter().map(|c| cell(obj, c)));
    let mut r = json!({"cells": cells});
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => r["object"] = obj.clone(),
        IncludeObject::Metadata => {
            let mut md = obj.get("metadata").cloned().unwrap_or(json!({}));
            if let Some(m) = md.as_object_mut() {
                m.remove("managedFields");
            }
            r["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": md});
        }
    }
    r
}

/// A Table of objects.
pub fn table(
    ri: &ResourceInfo,
    objs: &[Value],
    rv: &str,
    cont: Option<&str>,
    include: IncludeObject,
) -> Value {
    let mut defs = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace.", "priority": 0})];
    defs.extend(ri.printer_columns.iter().map(|c| {
        json!({"name": c.name, "type": if c.type_ == "date" { "string" } else { c.type_.as_str() },
            "format": c.format, "description": c.description, "priority": c.priority})
    }));
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": defs,
        "rows": objs.iter().map(|o| row(ri, o, include)).collect::<Vec<_>>(),
    })
}

/// Whether an Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_subset() {
        let o = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}],
            "n": 3}, "spec": {"list": [1, 2]}});
        assert_eq!(
            eval(&o, ".status.conditions[?(@.type=='Ready')].status"),
            vec![&json!("True")]
        );
        assert_eq!(eval(&o, "{.status.n}"), vec![&json!(3)]);
        assert_eq!(eval(&o, ".spec.list[1]"), vec![&json!(2)]);
        assert_eq!(eval(&o, ".spec.list[*]").len(), 2);
        assert!(eval(&o, ".spec.missing").is_empty());
    }
}
