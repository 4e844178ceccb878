//! Field ownership (`metadata.managedFields`) and server-side apply.

use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::fieldset::{self, FieldSet, Path, Scope};
use super::resources::ResourceInfo;
use super::util;

/// One `managedFields` entry.
#[derive(Debug, Clone)]
pub struct ManagedEntry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: FieldSet,
}

pub fn read_managed(obj: &Value) -> Vec<ManagedEntry> {
    let s = |e: &Value, k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| ManagedEntry {
            manager: s(e, "manager"),
            operation: s(e, "operation"),
            api_version: s(e, "apiVersion"),
            time: s(e, "time"),
            subresource: s(e, "subresource"),
            fields: FieldSet::from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null)),
        })
        .collect()
}

pub fn write_managed(obj: &mut Value, entries: &[ManagedEntry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": e.fields.to_fields_v1(),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    let m = util::meta_mut(obj);
    if list.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(list));
    }
}

fn entry_mut<'a>(
    entries: &'a mut Vec<ManagedEntry>,
    manager: &str,
    op: &str,
    sub: &str,
) -> &'a mut ManagedEntry {
    let pos = entries
        .iter()
        .position(|e| e.manager == manager && e.operation == op && e.subresource == sub);
    let pos = pos.unwrap_or_else(|| {
        entries.push(ManagedEntry {
            manager: manager.into(),
            operation: op.into(),
            api_version: String::new(),
            time: String::new(),
            subresource: sub.into(),
            fields: FieldSet::default(),
        });
        entries.len() - 1
    });
    &mut entries[pos]
}

/// Drops from every entry the paths that no longer exist in `obj`.
fn retain_existing(entries: &mut Vec<ManagedEntry>, obj: &Value) {
    for e in entries.iter_mut() {
        e.fields.0.retain(|p| fieldset::value_at(obj, p).is_some());
    }
    entries.retain(|e| !e.fields.is_empty());
}

/// Records a non-apply write (create, update, patch) by `manager`: it takes ownership of every
/// field it added or changed; fields it removed are dropped from all managers.
pub fn record_update(
    ri: &ResourceInfo,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    scope: Scope,
) {
    let set = FieldSet::of_object(new, &ri.structure, scope);
    let changed: Vec<Path> = set
        .0
        .iter()
        .filter(|p| match old {
            None => true,
            Some(o) => {
                fieldset::value_at(o, p) != fieldset::value_at(new, p) || {
                    let item = p.last().is_some_and(|e| !e.starts_with("f:"));
                    item && fieldset::value_at(o, p).is_none()
                }
            }
        })
        .cloned()
        .collect();
    let mut entries = old.map(read_managed).unwrap_or_default();
    for e in entries.iter_mut() {
        for p in &changed {
            e.fields.0.remove(p);
        }
    }
    if !changed.is_empty() {
        let e = entry_mut(&mut entries, manager, "Update", scope.subresource());
        e.fields.0.extend(changed);
        e.api_version = ri.api_version();
        e.time = util::now_rfc3339();
    }
    retain_existing(&mut entries, new);
    write_managed(new, &entries);
}

/// Restricts an object to a scope (keeps apiVersion, kind, metadata).
pub fn scoped(obj: &Value, scope: Scope) -> Value {
    let mut out = obj.clone();
    if let Some(m) = out.as_object_mut() {
        m.retain(|k, _| {
            matches!(k.as_str(), "apiVersion" | "kind" | "metadata") || scope.includes(k)
        });
        if scope == Scope::OnlyStatus
            && let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut)
        {
            md.retain(|k, _| matches!(k.as_str(), "name" | "namespace"));
        }
    }
    out
}

/// Server-side apply of `applied` by `manager` onto `live` (or onto an empty object when it
/// does not exist yet). Returns the new object with updated `managedFields`.
pub fn apply(
    ri: &ResourceInfo,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    scope: Scope,
) -> Result<Value, ApiError> {
    let st = &ri.structure;
    let mut a = scoped(applied, scope);
    if let Some(md) = a.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "resourceVersion",
            "managedFields",
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
        ] {
            md.remove(k);
        }
    }
    let set_a = FieldSet::of_object(&a, st, scope);
    let mut l = live.cloned().unwrap_or_else(|| {
        json!({"apiVersion": ri.api_version(), "kind": ri.kind,
            "metadata": {"name": util::meta_name(applied), "namespace": util::meta_namespace(applied)}})
    });
    let mut entries = read_managed(&l);
    let sub = scope.subresource();

    // Conflicts: fields another manager owns with a different value.
    let mut conflicts: Vec<(usize, Path)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.manager == manager {
            continue;
        }
        for p in set_a.0.intersection(&e.fields.0) {
            if set_a.has_children(p) {
                continue;
            }
            if fieldset::value_at(&l, p) != fieldset::value_at(&a, p) {
                conflicts.push((i, p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let causes: Vec<Cause> = conflicts
            .iter()
            .map(|(i, p)| Cause {
                reason: "FieldManagerConflict".into(),
                message: format!(
                    "conflict with \"{}\" using {}",
                    entries[*i].manager, entries[*i].api_version
                ),
                field: fieldset::display_path(p),
            })
            .collect();
        let n = causes.len();
        let lines: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.message, c.field))
            .collect();
        let mut err = ApiError::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {n} conflict{}: {}",
                if n == 1 { "" } else { "s" },
                lines.join("\n")
            ),
        );
        err.causes = causes;
        err.details = Some(Box::new((
            ri.group.clone(),
            ri.resource.clone(),
            util::meta_name(applied).to_string(),
        )));
        return Err(err);
    }
    for (i, p) in &conflicts {
        entries[*i].fields.0.remove(p);
    }

    // Fields this manager applied before but no longer does, owned by nobody else, go away.
    let prev = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply" && e.subresource == sub)
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others: Vec<&ManagedEntry> = entries
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply" && e.subresource == sub))
        .collect();
    let owned_by_other = |p: &[String]| {
        others
            .iter()
            .any(|e| e.fields.0.iter().any(|q| q.as_slice() == p))
    };
    let removed: Vec<&Path> = prev
        .0
        .difference(&set_a.0)
        .filter(|p| !owned_by_other(p))
        .collect();
    let keep = |p: &[String]| owned_by_other(p) || set_a.0.iter().any(|q| q.as_slice() == p);
    for p in removed.iter().rev() {
        fieldset::remove_at(&mut l, p, &keep);
    }

    fieldset::merge(&mut l, &a, "", st);

    let e = entry_mut(&mut entries, manager, "Apply", sub);
    e.fields = set_a;
    e.api_version = ri.api_version();
    e.time = util::now_rfc3339();
    retain_existing(&mut entries, &l);
    write_managed(&mut l, &entries);
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;

    fn cm() -> ResourceInfo {
        builtins()
            .into_iter()
            .find(|r| r.kind == "ConfigMap")
            .unwrap()
    }

    #[test]
    fn apply_conflict_force_and_removal() {
        let ri = cm();
        let a1 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1", "y": "2"}});
        let o = apply(&ri, None, &a1, "m1", false, Scope::All).unwrap();
        // Same value from another manager: shared, no conflict.
        let a2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1"}});
        let o = apply(&ri, Some(&o), &a2, "m2", false, Scope::All).unwrap();
        // m1 stops applying x and y: y goes, x stays (m2 owns it).
        let a3 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"z": "3"}});
        let o = apply(&ri, Some(&o), &a3, "m1", false, Scope::All).unwrap();
        assert_eq!(o["data"], json!({"x": "1", "z": "3"}));
        // m2 changes z, which m1 owns: conflict unless forced.
        let a4 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1", "z": "4"}});
        let err = apply(&ri, Some(&o), &a4, "m2", false, Scope::All).unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(err.causes[0].field, ".data.z");
        let o = apply(&ri, Some(&o), &a4, "m2", true, Scope::All).unwrap();
        assert_eq!(o["data"]["z"], "4");
        let m1 = read_managed(&o).into_iter().find(|e| e.manager == "m1");
        assert!(m1.is_none(), "m1 lost its only field");
    }

    #[test]
    fn update_takes_ownership() {
        let ri = cm();
        let a1 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"x": "1"}});
        let o = apply(&ri, None, &a1, "m1", false, Scope::All).unwrap();
        let mut n = o.clone();
        n["data"]["x"] = json!("2");
        record_update(&ri, Some(&o), &mut n, "editor", Scope::All);
        let ms = read_managed(&n);
        assert_eq!(ms.len(), 1);
        assert_eq!(ms[0].manager, "editor");
        assert_eq!(ms[0].operation, "Update");
    }
}
