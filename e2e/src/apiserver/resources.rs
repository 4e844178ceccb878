//! The served resource types: built-in kinds and the kinds CustomResourceDefinitions add.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use super::schema::CompiledSchema;

/// How a list field merges (server-side apply and strategic merge patch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKind {
    /// Items are identified by these key fields.
    Map(Vec<String>),
    /// Items are unique scalars.
    Set,
    /// The list is replaced as a whole.
    Atomic,
}

/// Per-field merge structure, keyed by dotted field path without list steps
/// (e.g. `spec.template.spec.containers.ports`).
#[derive(Debug, Clone, Default)]
pub struct Structure {
    pub lists: HashMap<String, ListKind>,
    /// Maps replaced as a whole (`x-kubernetes-map-type: atomic`).
    pub atomic_maps: Vec<String>,
}

impl Structure {
    pub fn list_kind(&self, path: &str) -> ListKind {
        self.lists.get(path).cloned().unwrap_or(ListKind::Atomic)
    }
    pub fn is_atomic_map(&self, path: &str) -> bool {
        self.atomic_maps.iter().any(|p| p == path)
    }
    fn with(mut self, path: &str, kind: ListKind) -> Self {
        self.lists.insert(path.to_string(), kind);
        self
    }
    fn map(self, path: &str, keys: &[&str]) -> Self {
        self.with(
            path,
            ListKind::Map(keys.iter().map(|s| s.to_string()).collect()),
        )
    }
    fn common() -> Self {
        Structure::default()
            .map("metadata.ownerReferences", &["uid"])
            .with("metadata.finalizers", ListKind::Set)
    }
    fn pod_spec(self, prefix: &str) -> Self {
        let p = |s: &str| format!("{prefix}.{s}");
        let mut s = self;
        for c in ["containers", "initContainers", "ephemeralContainers"] {
            s = s
                .map(&p(c), &["name"])
                .map(&p(&format!("{c}.ports")), &["containerPort", "protocol"])
                .map(&p(&format!("{c}.env")), &["name"])
                .map(&p(&format!("{c}.volumeMounts")), &["mountPath"]);
        }
        s.map(&p("volumes"), &["name"])
            .map(&p("imagePullSecrets"), &["name"])
    }
}

/// A printer column of a resource's table view.
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// One served group/version/resource.
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub has_status: bool,
    pub printer_columns: Vec<PrinterColumn>,
    pub schema: Option<Arc<CompiledSchema>>,
    pub structure: Arc<Structure>,
    pub custom: bool,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// Storage key shared by all versions of a resource.
    pub fn storage_key(&self) -> String {
        format!("{}/{}", self.group, self.resource)
    }
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    resource: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    has_status: bool,
    structure: Structure,
) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: version.into(),
        resource: resource.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: if matches!(kind, "Pod" | "Service" | "Deployment") {
            vec!["all".into()]
        } else {
            vec![]
        },
        has_status,
        printer_columns: builtin_columns(kind),
        schema: None,
        structure: Arc::new(structure),
        custom: false,
    }
}

fn col(name: &str, type_: &str, json_path: &str) -> PrinterColumn {
    PrinterColumn {
        name: name.into(),
        type_: type_.into(),
        format: String::new(),
        description: String::new(),
        priority: 0,
        json_path: json_path.into(),
    }
}

fn builtin_columns(kind: &str) -> Vec<PrinterColumn> {
    let age = col("Age", "date", ".metadata.creationTimestamp");
    match kind {
        "Node" => vec![
            col(
                "Status",
                "string",
                ".status.conditions[?(@.type=='Ready')].type",
            ),
            age,
        ],
        "Namespace" => vec![col("Status", "string", ".status.phase"), age],
        "Pod" => vec![
            col("Status", "string", ".status.phase"),
            col(
                "Restarts",
                "integer",
                ".status.containerStatuses[0].restartCount",
            ),
            age,
            col("IP", "string", ".status.podIP"),
        ],
        "Service" => vec![
            col("Type", "string", ".spec.type"),
            col("Cluster-IP", "string", ".spec.clusterIP"),
            col(
                "External-IP",
                "string",
                ".status.loadBalancer.ingress[0].ip",
            ),
            age,
        ],
        "Deployment" => vec![
            col("Ready", "integer", ".status.readyReplicas"),
            col("Replicas", "integer", ".spec.replicas"),
            age,
        ],
        "Lease" => vec![col("Holder", "string", ".spec.holderIdentity"), age],
        "CustomResourceDefinition" => {
            vec![col("Created At", "string", ".metadata.creationTimestamp")]
        }
        _ => vec![age],
    }
}

/// The built-in resources.
pub fn builtins() -> Vec<ResourceInfo> {
    let c = Structure::common;
    let cond = |s: Structure| s.map("status.conditions", &["type"]);
    vec![
        builtin(
            "",
            "v1",
            "nodes",
            "Node",
            false,
            &["no"],
            true,
            cond(c()).map("status.addresses", &["type"]),
        ),
        builtin(
            "",
            "v1",
            "namespaces",
            "Namespace",
            false,
            &["ns"],
            true,
            c(),
        ),
        builtin("", "v1", "secrets", "Secret", true, &[], false, c()),
        builtin(
            "",
            "v1",
            "configmaps",
            "ConfigMap",
            true,
            &["cm"],
            false,
            c(),
        ),
        builtin(
            "",
            "v1",
            "services",
            "Service",
            true,
            &["svc"],
            true,
            c().map("spec.ports", &["port", "protocol"]),
        ),
        builtin("", "v1", "events", "Event", true, &["ev"], false, c()),
        builtin(
            "",
            "v1",
            "pods",
            "Pod",
            true,
            &["po"],
            true,
            cond(c()).pod_spec("spec"),
        ),
        builtin(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            &["sa"],
            false,
            c(),
        ),
        builtin(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            true,
            &["deploy"],
            true,
            cond(c()).pod_spec("spec.template.spec"),
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            &[],
            false,
            c(),
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            &["ev"],
            false,
            c(),
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            true,
            &[],
            false,
            c(),
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            &[],
            false,
            c(),
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            &[],
            false,
            c(),
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
            false,
            c(),
        ),
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "validatingadmissionpolicies",
            "ValidatingAdmissionPolicy",
            false,
            &[],
            true,
            c(),
        ),
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "validatingadmissionpolicybindings",
            "ValidatingAdmissionPolicyBinding",
            false,
            &[],
            false,
            c(),
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
            cond(c()),
        ),
    ]
}

/// The structure (list types, atomic maps) declared by an OpenAPI v3 schema.
pub fn structure_from_schema(schema: &Value) -> Structure {
    let mut s = Structure::common();
    walk_schema(schema, "", &mut s);
    s
}

fn walk_schema(node: &Value, path: &str, out: &mut Structure) {
    if node.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic")
        && !path.is_empty()
    {
        out.atomic_maps.push(path.to_string());
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            walk_schema(v, &p, out);
        }
    }
    if node.get("type").and_then(Value::as_str) == Some("array") {
        let kind = match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => ListKind::Map(
                node.get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|k| k.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            Some("set") => ListKind::Set,
            _ => ListKind::Atomic,
        };
        out.lists.insert(path.to_string(), kind);
        if let Some(items) = node.get("items") {
            walk_schema(items, path, out);
        }
    }
    if let Some(ap) = node.get("additionalProperties").filter(|v| v.is_object()) {
        // Map values: their fields are addressed under the map's path plus the key; we do not
        // track per-key structure, so nested lists under maps are atomic.
        let _ = ap;
    }
}

/// Why a CRD cannot be served.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CrdError(pub String);

/// The resources a CustomResourceDefinition serves, one per served version.
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceInfo>, CrdError> {
    let spec = crd
        .get("spec")
        .ok_or_else(|| CrdError("spec: Required value".into()))?;
    let group = spec
        .get("group")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let names = spec.get("names").cloned().unwrap_or(Value::Null);
    let s = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let plural = s(&names, "plural");
    let kind = s(&names, "kind");
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Err(CrdError(
            "spec.group, spec.names.plural and spec.names.kind are required".into(),
        ));
    }
    let singular = match s(&names, "singular") {
        x if x.is_empty() => kind.to_lowercase(),
        x => x,
    };
    let strs = |k: &str| -> Vec<String> {
        names
            .get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = s(spec, "scope") != "Cluster";
    let mut out = Vec::new();
    for v in spec
        .get("versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let version = s(v, "name");
        let schema_v = v
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .unwrap_or(Value::Null);
        let schema = if schema_v.is_null() {
            None
        } else {
            Some(Arc::new(
                CompiledSchema::from_openapi_v3(&schema_v).map_err(|e| {
                    CrdError(format!(
                        "spec.versions[{version}].schema.openAPIV3Schema: {e}"
                    ))
                })?,
            ))
        };
        let mut columns: Vec<PrinterColumn> = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| PrinterColumn {
                name: s(c, "name"),
                type_: s(c, "type"),
                format: s(c, "format"),
                description: s(c, "description"),
                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                json_path: s(c, "jsonPath"),
            })
            .collect();
        if columns.is_empty() {
            columns.push(col("Age", "date", ".metadata.creationTimestamp"));
        }
        out.push(ResourceInfo {
            group: group.clone(),
            version,
            resource: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            namespaced,
            short_names: strs("shortNames"),
            categories: strs("categories"),
            has_status: v.pointer("/subresources/status").is_some(),
            printer_columns: columns,
            schema,
            structure: Arc::new(structure_from_schema(&schema_v)),
            custom: true,
        });
    }
    Ok(out)
}

/// The served resources, by (group, version, resource).
#[derive(Debug, Default, Clone)]
pub struct Registry {
    pub by_gvr: BTreeMap<(String, String, String), Arc<ResourceInfo>>,
    /// Order in which groups were first registered (discovery order).
    pub group_order: Vec<String>,
}

impl Registry {
    pub fn new() -> Self {
        let mut r = Registry::default();
        for ri in builtins() {
            r.insert(ri);
        }
        r
    }
    pub fn insert(&mut self, ri: ResourceInfo) {
        if !self.group_order.contains(&ri.group) {
            self.group_order.push(ri.group.clone());
        }
        self.by_gvr.insert(
            (ri.group.clone(), ri.version.clone(), ri.resource.clone()),
            Arc::new(ri),
        );
    }
    pub fn get(&self, group: &str, version: &str, resource: &str) -> Option<Arc<ResourceInfo>> {
        self.by_gvr
            .get(&(group.to_string(), version.to_string(), resource.to_string()))
            .cloned()
    }
    /// Any version of a group/resource (storage-level lookups).
    pub fn any_version(&self, group: &str, resource: &str) -> Option<Arc<ResourceInfo>> {
        self.by_gvr
            .values()
            .find(|r| r.group == group && r.resource == resource)
            .cloned()
    }
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceInfo>> {
        self.by_gvr
            .values()
            .find(|r| r.api_version() == api_version && r.kind == kind)
            .cloned()
    }
    pub fn remove_group_resource(&mut self, group: &str, resource: &str) {
        self.by_gvr
            .retain(|(g, _, r), _| !(g == group && r == resource));
        if !self.by_gvr.keys().any(|(g, _, _)| g == group) {
            self.group_order.retain(|g| g != group);
        }
    }
    /// Versions served for a group, in order of registration.
    pub fn group_versions(&self, group: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (g, v, _) in self.by_gvr.keys() {
            if g == group && !out.contains(v) {
                out.push(v.clone());
            }
        }
        // Kubernetes prefers the highest stable version; "v1" > "v1beta1" > "v1alpha1".
        out.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        out
    }
    pub fn resources_in(&self, group: &str, version: &str) -> Vec<Arc<ResourceInfo>> {
        self.by_gvr
            .values()
            .filter(|r| r.group == group && r.version == version)
            .cloned()
            .collect()
    }
}

fn version_priority(v: &str) -> (u8, u32, u32) {
    let rest = v.strip_prefix('v').unwrap_or(v);
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stage, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(b) = tail.strip_prefix("beta") {
        (2, b.parse().unwrap_or(0))
    } else if let Some(a) = tail.strip_prefix("alpha") {
        (1, a.parse().unwrap_or(0))
    } else {
        (0, 0)
    };
    (stage, major, minor)
}
