//! Field sets as used by `managedFields` (`FieldsV1`): paths of `f:<field>`, `k:<key json>`,
//! `v:<value json>` and `i:<index>` elements, with `.` marking a node that is itself owned.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::resources::{ListKind, Structure};

pub type Path = Vec<String>;

/// Which part of an object a write covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (kinds without a status subresource).
    All,
    /// The main endpoint of a kind with a status subresource.
    ExceptStatus,
    /// The status subresource.
    OnlyStatus,
}

impl Scope {
    pub fn subresource(self) -> &'static str {
        if self == Scope::OnlyStatus {
            "status"
        } else {
            ""
        }
    }
    pub fn includes(self, top_field: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::ExceptStatus => top_field != "status",
            Scope::OnlyStatus => top_field == "status",
        }
    }
}

/// A set of field paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(pub BTreeSet<Path>);

const TRACKED_METADATA: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields an object sets, within a scope.
    pub fn of_object(obj: &Value, st: &Structure, scope: Scope) -> Self {
        let mut out = BTreeSet::new();
        if let Some(m) = obj.as_object() {
            for (k, v) in m {
                if k == "apiVersion" || k == "kind" || !scope.includes(k) {
                    continue;
                }
                if k == "metadata" {
                    for (mk, mv) in v.as_object().into_iter().flatten() {
                        if TRACKED_METADATA.contains(&mk.as_str()) {
                            let p = vec!["f:metadata".to_string(), format!("f:{mk}")];
                            walk(mv, p, &format!("metadata.{mk}"), st, &mut out);
                        }
                    }
                    continue;
                }
                walk(v, vec![format!("f:{k}")], k, st, &mut out);
            }
        }
        FieldSet(out)
    }

    pub fn from_fields_v1(v: &Value) -> Self {
        fn rec(node: &Map<String, Value>, prefix: &Path, out: &mut BTreeSet<Path>) {
            for (k, child) in node {
                if k == "." {
                    out.insert(prefix.clone());
                    continue;
                }
                let mut p = prefix.clone();
                p.push(k.clone());
                match child.as_object() {
                    Some(m) if !m.is_empty() => rec(m, &p, out),
                    _ => {
                        out.insert(p);
                    }
                }
            }
        }
        let mut out = BTreeSet::new();
        if let Some(m) = v.as_object() {
            rec(m, &Vec::new(), &mut out);
        }
        FieldSet(out)
    }

    pub fn to_fields_v1(&self) -> Value {
        #[derive(Default)]
        struct Node {
            member: bool,
            children: BTreeMap<String, Node>,
        }
        fn render(n: &Node) -> Value {
            let mut m = Map::new();
            if n.member && !n.children.is_empty() {
                m.insert(".".into(), Value::Object(Map::new()));
            }
            for (k, c) in &n.children {
                m.insert(k.clone(), render(c));
            }
            Value::Object(m)
        }
        let mut root = Node::default();
        for p in &self.0 {
            let mut n = &mut root;
            for e in p {
                n = n.children.entry(e.clone()).or_default();
            }
            n.member = true;
        }
        render(&root)
    }

    /// Whether a path has descendants in this set.
    pub fn has_children(&self, p: &Path) -> bool {
        self.0
            .range(p.clone()..)
            .nth(1)
            .is_some_and(|q| q.len() > p.len() && q.starts_with(p))
    }
}

fn walk(v: &Value, path: Path, sp: &str, st: &Structure, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() && !st.is_atomic_map(sp) => {
            for (k, c) in m {
                let mut p = path.clone();
                p.push(format!("f:{k}"));
                walk(c, p, &format!("{sp}.{k}"), st, out);
            }
        }
        Value::Array(items) => match st.list_kind(sp) {
            ListKind::Map(keys)
                if !keys.is_empty() && items.iter().all(|i| key_elem(i, &keys).is_some()) =>
            {
                for item in items {
                    let mut p = path.clone();
                    p.push(key_elem(item, &keys).expect("checked above"));
                    out.insert(p.clone());
                    for (k, c) in item.as_object().into_iter().flatten() {
                        let mut q = p.clone();
                        q.push(format!("f:{k}"));
                        walk(c, q, &format!("{sp}.{k}"), st, out);
                    }
                }
            }
            ListKind::Set => {
                for item in items {
                    let mut p = path.clone();
                    p.push(format!(
                        "v:{}",
                        serde_json::to_string(item).unwrap_or_default()
                    ));
                    out.insert(p);
                }
            }
            _ => {
                out.insert(path);
            }
        },
        _ => {
            out.insert(path);
        }
    }
}

/// The `k:` element of a list-map item, from its key fields (sorted by name).
pub fn key_elem(item: &Value, keys: &[String]) -> Option<String> {
    let m = item.as_object()?;
    let key: BTreeMap<&str, &Value> = keys
        .iter()
        .filter_map(|k| m.get(k).map(|v| (k.as_str(), v)))
        .collect();
    if key.is_empty() {
        return None;
    }
    Some(format!("k:{}", serde_json::to_string(&key).ok()?))
}

fn elem_matches(elem: &str, idx: usize, item: &Value) -> bool {
    if let Some(k) = elem.strip_prefix("k:") {
        let Ok(Value::Object(key)) = serde_json::from_str::<Value>(k) else {
            return false;
        };
        key.iter().all(|(f, v)| item.get(f) == Some(v))
    } else if let Some(v) = elem.strip_prefix("v:") {
        serde_json::from_str::<Value>(v).is_ok_and(|v| &v == item)
    } else if let Some(i) = elem.strip_prefix("i:") {
        i.parse::<usize>().is_ok_and(|i| i == idx)
    } else {
        false
    }
}

pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for e in path {
        cur = match (e.strip_prefix("f:"), cur) {
            (Some(f), Value::Object(m)) => m.get(f)?,
            (None, Value::Array(a)) => {
                a.iter()
                    .enumerate()
                    .find(|(i, it)| elem_matches(e, *i, it))?
                    .1
            }
            _ => return None,
        };
    }
    Some(cur)
}

fn value_at_mut<'a>(obj: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = obj;
    for e in path {
        cur = match (e.strip_prefix("f:"), cur) {
            (Some(f), Value::Object(m)) => m.get_mut(f)?,
            (None, Value::Array(a)) => {
                let pos = a
                    .iter()
                    .enumerate()
                    .position(|(i, it)| elem_matches(e, i, it))?;
                &mut a[pos]
            }
            _ => return None,
        };
    }
    Some(cur)
}

/// Removes the field at a path; map fields left empty by the removal are removed too, unless
/// they are top-level or `keep` says they are owned.
pub fn remove_at(obj: &mut Value, path: &[String], keep: &dyn Fn(&[String]) -> bool) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let Some(parent) = value_at_mut(obj, parent_path) else {
        return;
    };
    match (last.strip_prefix("f:"), parent) {
        (Some(f), Value::Object(m)) => {
            m.remove(f);
        }
        (None, Value::Array(a)) => {
            let mut i = 0;
            a.retain(|it| {
                let keep = !elem_matches(last, i, it);
                i += 1;
                keep
            });
        }
        _ => return,
    }
    if parent_path.len() >= 2
        && !keep(parent_path)
        && parent_path.last().is_some_and(|e| e.starts_with("f:"))
        && value_at(obj, parent_path).is_some_and(|v| v.as_object().is_some_and(Map::is_empty))
    {
        remove_at(obj, parent_path, keep);
    }
}

/// `.spec.containers[name="relay"].image` style rendering of a path.
pub fn display_path(path: &[String]) -> String {
    let mut s = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let inner = serde_json::from_str::<Map<String, Value>>(k)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            s.push_str(&format!("[{inner}]"));
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = e.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

/// Merges `applied` into `live`: maps by field, list-maps by key, sets by union, everything
/// else replaced; `null` removes a field.
pub fn merge(live: &mut Value, applied: &Value, sp: &str, st: &Structure) {
    match (live, applied) {
        (Value::Object(lm), Value::Object(am)) if !st.is_atomic_map(sp) => {
            for (k, av) in am {
                let sp2 = if sp.is_empty() {
                    k.clone()
                } else {
                    format!("{sp}.{k}")
                };
                if av.is_null() {
                    lm.remove(k);
                } else if let Some(lv) = lm.get_mut(k) {
                    merge(lv, av, &sp2, st);
                } else {
                    lm.insert(k.clone(), av.clone());
                }
            }
        }
        (Value::Array(la), Value::Array(aa)) => match st.list_kind(sp) {
            ListKind::Map(keys) if !keys.is_empty() => {
                for ai in aa {
                    let found = key_elem(ai, &keys).and_then(|e| {
                        la.iter()
                            .enumerate()
                            .position(|(i, li)| elem_matches(&e, i, li))
                    });
                    match found {
                        Some(pos) => merge(&mut la[pos], ai, sp, st),
                        None => la.push(ai.clone()),
                    }
                }
            }
            ListKind::Set => {
                for ai in aa {
                    if !la.contains(ai) {
                        la.push(ai.clone());
                    }
                }
            }
            _ => *la = aa.clone(),
        },
        (l, a) => *l = a.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn st() -> Structure {
        let mut s = Structure::default();
        s.lists
            .insert("spec.items".into(), ListKind::Map(vec!["name".into()]));
        s.lists.insert("metadata.finalizers".into(), ListKind::Set);
        s
    }

    #[test]
    fn fields_v1_round_trip() {
        let o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "labels": {"x": "1"},
            "finalizers": ["f"]}, "spec": {"a": 1, "items": [{"name": "n", "v": 2}], "empty": {}}});
        let fs = FieldSet::of_object(&o, &st(), Scope::All);
        let v1 = fs.to_fields_v1();
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:labels": {"f:x": {}}, "f:finalizers": {"v:\"f\"": {}}},
                "f:spec": {"f:a": {}, "f:empty": {}, "f:items": {"k:{\"name\":\"n\"}": {".": {}, "f:name": {}, "f:v": {}}}}})
        );
        assert_eq!(FieldSet::from_fields_v1(&v1), fs);
        let p: Path = vec!["f:spec".into(), "k:{\"name\":\"n\"}".into()];
        let p = [
            vec!["f:spec".to_string(), "f:items".to_string()],
            p[1..].to_vec(),
        ]
        .concat();
        assert_eq!(value_at(&o, &p), Some(&json!({"name": "n", "v": 2})));
        assert_eq!(display_path(&p), ".spec.items[name=\"n\"]");
    }

    #[test]
    fn remove_prunes_empty_maps() {
        let mut o = json!({"spec": {"a": {"b": 1}, "c": 2}});
        remove_at(
            &mut o,
            &["f:spec".into(), "f:a".into(), "f:b".into()],
            &|_| false,
        );
        assert_eq!(o, json!({"spec": {"c": 2}}));
    }

    #[test]
    fn merge_lists() {
        let mut l = json!({"spec": {"items": [{"name": "a", "v": 1}], "x": [1]}});
        merge(
            &mut l,
            &json!({"spec": {"items": [{"name": "a", "w": 2}, {"name": "b"}], "x": [2]}}),
            "",
            &st(),
        );
        assert_eq!(
            l,
            json!({"spec": {"items": [{"name": "a", "v": 1, "w": 2}, {"name": "b"}], "x": [2]}})
        );
    }
}
