//! JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch.

use serde_json::{Map, Value};

use super::error::ApiError;
use super::resources::{ListKind, Structure};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
            other => Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format ({other}) - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, \
                 application/strategic-merge-patch+json"
            ))),
        }
    }
}

pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let p: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(doc, &p).map_err(|e| {
        ApiError::new(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: {e}"),
        )
    })
}

pub fn merge_patch(doc: &mut Value, patch: &Value) {
    json_patch::merge(doc, patch);
}

/// Strategic merge patch. Lists with a merge key (from the kind's structure; the first key of
/// a list-map) merge by key, with `$patch: delete|replace|merge` directives on items and maps;
/// sets (finalizers) merge by union; `$deleteFromPrimitiveList/<f>` removes values;
/// `$setElementOrder/<f>` and `$retainKeys` are accepted (order is not changed; retainKeys
/// drops unlisted keys). Other lists are replaced.
pub fn strategic_merge(doc: &mut Value, patch: &Value, st: &Structure) -> Result<(), ApiError> {
    smp(doc, patch, "", st)
}

fn join(sp: &str, k: &str) -> String {
    if sp.is_empty() {
        k.to_string()
    } else {
        format!("{sp}.{k}")
    }
}

fn smp(doc: &mut Value, patch: &Value, sp: &str, st: &Structure) -> Result<(), ApiError> {
    let Some(pm) = patch.as_object() else {
        *doc = patch.clone();
        return Ok(());
    };
    match pm.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = pm.clone();
            m.remove("$patch");
            *doc = Value::Object(m);
            return Ok(());
        }
        Some("delete") => {
            *doc = Value::Object(Map::new());
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch directive $patch: {other}"
            )));
        }
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let dm = doc.as_object_mut().expect("made an object");
    if let Some(keys) = pm.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        dm.retain(|k, _| keep.contains(&k.as_str()) || pm.contains_key(k));
    }
    for (k, pv) in pm {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(del)) = (dm.get_mut(field), pv.as_array()) {
                items.retain(|i| !del.contains(i));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(ApiError::bad_request(format!(
                "unsupported strategic merge patch directive {k}"
            )));
        }
        let sp2 = join(sp, k);
        if pv.is_null() {
            dm.remove(k);
            continue;
        }
        match (dm.get_mut(k), pv) {
            (Some(dv @ Value::Object(_)), Value::Object(_)) => smp(dv, pv, &sp2, st)?,
            (Some(Value::Array(da)), Value::Array(pa)) => merge_list(da, pa, &sp2, st)?,
            (_, Value::Object(_)) => {
                let mut fresh = Value::Object(Map::new());
                smp(&mut fresh, pv, &sp2, st)?;
                dm.insert(k.clone(), fresh);
            }
            (_, Value::Array(pa)) => {
                // No existing list: directives are dropped.
                let items: Vec<Value> = pa
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .cloned()
                    .collect();
                dm.insert(k.clone(), Value::Array(items));
            }
            _ => {
                dm.insert(k.clone(), pv.clone());
            }
        }
    }
    Ok(())
}

fn merge_list(da: &mut Vec<Value>, pa: &[Value], sp: &str, st: &Structure) -> Result<(), ApiError> {
    match st.list_kind(sp) {
        ListKind::Map(keys) if !keys.is_empty() => {
            let key = &keys[0];
            if pa
                .iter()
                .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
            {
                *da = pa
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .cloned()
                    .collect();
                return Ok(());
            }
            for item in pa {
                let kv = item.get(key);
                let pos = kv.and_then(|kv| da.iter().position(|d| d.get(key) == Some(kv)));
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(p) = pos {
                        da.remove(p);
                    }
                    continue;
                }
                match pos {
                    Some(p) => smp(&mut da[p], item, sp, st)?,
                    None => {
                        let mut fresh = Value::Object(Map::new());
                        smp(&mut fresh, item, sp, st)?;
                        da.push(fresh);
                    }
                }
            }
        }
        ListKind::Set => {
            for item in pa {
                if !da.contains(item) {
                    da.push(item.clone());
                }
            }
        }
        _ => *da = pa.to_vec(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;
    use serde_json::json;

    #[test]
    fn strategic_containers_by_name() {
        let st = builtins()
            .into_iter()
            .find(|r| r.kind == "Deployment")
            .unwrap()
            .structure;
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "E", "value": "1"}]},
            {"name": "b", "image": "y"}]}}}});
        let p = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "x2", "env": [{"name": "F", "value": "2"}]},
            {"name": "b", "$patch": "delete"},
            {"name": "c", "image": "z"}]}}}});
        strategic_merge(&mut d, &p, &st).unwrap();
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "x2", "env": [{"name": "E", "value": "1"}, {"name": "F", "value": "2"}]},
                {"name": "c", "image": "z"}])
        );
    }

    #[test]
    fn strategic_null_and_finalizers() {
        let st = builtins()
            .into_iter()
            .find(|r| r.kind == "Lease")
            .unwrap()
            .structure;
        let mut d = json!({"metadata": {"finalizers": ["a"]}, "spec": {"holderIdentity": "x", "leaseDurationSeconds": 5}});
        let p = json!({"metadata": {"finalizers": ["b"]}, "spec": {"holderIdentity": null}});
        strategic_merge(&mut d, &p, &st).unwrap();
        assert_eq!(
            d,
            json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"leaseDurationSeconds": 5}})
        );
    }
}
