//! Kubernetes RBAC authorization over Roles, ClusterRoles and their bindings.
//!
//! Semantics follow `rbac.authorization.k8s.io/v1`:
//! * subjects `User`, `Group`, `ServiceAccount` (matching the user
//!   `system:serviceaccount:<namespace>:<name>`); members of `system:masters` are always allowed;
//! * rules match on `verbs` (`*` allowed), `apiGroups` (`*`), `resources` (`*`, `res/sub`,
//!   `*/sub`, `res/*`) and `resourceNames` (a rule with names never matches a request without one,
//!   such as `list` or `create`);
//! * ClusterRoleBindings grant everywhere; RoleBindings grant in their own namespace only, also
//!   when they refer to a ClusterRole;
//! * `aggregationRule.clusterRoleSelectors` are resolved at authorization time (the aggregated
//!   role's own rules plus those of every ClusterRole whose labels match, transitively);
//! * non-resource requests are expressed as attributes with `api_group == ""` and a `resource`
//!   starting with `/` (the URL path, e.g. `/healthz`); they match `nonResourceURLs` (exact, `*`,
//!   or a `prefix*`) of ClusterRoles bound by ClusterRoleBindings only, as in Kubernetes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RbacError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Yaml {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
}

/// The authenticated identity of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request does, as the authorizer sees it. For a non-resource request, `api_group` is
/// empty and `resource` is the URL path (starting with `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAttributes {
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl RequestAttributes {
    fn is_non_resource(&self) -> bool {
        self.api_group.is_empty() && self.resource.starts_with('/')
    }
}

#[derive(Debug, Clone, Default)]
struct PolicyRule {
    verbs: Vec<String>,
    api_groups: Vec<String>,
    resources: Vec<String>,
    resource_names: Vec<String>,
    non_resource_urls: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Selector {
    match_labels: BTreeMap<String, String>,
    /// (key, operator, values)
    match_expressions: Vec<(String, String, Vec<String>)>,
}

#[derive(Debug, Clone, Default)]
struct ClusterRole {
    labels: BTreeMap<String, String>,
    rules: Vec<PolicyRule>,
    aggregation: Option<Vec<Selector>>,
}

#[derive(Debug, Clone)]
struct Subject {
    kind: String,
    name: String,
    namespace: Option<String>,
}

#[derive(Debug, Clone)]
struct Binding {
    /// `Role` or `ClusterRole`.
    role_kind: String,
    role_name: String,
    subjects: Vec<Subject>,
}

/// An RBAC authorizer fed with Role, ClusterRole, RoleBinding and ClusterRoleBinding objects.
#[derive(Debug, Default)]
pub struct Authorizer {
    roles: BTreeMap<(String, String), Vec<PolicyRule>>,
    cluster_roles: BTreeMap<String, ClusterRole>,
    role_bindings: BTreeMap<(String, String), Binding>,
    cluster_role_bindings: BTreeMap<String, Binding>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_rules(v: Option<&Value>) -> Vec<PolicyRule> {
    v.and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .map(|r| PolicyRule {
                    verbs: strings(r.get("verbs")),
                    api_groups: strings(r.get("apiGroups")),
                    resources: strings(r.get("resources")),
                    resource_names: strings(r.get("resourceNames")),
                    non_resource_urls: strings(r.get("nonResourceURLs")),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn parse_selector(v: &Value) -> Selector {
    let match_expressions = v
        .get("matchExpressions")
        .and_then(Value::as_array)
        .map(|exprs| {
            exprs
                .iter()
                .map(|e| {
                    let s = |k: &str| {
                        e.get(k)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    (s("key"), s("operator"), strings(e.get("values")))
                })
                .collect()
        })
        .unwrap_or_default();
    Selector {
        match_labels: string_map(v.get("matchLabels")),
        match_expressions,
    }
}

impl Selector {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self
                .match_expressions
                .iter()
                .all(|(key, op, values)| match op.as_str() {
                    "In" => labels.get(key).is_some_and(|v| values.contains(v)),
                    "NotIn" => labels.get(key).is_none_or(|v| !values.contains(v)),
                    "Exists" => labels.contains_key(key),
                    "DoesNotExist" => !labels.contains_key(key),
                    _ => false,
                })
    }
}

/// Whether `labels` match a `metav1.LabelSelector` given as JSON (an empty selector matches all).
pub(crate) fn label_selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    parse_selector(selector).matches(labels)
}

fn parse_binding(obj: &Value) -> Binding {
    let role_ref = obj.get("roleRef");
    let field = |k: &str| {
        role_ref
            .and_then(|r| r.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let subjects = obj
        .get("subjects")
        .and_then(Value::as_array)
        .map(|subs| {
            subs.iter()
                .map(|s| Subject {
                    kind: s
                        .get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    name: s
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    namespace: s
                        .get("namespace")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default();
    Binding {
        role_kind: field("kind"),
        role_name: field("name"),
        subjects,
    }
}

fn metadata(obj: &Value, key: &str) -> Option<String> {
    obj.get("metadata")
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// `*` or exact; `prefix*` for non-resource URLs.
fn url_matches(rule: &str, path: &str) -> bool {
    rule == "*" || rule == path || rule.strip_suffix('*').is_some_and(|p| path.starts_with(p))
}

fn resource_matches(rule: &str, resource: &str, subresource: Option<&str>) -> bool {
    if rule == "*" {
        return true;
    }
    match subresource {
        None => rule == resource,
        Some(sub) => {
            rule == format!("{resource}/{sub}")
                || rule.strip_prefix("*/") == Some(sub)
                || rule.strip_suffix("/*") == Some(resource)
        }
    }
}

impl PolicyRule {
    fn allows(&self, attrs: &RequestAttributes) -> bool {
        let verb_ok = self.verbs.iter().any(|v| v == "*" || *v == attrs.verb);
        if !verb_ok {
            return false;
        }
        if attrs.is_non_resource() {
            return self
                .non_resource_urls
                .iter()
                .any(|u| url_matches(u, &attrs.resource));
        }
        self.api_groups
            .iter()
            .any(|g| g == "*" || *g == attrs.api_group)
            && self
                .resources
                .iter()
                .any(|r| resource_matches(r, &attrs.resource, attrs.subresource.as_deref()))
            && (self.resource_names.is_empty()
                || attrs
                    .name
                    .as_deref()
                    .is_some_and(|n| self.resource_names.iter().any(|r| r == n)))
    }
}

impl Subject {
    fn matches(&self, user: &UserInfo, binding_namespace: Option<&str>) -> bool {
        match self.kind.as_str() {
            "User" => self.name == user.name,
            "Group" => user.groups.contains(&self.name),
            "ServiceAccount" => match self.namespace.as_deref().or(binding_namespace) {
                Some(ns) if !ns.is_empty() => {
                    user.name == format!("system:serviceaccount:{ns}:{}", self.name)
                }
                _ => false,
            },
            _ => false,
        }
    }
}

impl Authorizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a Role, ClusterRole, RoleBinding or ClusterRoleBinding; other kinds (and
    /// objects without a name) are ignored. Namespaced objects without a namespace go to
    /// `default`, as `kubectl apply` would put them.
    pub fn upsert(&mut self, obj: &Value) {
        let Some(kind) = obj.get("kind").and_then(Value::as_str) else {
            return;
        };
        let Some(name) = metadata(obj, "name") else {
            return;
        };
        let namespace = || metadata(obj, "namespace").unwrap_or_else(|| "default".to_string());
        match kind {
            "Role" => {
                self.roles
                    .insert((namespace(), name), parse_rules(obj.get("rules")));
            }
            "ClusterRole" => {
                let aggregation = obj
                    .get("aggregationRule")
                    .and_then(|a| a.get("clusterRoleSelectors"))
                    .and_then(Value::as_array)
                    .map(|sels| sels.iter().map(parse_selector).collect());
                let labels = string_map(obj.get("metadata").and_then(|m| m.get("labels")));
                let rules = parse_rules(obj.get("rules"));
                self.cluster_roles.insert(
                    name,
                    ClusterRole {
                        labels,
                        rules,
                        aggregation,
                    },
                );
            }
            "RoleBinding" => {
                self.role_bindings
                    .insert((namespace(), name), parse_binding(obj));
            }
            "ClusterRoleBinding" => {
                self.cluster_role_bindings.insert(name, parse_binding(obj));
            }
            _ => {}
        }
    }

    /// Removes an object added by [`Authorizer::upsert`]; unknown objects are ignored.
    pub fn remove(&mut self, kind: &str, namespace: Option<&str>, name: &str) {
        let key = || (namespace.unwrap_or("default").to_string(), name.to_string());
        match kind {
            "Role" => {
                self.roles.remove(&key());
            }
            "ClusterRole" => {
                self.cluster_roles.remove(name);
            }
            "RoleBinding" => {
                self.role_bindings.remove(&key());
            }
            "ClusterRoleBinding" => {
                self.cluster_role_bindings.remove(name);
            }
            _ => {}
        }
    }

    /// The rules of a ClusterRole, aggregated ones included.
    fn cluster_role_rules(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<PolicyRule>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let Some(role) = self.cluster_roles.get(name) else {
            return;
        };
        out.extend(role.rules.iter().cloned());
        if let Some(selectors) = &role.aggregation {
            for (other, candidate) in &self.cluster_roles {
                if selectors.iter().any(|s| s.matches(&candidate.labels)) {
                    self.cluster_role_rules(other, seen, out);
                }
            }
        }
    }

    fn binding_rules(&self, binding: &Binding, namespace: Option<&str>) -> Vec<PolicyRule> {
        let mut out = Vec::new();
        match (binding.role_kind.as_str(), namespace) {
            ("ClusterRole", _) => {
                self.cluster_role_rules(&binding.role_name, &mut BTreeSet::new(), &mut out)
            }
            ("Role", Some(ns)) => {
                if let Some(rules) = self.roles.get(&(ns.to_string(), binding.role_name.clone())) {
                    out.extend(rules.iter().cloned());
                }
            }
            _ => {}
        }
        out
    }

    /// Allows the request, or says why not, in kube-apiserver's words (the part after
    /// `<resource> "<name>" is forbidden: `).
    pub fn authorize(&self, user: &UserInfo, attrs: &RequestAttributes) -> Result<(), String> {
        if user.groups.iter().any(|g| g == "system:masters") {
            return Ok(());
        }
        let non_resource = attrs.is_non_resource();
        for binding in self.cluster_role_bindings.values() {
            if binding.subjects.iter().any(|s| s.matches(user, None))
                && self
                    .binding_rules(binding, None)
                    .iter()
                    .any(|r| r.allows(attrs))
            {
                return Ok(());
            }
        }
        if let (Some(ns), false) = (attrs.namespace.as_deref(), non_resource) {
            for ((binding_ns, _), binding) in &self.role_bindings {
                if binding_ns == ns
                    && binding.subjects.iter().any(|s| s.matches(user, Some(ns)))
                    && self
                        .binding_rules(binding, Some(ns))
                        .iter()
                        .any(|r| r.allows(attrs))
                {
                    return Ok(());
                }
            }
        }
        Err(forbidden_reason(user, attrs))
    }

    /// Loads every `*.yaml`/`*.yml` file of `dir` (not recursing), each possibly multi-document
    /// (and `kind: List` documents), upserting the RBAC objects. Returns how many were loaded.
    pub fn load_yaml_dir(&mut self, dir: &Path) -> Result<usize, RbacError> {
        let io = |path: &Path, source| RbacError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        let mut loaded = 0;
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value: Value =
                    serde::Deserialize::deserialize(doc).map_err(|source| RbacError::Yaml {
                        path: path.display().to_string(),
                        source,
                    })?;
                let items = match value.get("kind").and_then(Value::as_str) {
                    Some("List") => value
                        .get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                    _ => vec![value],
                };
                for item in items {
                    if is_rbac(&item) {
                        self.upsert(&item);
                        loaded += 1;
                    }
                }
            }
        }
        Ok(loaded)
    }
}

fn is_rbac(obj: &Value) -> bool {
    matches!(
        obj.get("kind").and_then(Value::as_str),
        Some("Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding")
    ) && metadata(obj, "name").is_some()
}

fn forbidden_reason(user: &UserInfo, attrs: &RequestAttributes) -> String {
    if attrs.is_non_resource() {
        return format!(
            "User \"{}\" cannot {} path \"{}\"",
            user.name, attrs.verb, attrs.resource
        );
    }
    let resource = match &attrs.subresource {
        Some(sub) => format!("{}/{sub}", attrs.resource),
        None => attrs.resource.clone(),
    };
    let scope = match &attrs.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    format!(
        "User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        user.name, attrs.verb, attrs.api_group
    )
}
