//! Built-in defaulting and validation of the kinds this server knows, and CRD schema admission
//! of custom objects.

use std::collections::BTreeSet;

use base64::Engine;
use serde_json::{Value, json};

use super::error::{ApiError, Cause};
use super::resources::{self, ResourceInfo};
use super::store::Store;
use super::util;

/// How to treat fields a CRD schema does not declare (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    #[default]
    Ignore,
    Warn,
    Strict,
}

/// Defaults and checks for built-in kinds (create and update).
pub fn builtin(
    st: &mut Store,
    ri: &ResourceInfo,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    match (ri.group.as_str(), ri.kind.as_str()) {
        ("", "Secret") => {
            if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
                for (k, v) in sd.as_object().into_iter().flatten() {
                    let enc = base64::engine::general_purpose::STANDARD
                        .encode(v.as_str().unwrap_or_default());
                    obj["data"][k] = json!(enc);
                }
            }
            if obj.get("type").is_none() {
                obj["type"] = json!("Opaque");
            }
        }
        ("", "Namespace") => {
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
            if old.is_none() && obj.pointer("/spec/finalizers").is_none() {
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
            }
        }
        ("", "Service") => service(st, obj, old)?,
        ("", "Pod") if obj.pointer("/status/phase").is_none() => {
            obj["status"]["phase"] = json!("Pending");
        }
        ("apps", "Deployment") => {
            if obj.pointer("/spec/replicas").is_none() {
                obj["spec"]["replicas"] = json!(1);
            }
            let sel = obj.pointer("/spec/selector/matchLabels").cloned();
            let labels = obj.pointer("/spec/template/metadata/labels").cloned();
            if sel.is_none() || labels.is_none() {
                return Err(ApiError::invalid(
                    "Deployment",
                    "apps",
                    util::meta_name(obj),
                    vec![Cause {
                        reason: "FieldValueRequired".into(),
                        message: "Required value".into(),
                        field: "spec.selector".into(),
                    }],
                ));
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(obj)?,
        _ => {}
    }
    Ok(())
}

fn crd(obj: &mut Value) -> Result<(), ApiError> {
    let name = util::meta_name(obj).to_string();
    let infos = resources::from_crd(obj).map_err(|e| {
        ApiError::invalid(
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            &name,
            vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: e.0,
                field: "spec".into(),
            }],
        )
    })?;
    let want = format!(
        "{}.{}",
        util::str_at(obj, "/spec/names/plural"),
        util::str_at(obj, "/spec/group")
    );
    if name != want {
        return Err(ApiError::invalid(
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            &name,
            vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: format!(
                    "Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
                ),
                field: "metadata.name".into(),
            }],
        ));
    }
    let mut names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
    if names.get("singular").is_none() {
        names["singular"] = json!(
            infos
                .first()
                .map(|i| i.singular.clone())
                .unwrap_or_default()
        );
    }
    if names.get("listKind").is_none() {
        names["listKind"] = json!(format!("{}List", util::str_at(obj, "/spec/names/kind")));
    }
    let stored: Vec<Value> = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .filter_map(|v| v.get("name").cloned())
        .collect();
    let now = util::now_rfc3339();
    let cond = |t: &str, reason: &str| json!({"type": t, "status": "True", "reason": reason, "message": "", "lastTransitionTime": now});
    obj["status"] = json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [cond("NamesAccepted", "NoConflicts"), cond("Established", "InitialNamesAccepted")],
    });
    Ok(())
}

fn service(st: &mut Store, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
    let name = util::meta_name(obj).to_string();
    let spec = &mut obj["spec"];
    if spec.get("type").is_none() {
        spec["type"] = json!("ClusterIP");
    }
    if spec.get("clusterIP").is_none_or(|v| v.as_str() == Some("")) {
        let ip = old
            .and_then(|o| o.pointer("/spec/clusterIP").cloned())
            .unwrap_or_else(|| {
                st.next_cluster_ip += 1;
                let n = st.next_cluster_ip;
                json!(format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff))
            });
        spec["clusterIPs"] = json!([ip.clone()]);
        spec["clusterIP"] = ip;
    }
    let ty = spec["type"].as_str().unwrap_or_default().to_string();
    let wants_node_port = ty == "NodePort" || ty == "LoadBalancer";
    if st.node_ports.is_empty() {
        // Rebuild the allocation set lazily from stored services.
        let used: BTreeSet<u16> = st
            .list("/services", None)
            .iter()
            .flat_map(|s| {
                s.pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|p| p.get("nodePort").and_then(Value::as_u64).map(|n| n as u16))
            .collect();
        st.node_ports = used;
    }
    let old_ports = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for p in spec
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if p.get("protocol").is_none() {
            p["protocol"] = json!("TCP");
        }
        if p.get("targetPort").is_none()
            && let Some(port) = p.get("port").cloned()
        {
            p["targetPort"] = port;
        }
        if !wants_node_port {
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
            continue;
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
            if !(30000..=32767).contains(&np) {
                return Err(ApiError::invalid(
                    "Service",
                    "",
                    &name,
                    vec![Cause {
                        reason: "FieldValueInvalid".into(),
                        message: format!(
                            "Invalid value: {np}: provided port is not in the valid range. The range of valid ports is 30000-32767"
                        ),
                        field: "spec.ports.nodePort".into(),
                    }],
                ));
            }
            st.node_ports.insert(np as u16);
            continue;
        }
        let reuse = old_ports
            .iter()
            .find(|o| o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol"))
            .and_then(|o| o.get("nodePort").cloned());
        let np = match reuse {
            Some(n) => n,
            None => {
                let free = (30000u16..=32767)
                    .find(|n| !st.node_ports.contains(n))
                    .ok_or_else(|| ApiError::internal("no free node ports in 30000-32767"))?;
                st.node_ports.insert(free);
                json!(free)
            }
        };
        p["nodePort"] = np;
    }
    if obj.get("status").is_none() {
        obj["status"] = json!({"loadBalancer": {}});
    }
    Ok(())
}

/// Every leaf path of a JSON value (for detecting pruned fields).
fn leaf_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                leaf_paths(
                    c,
                    &if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    },
                    out,
                );
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, c) in a.iter().enumerate() {
                leaf_paths(c, &format!("{prefix}[{i}]"), out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// CRD schema admission: defaults, prunes and validates a custom object. Returns warnings
/// (pruned fields under `fieldValidation=Warn`).
pub fn schema_admit(
    ri: &ResourceInfo,
    obj: &mut Value,
    old: Option<&Value>,
    validation: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let Some(schema) = &ri.schema else {
        return Ok(Vec::new());
    };
    let keep: Vec<(String, Value)> = ["apiVersion", "kind", "metadata"]
        .iter()
        .filter_map(|k| obj.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    let mut before = BTreeSet::new();
    leaf_paths(obj, "", &mut before);
    schema.admit(obj, old).map_err(|errs| {
        let causes = errs
            .iter()
            .map(|e| Cause {
                reason: e.reason.as_status_cause().into(),
                message: e.message.clone(),
                field: e.path.clone(),
            })
            .collect();
        ApiError::invalid(&ri.kind, &ri.group, util::meta_name(obj), causes)
    })?;
    if let Some(m) = obj.as_object_mut() {
        for (k, v) in keep {
            m.insert(k, v);
        }
    }
    let mut after = BTreeSet::new();
    leaf_paths(obj, "", &mut after);
    let pruned: Vec<String> = before
        .difference(&after)
        .filter(|p| !p.starts_with("metadata") && !after.iter().any(|a| a.starts_with(p.as_str())))
        .map(|p| format!("unknown field \"{p}\""))
        .collect();
    match validation {
        FieldValidation::Strict if !pruned.is_empty() => Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            pruned.join(", ")
        ))),
        FieldValidation::Warn => Ok(pruned),
        _ => Ok(Vec::new()),
    }
}

/// Object names: required, at most 253 characters, no `/` or `%`.
pub fn validate_name(ri: &ResourceInfo, name: &str) -> Result<(), ApiError> {
    let bad = if name.is_empty() {
        Some((
            "FieldValueRequired",
            "Required value: name or generateName is required".to_string(),
        ))
    } else if name.len() > 253
        || name.contains('/')
        || name.contains('%')
        || name == "."
        || name == ".."
    {
        Some((
            "FieldValueInvalid",
            format!("Invalid value: \"{name}\": may not contain '/' or '%'"),
        ))
    } else {
        None
    };
    match bad {
        None => Ok(()),
        Some((reason, message)) => Err(ApiError::invalid(
            &ri.kind,
            &ri.group,
            name,
            vec![Cause {
                reason: reason.into(),
                message,
                field: "metadata.name".into(),
            }],
        )),
    }
}
