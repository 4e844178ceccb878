//! ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1) evaluation.
//!
//! Supported: `spec.matchConstraints` (`resourceRules`, `excludeResourceRules` with `apiGroups`,
//! `apiVersions`, `resources` incl. `x/status`, `*/status`, `x/*`, `operations`, `scope`,
//! `resourceNames`; `objectSelector`; an empty `namespaceSelector`), `matchConditions`,
//! `variables`, `validations` (`expression`, `message`, `messageExpression`, `reason`),
//! `failurePolicy`, and bindings (`policyName`, `validationActions`, `matchResources`). Only the
//! `Deny` action denies; `Warn` and `Audit` bindings are evaluated by nobody. Policies with
//! `paramKind`, bindings with `paramRef`, and a non-empty `namespaceSelector` are refused with a
//! clear error whenever they match a request (whatever `failurePolicy` says). CEL variables:
//! `object`, `oldObject`, `request`, `variables`, `params` (always null), `namespaceObject`
//! (always null); the `authorizer` library is not provided (a compile error).

use std::collections::BTreeMap;

use cel::Value as CelValue;
use serde_json::{Value, json};

use super::cel::{CelProgram, display_value, json_to_value};
use super::rbac::{UserInfo, label_selector_matches};

/// One request, as admission sees it.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionRequest<'a> {
    pub user: &'a UserInfo,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: &'a str,
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub object: Option<&'a Value>,
    pub old_object: Option<&'a Value>,
}

#[derive(Debug)]
struct Named {
    name: String,
    program: CelProgram,
}

#[derive(Debug)]
struct Validation {
    program: CelProgram,
    message: Option<String>,
    message_expression: Option<CelProgram>,
    reason: Option<String>,
}

/// `matchConstraints` / `matchResources`, kept as JSON and interpreted per request.
#[derive(Debug, Default, Clone)]
struct MatchResources(Value);

#[derive(Debug)]
struct Policy {
    uses_params: bool,
    fail_open: bool,
    match_constraints: MatchResources,
    /// The compiled CEL, or why it does not compile (failing matching requests per failurePolicy).
    body: Result<Body, String>,
}

#[derive(Debug)]
struct Body {
    match_conditions: Vec<Named>,
    variables: Vec<Named>,
    validations: Vec<Validation>,
}

#[derive(Debug)]
struct Binding {
    policy_name: String,
    deny: bool,
    uses_params: bool,
    match_resources: Option<MatchResources>,
}

/// Evaluates the ValidatingAdmissionPolicies and their bindings it is fed.
#[derive(Debug, Default)]
pub struct PolicyEngine {
    policies: BTreeMap<String, Policy>,
    bindings: BTreeMap<String, Binding>,
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn compile_named(list: Option<&Value>, key: &str) -> Result<Vec<Named>, String> {
    let Some(list) = list.and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|item| {
            let name = item
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let expr = item
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{name:?} has no {key}"))?;
            let program = CelProgram::compile(expr).map_err(|e| e.to_string())?;
            Ok(Named { name, program })
        })
        .collect()
}

fn compile_body(spec: &Value) -> Result<Body, String> {
    let validations = spec
        .get("validations")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|v| {
                    let expr = v
                        .get("expression")
                        .and_then(Value::as_str)
                        .ok_or("a validation has no expression")?;
                    Ok(Validation {
                        program: CelProgram::compile(expr).map_err(|e| e.to_string())?,
                        message: v.get("message").and_then(Value::as_str).map(str::to_string),
                        message_expression: v
                            .get("messageExpression")
                            .and_then(Value::as_str)
                            .map(CelProgram::compile)
                            .transpose()
                            .map_err(|e| e.to_string())?,
                        reason: v.get("reason").and_then(Value::as_str).map(str::to_string),
                    })
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(Body {
        match_conditions: compile_named(spec.get("matchConditions"), "expression")?,
        variables: compile_named(spec.get("variables"), "expression")?,
        validations,
    })
}

fn list_matches(list: Option<&Value>, wanted: &str) -> bool {
    list.and_then(Value::as_array).is_some_and(|l| {
        l.iter()
            .filter_map(Value::as_str)
            .any(|s| s == "*" || s == wanted)
    })
}

fn resource_matches(list: Option<&Value>, resource: &str, sub: Option<&str>) -> bool {
    list.and_then(Value::as_array).is_some_and(|l| {
        l.iter().filter_map(Value::as_str).any(|r| match sub {
            None => r == "*" || r == resource,
            Some(sub) => {
                r == format!("{resource}/{sub}")
                    || r.strip_prefix("*/") == Some(sub)
                    || r.strip_suffix("/*") == Some(resource)
            }
        })
    })
}

fn rule_matches(rule: &Value, req: &AdmissionRequest) -> bool {
    let scope_ok = match rule.get("scope").and_then(Value::as_str) {
        Some("Cluster") => req.namespace.is_none(),
        Some("Namespaced") => req.namespace.is_some(),
        _ => true,
    };
    let names_ok = match rule.get("resourceNames").and_then(Value::as_array) {
        Some(names) if !names.is_empty() => names.iter().any(|n| n.as_str() == Some(req.name)),
        _ => true,
    };
    scope_ok
        && names_ok
        && list_matches(rule.get("apiGroups"), req.group)
        && list_matches(rule.get("apiVersions"), req.version)
        && list_matches(rule.get("operations"), req.operation)
        && resource_matches(rule.get("resources"), req.resource, req.subresource)
}

fn object_labels(obj: Option<&Value>) -> BTreeMap<String, String> {
    obj.and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

impl MatchResources {
    /// Whether the request is selected; `Err` for selectors this engine cannot evaluate.
    fn matches(&self, req: &AdmissionRequest) -> Result<bool, String> {
        let m = &self.0;
        let ns_selector = m.get("namespaceSelector");
        if ns_selector.is_some_and(|s| s.as_object().is_some_and(|o| !o.is_empty())) {
            return Err("namespaceSelector is not supported by this test server".to_string());
        }
        let rules = |key: &str| {
            m.get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        if !rules("resourceRules").iter().any(|r| rule_matches(r, req)) {
            return Ok(false);
        }
        if rules("excludeResourceRules")
            .iter()
            .any(|r| rule_matches(r, req))
        {
            return Ok(false);
        }
        if let Some(sel) = m.get("objectSelector").filter(|s| !s.is_null()) {
            let new = label_selector_matches(sel, &object_labels(req.object));
            let old = label_selector_matches(sel, &object_labels(req.old_object));
            if !(new || old) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn request_value(req: &AdmissionRequest) -> Value {
    json!({
        "operation": req.operation,
        "name": req.name,
        "namespace": req.namespace.unwrap_or_default(),
        "resource": {"group": req.group, "version": req.version, "resource": req.resource},
        "subResource": req.subresource.unwrap_or_default(),
        "userInfo": {
            "username": req.user.name,
            "groups": req.user.groups,
            "extra": req.user.extra,
        },
        "dryRun": false,
    })
}

impl Body {
    /// `Ok(None)` allowed or not applicable, `Ok(Some(msg))` denied, `Err` evaluation failure.
    fn evaluate(&self, req: &AdmissionRequest) -> Result<Option<String>, String> {
        let opt = |o: Option<&Value>| o.map(json_to_value).unwrap_or(CelValue::Null);
        let mut vars: Vec<(&str, CelValue)> = vec![
            ("object", opt(req.object)),
            ("oldObject", opt(req.old_object)),
            ("request", json_to_value(&request_value(req))),
            ("params", CelValue::Null),
            ("namespaceObject", CelValue::Null),
        ];
        for cond in &self.match_conditions {
            let matched = cond
                .program
                .eval_bool(&vars)
                .map_err(|e| format!("matchCondition {:?}: {e}", cond.name))?;
            if !matched {
                return Ok(None);
            }
        }
        // Variables are evaluated in order, each seeing the previous ones; one that fails is left
        // out, so only expressions using it fail.
        let mut variables = CelValue::Map(cel::objects::Map {
            map: Default::default(),
        });
        for var in &self.variables {
            let mut scope = vars.clone();
            scope.push(("variables", variables.clone()));
            if let Ok(v) = var.program.eval(&scope) {
                let mut map: std::collections::HashMap<cel::objects::Key, CelValue> =
                    match &variables {
                        CelValue::Map(m) => (*m.map).clone(),
                        _ => Default::default(),
                    };
                map.insert(cel::objects::Key::String(var.name.clone().into()), v);
                variables = CelValue::Map(cel::objects::Map { map: map.into() });
            }
        }
        vars.push(("variables", variables));
        for v in &self.validations {
            let ok = v.program.eval_bool(&vars).map_err(|e| e.to_string())?;
            if ok {
                continue;
            }
            let from_expression = v
                .message_expression
                .as_ref()
                .and_then(|m| m.eval(&vars).ok())
                .map(|m| display_value(&m))
                .filter(|m| !m.trim().is_empty());
            let message = from_expression
                .or_else(|| v.message.clone().filter(|m| !m.is_empty()))
                .unwrap_or_else(|| format!("failed expression: {}", v.program.expression()));
            let reason = v
                .reason
                .as_deref()
                .map(|r| format!(" (reason: {r})"))
                .unwrap_or_default();
            return Ok(Some(format!("{message}{reason}")));
        }
        Ok(None)
    }
}

impl PolicyEngine {
    /// Adds or replaces a `ValidatingAdmissionPolicy` or `ValidatingAdmissionPolicyBinding`;
    /// other kinds are ignored. A policy whose CEL does not compile is kept, and fails requests
    /// it matches (per its failurePolicy).
    pub fn upsert(&mut self, obj: &Value) {
        let Some(name) = str_at(obj, "/metadata/name").map(str::to_string) else {
            return;
        };
        let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
        match obj.get("kind").and_then(Value::as_str) {
            Some("ValidatingAdmissionPolicy") => {
                let policy = Policy {
                    uses_params: spec.get("paramKind").is_some_and(|p| !p.is_null()),
                    fail_open: str_at(&spec, "/failurePolicy") == Some("Ignore"),
                    match_constraints: MatchResources(
                        spec.get("matchConstraints").cloned().unwrap_or(Value::Null),
                    ),
                    body: compile_body(&spec),
                };
                self.policies.insert(name, policy);
            }
            Some("ValidatingAdmissionPolicyBinding") => {
                let actions: Vec<&str> = spec
                    .get("validationActions")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let binding = Binding {
                    policy_name: str_at(&spec, "/policyName").unwrap_or_default().to_string(),
                    deny: actions.contains(&"Deny"),
                    uses_params: spec.get("paramRef").is_some_and(|p| !p.is_null()),
                    match_resources: spec
                        .get("matchResources")
                        .filter(|m| !m.is_null())
                        .cloned()
                        .map(MatchResources),
                };
                self.bindings.insert(name, binding);
            }
            _ => {}
        }
    }

    /// Removes a policy or binding by kind and name.
    pub fn remove(&mut self, kind: &str, name: &str) {
        match kind {
            "ValidatingAdmissionPolicy" => {
                self.policies.remove(name);
            }
            "ValidatingAdmissionPolicyBinding" => {
                self.bindings.remove(name);
            }
            _ => {}
        }
    }

    /// Runs every bound policy matching the request. `Err` is the denial, worded like
    /// kube-apiserver's (`ValidatingAdmissionPolicy '<p>' with binding '<b>' denied request: <msg>`),
    /// to be returned after `<resource> "<name>" is forbidden: ` (or as the Invalid/
    /// Unauthorized message per the validation's `reason`, shown in parentheses).
    pub fn validate(&self, req: &AdmissionRequest) -> Result<(), String> {
        for (binding_name, binding) in &self.bindings {
            let Some(policy) = self.policies.get(&binding.policy_name) else {
                continue;
            };
            let prefix = format!(
                "ValidatingAdmissionPolicy '{}' with binding '{binding_name}'",
                binding.policy_name
            );
            let fail = |e: String| {
                if policy.fail_open {
                    Ok(())
                } else {
                    Err(format!("{prefix} failed: {e}"))
                }
            };
            match policy.match_constraints.matches(req) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => return Err(format!("{prefix} cannot be evaluated: {e}")),
            }
            if let Some(m) = &binding.match_resources {
                match m.matches(req) {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(e) => return Err(format!("{prefix} cannot be evaluated: {e}")),
                }
            }
            if policy.uses_params || binding.uses_params {
                return Err(format!(
                    "{prefix} cannot be evaluated: parameters (paramKind/paramRef) are not supported by this test server"
                ));
            }
            if !binding.deny {
                continue;
            }
            let body = match &policy.body {
                Ok(body) => body,
                Err(e) => {
                    fail(format!("policy does not compile: {e}"))?;
                    continue;
                }
            };
            match body.evaluate(req) {
                Ok(None) => {}
                Ok(Some(message)) => return Err(format!("{prefix} denied request: {message}")),
                Err(e) => fail(e)?,
            }
        }
        Ok(())
    }
}
