//! RBAC authorization and ValidatingAdmissionPolicy evaluation of the test API server.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};
use wirekube_e2e::apiserver::admission::{AdmissionRequest, PolicyEngine};
use wirekube_e2e::apiserver::rbac::{Authorizer, RbacError, RequestAttributes, UserInfo};

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo {
        name: name.to_string(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        extra: BTreeMap::new(),
    }
}

fn req(
    verb: &str,
    group: &str,
    resource: &str,
    ns: Option<&str>,
    name: Option<&str>,
) -> RequestAttributes {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) if !resource.starts_with('/') => (r.to_string(), Some(s.to_string())),
        _ => (resource.to_string(), None),
    };
    RequestAttributes {
        verb: verb.to_string(),
        api_group: group.to_string(),
        resource,
        subresource,
        namespace: ns.map(str::to_string),
        name: name.map(str::to_string),
    }
}

fn yaml(s: &str) -> Value {
    serde_yaml::from_str(s).expect("test YAML parses")
}

/// A fresh temporary directory holding `files`.
fn temp_dir(tag: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wirekube-rbac-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
    dir
}

const MATRIX_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
rules:
- apiGroups: [""]
  resources: [nodes, pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: ["pods/*"]
  verbs: [get]
- apiGroups: [wirekube.io]
  resources: ["*/status"]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: alice-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}
subjects:
- {kind: User, name: alice}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: secret-editor}
rules:
- apiGroups: [""]
  resources: [secrets]
  verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: ops-secrets, namespace: team-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: secret-editor}
subjects:
- {kind: Group, name: ops}
- {kind: ServiceAccount, name: deployer}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: one-lease, namespace: team-a}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [wirekube-operator]
  verbs: [get, update]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bob-lease, namespace: team-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: one-lease}
subjects:
- {kind: User, name: bob}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: everything-wirekube}
rules:
- apiGroups: ["*"]
  resources: ["*"]
  verbs: ["*"]
  resourceNames: []
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: carol-all, namespace: wirekube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: everything-wirekube}
subjects:
- {kind: User, name: carol}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: probes}
rules:
- nonResourceURLs: [/healthz, "/metrics*"]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: monitor-probes}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: probes}
subjects:
- {kind: ServiceAccount, name: prometheus, namespace: monitoring}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: carol-probes, namespace: wirekube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: probes}
subjects:
- {kind: User, name: carol}
"#;

#[test]
fn rbac_allow_deny_matrix() {
    let dir = temp_dir(
        "matrix",
        &[("rbac.yaml", MATRIX_RBAC), ("notes.txt", "not yaml: [")],
    );
    let mut authz = Authorizer::new();
    assert_eq!(authz.load_yaml_dir(&dir).unwrap(), 11);
    let alice = user("alice", &["system:authenticated"]);
    let bob = user("bob", &[]);
    let carol = user("carol", &[]);
    let ops = user("dave", &["ops"]);
    let deployer = user(
        "system:serviceaccount:team-a:deployer",
        &["system:serviceaccounts"],
    );
    let other_sa = user("system:serviceaccount:team-b:deployer", &[]);
    let prometheus = user("system:serviceaccount:monitoring:prometheus", &[]);
    let admin = user("kubernetes-admin", &["system:masters"]);
    let nobody = user("nobody", &["system:authenticated"]);

    let ns_a = Some("team-a");
    #[rustfmt::skip]
    let matrix: Vec<(&UserInfo, RequestAttributes, bool)> = vec![
        // ClusterRoleBinding to a User: cluster-wide, only the granted verbs and resources.
        (&alice, req("list", "", "nodes", None, None), true),
        (&alice, req("get", "", "pods", Some("any"), Some("p")), true),
        (&alice, req("delete", "", "pods", Some("any"), Some("p")), false),
        (&alice, req("get", "", "secrets", Some("any"), Some("s")), false),
        (&alice, req("get", "apps", "deployments", Some("any"), None), false),
        // Subresources: "pods" does not grant pods/log, "pods/*" does; "*/status" any status.
        (&alice, req("get", "", "pods/log", Some("any"), Some("p")), true),
        (&alice, req("list", "", "pods/log", Some("any"), None), false),
        (&alice, req("get", "wirekube.io", "wirekubepeers/status", None, Some("n")), true),
        (&alice, req("get", "wirekube.io", "wirekubepeers", None, Some("n")), false),
        // RoleBinding to a ClusterRole: only in the binding's namespace.
        (&ops, req("delete", "", "secrets", ns_a, Some("s")), true),
        (&ops, req("get", "", "secrets", Some("team-b"), Some("s")), false),
        (&ops, req("list", "", "secrets", None, None), false),
        // ServiceAccount subject without namespace: the binding's namespace.
        (&deployer, req("create", "", "secrets", ns_a, None), true),
        (&other_sa, req("create", "", "secrets", ns_a, None), false),
        // resourceNames: only that name; never list/create-without-name through it.
        (&bob, req("get", "coordination.k8s.io", "leases", ns_a, Some("wirekube-operator")), true),
        (&bob, req("update", "coordination.k8s.io", "leases", ns_a, Some("other")), false),
        (&bob, req("list", "coordination.k8s.io", "leases", ns_a, None), false),
        (&bob, req("create", "coordination.k8s.io", "leases", ns_a, None), true),
        (&bob, req("get", "coordination.k8s.io", "leases", Some("team-b"), Some("wirekube-operator")), false),
        // Wildcards through a RoleBinding: everything in that namespace, nothing elsewhere.
        (&carol, req("deletecollection", "wirekube.io", "anything/status", Some("wirekube-system"), None), true),
        (&carol, req("get", "", "nodes", None, Some("n")), false),
        (&carol, req("get", "", "pods", Some("default"), Some("p")), false),
        // Non-resource URLs: exact and prefix, via ClusterRoleBindings only.
        (&prometheus, req("get", "", "/healthz", None, None), true),
        (&prometheus, req("get", "", "/metrics/cadvisor", None, None), true),
        (&prometheus, req("post", "", "/metrics", None, None), false),
        (&prometheus, req("get", "", "/api", None, None), false),
        (&carol, req("get", "", "/healthz", None, None), false),
        // system:masters always; nobody never.
        (&admin, req("delete", "", "nodes", None, Some("n")), true),
        (&admin, req("get", "", "/anything", None, None), true),
        (&nobody, req("get", "", "nodes", None, Some("n")), false),
    ];
    for (who, attrs, allowed) in matrix {
        let got = authz.authorize(who, &attrs);
        assert_eq!(got.is_ok(), allowed, "{} {attrs:?}: {got:?}", who.name);
    }
}

#[test]
fn forbidden_messages_read_like_kube_apiserver() {
    let authz = Authorizer::new();
    let agent = user("system:serviceaccount:wirekube-system:wirekube-agent", &[]);
    assert_eq!(
        authz.authorize(&agent, &req("patch", "wirekube.io", "wirekubepeers/status", None, Some("n"))),
        Err("User \"system:serviceaccount:wirekube-system:wirekube-agent\" cannot patch resource \"wirekubepeers/status\" in API group \"wirekube.io\" at the cluster scope".to_string())
    );
    assert_eq!(
        authz.authorize(&agent, &req("list", "", "secrets", Some("ns"), None)),
        Err("User \"system:serviceaccount:wirekube-system:wirekube-agent\" cannot list resource \"secrets\" in API group \"\" in the namespace \"ns\"".to_string())
    );
    assert_eq!(
        authz.authorize(&agent, &req("get", "", "/metrics", None, None)),
        Err("User \"system:serviceaccount:wirekube-system:wirekube-agent\" cannot get path \"/metrics\"".to_string())
    );
}

#[test]
fn upsert_remove_and_aggregation() {
    let mut authz = Authorizer::new();
    let erin = user("erin", &[]);
    let get_mesh = req(
        "get",
        "wirekube.io",
        "wirekubemeshes",
        None,
        Some("default"),
    );
    authz.upsert(&yaml(
        "{kind: ClusterRole, apiVersion: rbac.authorization.k8s.io/v1, metadata: {name: view}, \
          aggregationRule: {clusterRoleSelectors: [{matchLabels: {rbac.example/aggregate-to-view: 'true'}}]}, rules: []}",
    ));
    authz.upsert(&yaml(
        "{kind: ClusterRoleBinding, metadata: {name: erin-view}, roleRef: {kind: ClusterRole, name: view}, subjects: [{kind: User, name: erin}]}",
    ));
    assert!(authz.authorize(&erin, &get_mesh).is_err());
    let wirekube_view = yaml(
        "{kind: ClusterRole, metadata: {name: wirekube-view, labels: {rbac.example/aggregate-to-view: 'true'}}, \
          rules: [{apiGroups: [wirekube.io], resources: [wirekubemeshes], verbs: [get]}]}",
    );
    authz.upsert(&wirekube_view);
    assert!(
        authz.authorize(&erin, &get_mesh).is_ok(),
        "aggregated rules apply"
    );
    // matchExpressions also select.
    authz.upsert(&yaml(
        "{kind: ClusterRole, metadata: {name: view}, aggregationRule: {clusterRoleSelectors: \
          [{matchExpressions: [{key: rbac.example/aggregate-to-view, operator: In, values: ['true']}]}]}}",
    ));
    assert!(authz.authorize(&erin, &get_mesh).is_ok());
    authz.remove("ClusterRole", None, "wirekube-view");
    assert!(
        authz.authorize(&erin, &get_mesh).is_err(),
        "removing the aggregated role revokes"
    );
    authz.upsert(&wirekube_view);
    authz.remove("ClusterRoleBinding", None, "erin-view");
    assert!(
        authz.authorize(&erin, &get_mesh).is_err(),
        "removing the binding revokes"
    );
    // Other kinds and nameless objects are ignored.
    authz.upsert(&json!({"kind": "ConfigMap", "metadata": {"name": "x"}}));
    authz.upsert(
        &json!({"kind": "ClusterRoleBinding", "roleRef": {"kind": "ClusterRole", "name": "view"}}),
    );
    authz.upsert(&json!("garbage"));
}

#[test]
fn load_yaml_dir_reports_bad_input() {
    let missing = std::env::temp_dir().join("wirekube-rbac-definitely-missing");
    assert!(matches!(
        Authorizer::new().load_yaml_dir(&missing),
        Err(RbacError::Io { .. })
    ));
    let dir = temp_dir(
        "bad",
        &[("bad.yaml", "kind: Role\nmetadata: [unterminated\n")],
    );
    assert!(matches!(
        Authorizer::new().load_yaml_dir(&dir),
        Err(RbacError::Yaml { .. })
    ));
    let list = "kind: List\nitems:\n- {kind: ClusterRole, metadata: {name: a}, rules: []}\n- {kind: Service, metadata: {name: s}}\n---\n";
    let dir = temp_dir(
        "list",
        &[
            ("list.yml", list),
            ("kustomization.yaml", "resources: [list.yml]\n"),
        ],
    );
    assert_eq!(Authorizer::new().load_yaml_dir(&dir).unwrap(), 1);
}

// --- the agent: RBAC plus the ValidatingAdmissionPolicy that pins it to its own node ---

const AGENT: &str = "system:serviceaccount:wirekube-system:wirekube-agent";
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

const AGENT_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: wirekube-agent}
rules:
- apiGroups: [wirekube.io]
  resources: [wirekubemeshes, wirekubepeers]
  verbs: [get, list, watch]
- apiGroups: [wirekube.io]
  resources: [wirekubepeers/status]
  verbs: [get, patch, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: wirekube-agent}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: wirekube-agent}
subjects:
- {kind: ServiceAccount, name: wirekube-agent, namespace: wirekube-system}
"#;

const AGENT_VAP: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: wirekube-agent-own-peer}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [wirekube.io]
      apiVersions: ["*"]
      resources: [wirekubepeers, wirekubepeers/status]
      operations: [CREATE, UPDATE, DELETE]
  matchConditions:
  - name: is-agent
    expression: "request.userInfo.username == 'system:serviceaccount:wirekube-system:wirekube-agent'"
  variables:
  - name: nodeName
    expression: "'authentication.kubernetes.io/node-name' in request.userInfo.extra ? request.userInfo.extra['authentication.kubernetes.io/node-name'][0] : ''"
  validations:
  - expression: "variables.nodeName != ''"
    message: "the agent's token is not bound to a node"
    reason: Forbidden
  - expression: "request.name == variables.nodeName"
    messageExpression: "'agent of node ' + variables.nodeName + ' may not write the peer of node ' + request.name"
    reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: wirekube-agent-own-peer}
spec:
  policyName: wirekube-agent-own-peer
  validationActions: [Deny]
"#;

fn load_docs(text: &str, authz: &mut Authorizer, policies: &mut PolicyEngine) {
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        authz.upsert(&v);
        policies.upsert(&v);
    }
}

fn agent_on(node: Option<&str>) -> UserInfo {
    let mut u = user(
        AGENT,
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:wirekube-system",
            "system:authenticated",
        ],
    );
    if let Some(node) = node {
        u.extra
            .insert(NODE_NAME_EXTRA.to_string(), vec![node.to_string()]);
    }
    u
}

fn peer(name: &str) -> Value {
    json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubePeer", "metadata": {"name": name}, "status": {}})
}

/// RBAC, then (for writes) admission, as the server runs them.
fn request(
    authz: &Authorizer,
    policies: &PolicyEngine,
    who: &UserInfo,
    verb: &str,
    resource: &str,
    name: &str,
) -> Result<(), String> {
    let attrs = req(
        verb,
        "wirekube.io",
        resource,
        None,
        Some(name).filter(|n| !n.is_empty()),
    );
    authz.authorize(who, &attrs)?;
    let operation = match verb {
        "create" => "CREATE",
        "update" | "patch" => "UPDATE",
        "delete" => "DELETE",
        _ => return Ok(()),
    };
    let obj = peer(name);
    policies.validate(&AdmissionRequest {
        user: who,
        operation,
        group: "wirekube.io",
        version: "v1alpha1",
        resource: &attrs.resource,
        subresource: attrs.subresource.as_deref(),
        namespace: None,
        name,
        object: (operation != "DELETE").then_some(&obj),
        old_object: (operation != "CREATE").then_some(&obj),
    })
}

#[test]
fn agent_can_patch_only_its_own_peer_status_and_nothing_else() {
    let mut authz = Authorizer::new();
    let mut policies = PolicyEngine::default();
    load_docs(AGENT_RBAC, &mut authz, &mut policies);
    load_docs(AGENT_VAP, &mut authz, &mut policies);
    let agent = agent_on(Some("node-a"));
    let go = |who: &UserInfo, verb: &str, resource: &str, name: &str| {
        request(&authz, &policies, who, verb, resource, name)
    };

    // Allowed: its own peer's status, and reading.
    go(&agent, "patch", "wirekubepeers/status", "node-a").unwrap();
    go(&agent, "update", "wirekubepeers/status", "node-a").unwrap();
    go(&agent, "get", "wirekubepeers", "node-b").unwrap();
    go(&agent, "list", "wirekubepeers", "").unwrap();
    go(&agent, "watch", "wirekubemeshes", "").unwrap();

    // Another node's status: RBAC allows, the policy denies.
    let err = go(&agent, "patch", "wirekubepeers/status", "node-b").unwrap_err();
    assert_eq!(
        err,
        "ValidatingAdmissionPolicy 'wirekube-agent-own-peer' with binding 'wirekube-agent-own-peer' denied request: \
         agent of node node-a may not write the peer of node node-b (reason: Forbidden)"
    );
    // A token not bound to a node cannot write any status.
    let unbound = agent_on(None);
    let err = go(&unbound, "patch", "wirekubepeers/status", "node-a").unwrap_err();
    assert!(err.contains("not bound to a node"), "{err}");

    // Everything else: RBAC denies.
    for (verb, resource) in [
        ("patch", "wirekubepeers"),
        ("update", "wirekubepeers"),
        ("create", "wirekubepeers"),
        ("delete", "wirekubepeers"),
        ("patch", "wirekubemeshes"),
        ("patch", "wirekubemeshes/status"),
        ("delete", "wirekubepeers/status"),
    ] {
        let err = go(&agent, verb, resource, "node-a").unwrap_err();
        assert!(
            err.starts_with(&format!("User \"{AGENT}\" cannot {verb} resource")),
            "{verb} {resource}: {err}"
        );
    }
    for attrs in [
        req(
            "get",
            "",
            "secrets",
            Some("wirekube-system"),
            Some("relay-key"),
        ),
        req("list", "", "nodes", None, None),
        req("patch", "", "nodes/status", None, Some("node-a")),
        req("create", "", "events", Some("wirekube-system"), None),
        req("get", "", "/metrics", None, None),
    ] {
        assert!(authz.authorize(&agent, &attrs).is_err(), "{attrs:?}");
    }
    // The policy only concerns the agent: the operator (other RBAC) is not constrained by it.
    let operator = user(
        "system:serviceaccount:wirekube-system:wirekube-operator",
        &[],
    );
    let obj = peer("node-b");
    let admit = |who: &UserInfo| {
        policies.validate(&AdmissionRequest {
            user: who,
            operation: "UPDATE",
            group: "wirekube.io",
            version: "v1alpha1",
            resource: "wirekubepeers",
            subresource: Some("status"),
            namespace: None,
            name: "node-b",
            object: Some(&obj),
            old_object: Some(&obj),
        })
    };
    admit(&operator).unwrap();
    assert!(admit(&agent).is_err());
}

// --- ValidatingAdmissionPolicy features ---

fn policy(spec: Value) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
           "metadata": {"name": "p"}, "spec": spec})
}

fn binding(spec: Value) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
           "metadata": {"name": "b"}, "spec": spec})
}

fn engine(policy_spec: Value) -> PolicyEngine {
    let mut e = PolicyEngine::default();
    e.upsert(&policy(policy_spec));
    e.upsert(&binding(
        json!({"policyName": "p", "validationActions": ["Deny"]}),
    ));
    e
}

fn mesh_rules() -> Value {
    json!({"resourceRules": [{"apiGroups": ["wirekube.io"], "apiVersions": ["v1alpha1"],
                              "resources": ["wirekubemeshes"], "operations": ["CREATE", "UPDATE"]}]})
}

struct Req {
    user: UserInfo,
    operation: &'static str,
    resource: &'static str,
    subresource: Option<&'static str>,
    object: Value,
}

impl Req {
    fn mesh(object: Value) -> Req {
        Req {
            user: user("alice", &["devs"]),
            operation: "CREATE",
            resource: "wirekubemeshes",
            subresource: None,
            object,
        }
    }
    fn check(&self, e: &PolicyEngine) -> Result<(), String> {
        e.validate(&AdmissionRequest {
            user: &self.user,
            operation: self.operation,
            group: "wirekube.io",
            version: "v1alpha1",
            resource: self.resource,
            subresource: self.subresource,
            namespace: None,
            name: "default",
            object: Some(&self.object),
            old_object: None,
        })
    }
}

fn mesh_obj(spec: Value) -> Value {
    json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubeMesh",
           "metadata": {"name": "default", "labels": {"tier": "prod"}}, "spec": spec})
}

#[test]
fn vap_validations_messages_and_reasons() {
    let e = engine(json!({"matchConstraints": mesh_rules(), "validations": [
        {"expression": "object.spec.mtu >= 1280"},
        {"expression": "object.spec.mtu <= 9000", "message": "mtu too large"},
        {"expression": "object.spec.mtu != 1300", "messageExpression": "'mtu ' + string(object.spec.mtu) + ' is reserved'", "reason": "Invalid"},
    ]}));
    Req::mesh(mesh_obj(json!({"mtu": 1420}))).check(&e).unwrap();
    let err = Req::mesh(mesh_obj(json!({"mtu": 1000})))
        .check(&e)
        .unwrap_err();
    assert!(
        err.ends_with("denied request: failed expression: object.spec.mtu >= 1280"),
        "{err}"
    );
    let err = Req::mesh(mesh_obj(json!({"mtu": 9001})))
        .check(&e)
        .unwrap_err();
    assert!(err.ends_with("denied request: mtu too large"), "{err}");
    let err = Req::mesh(mesh_obj(json!({"mtu": 1300})))
        .check(&e)
        .unwrap_err();
    assert!(
        err.ends_with("denied request: mtu 1300 is reserved (reason: Invalid)"),
        "{err}"
    );
}

#[test]
fn vap_matching_rules_conditions_and_selectors() {
    let deny_all = json!([{"expression": "false", "message": "denied"}]);
    let e = engine(json!({"matchConstraints": mesh_rules(), "validations": deny_all}));
    assert!(Req::mesh(mesh_obj(json!({}))).check(&e).is_err());
    // Operation, resource and subresource not matched: not applied.
    let mut r = Req::mesh(mesh_obj(json!({})));
    r.operation = "DELETE";
    assert!(r.check(&e).is_ok());
    r.operation = "UPDATE";
    r.subresource = Some("status");
    assert!(
        r.check(&e).is_ok(),
        "wirekubemeshes does not match wirekubemeshes/status"
    );
    r.resource = "wirekubepeers";
    r.subresource = None;
    assert!(r.check(&e).is_ok());

    // "*/status" and excludeResourceRules.
    let e = engine(json!({"matchConstraints": {
        "resourceRules": [{"apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/status"], "operations": ["*"]}],
        "excludeResourceRules": [{"apiGroups": ["wirekube.io"], "apiVersions": ["*"], "resources": ["wirekubepeers/status"], "operations": ["*"]}],
    }, "validations": deny_all}));
    let mut r = Req::mesh(mesh_obj(json!({})));
    r.subresource = Some("status");
    assert!(r.check(&e).is_err());
    r.resource = "wirekubepeers";
    assert!(r.check(&e).is_ok(), "excluded");

    // matchConditions: false skips the policy.
    let e = engine(
        json!({"matchConstraints": mesh_rules(), "validations": deny_all,
        "matchConditions": [{"name": "devs-only", "expression": "'devs' in request.userInfo.groups"}]}),
    );
    let mut r = Req::mesh(mesh_obj(json!({})));
    assert!(r.check(&e).is_err());
    r.user = user("root", &["admins"]);
    assert!(r.check(&e).is_ok());

    // objectSelector on the object's labels.
    let mut constraints = mesh_rules();
    constraints["objectSelector"] = json!({"matchLabels": {"tier": "prod"}});
    let e = engine(json!({"matchConstraints": constraints, "validations": deny_all}));
    assert!(Req::mesh(mesh_obj(json!({}))).check(&e).is_err());
    assert!(
        Req::mesh(json!({"metadata": {"name": "default", "labels": {"tier": "dev"}}}))
            .check(&e)
            .is_ok()
    );

    // Binding matchResources narrows further.
    let mut e = engine(json!({"matchConstraints": mesh_rules(), "validations": deny_all}));
    e.upsert(&binding(json!({"policyName": "p", "validationActions": ["Deny"],
        "matchResources": {"resourceRules": [{"apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"], "operations": ["UPDATE"]}]}})));
    assert!(
        Req::mesh(mesh_obj(json!({}))).check(&e).is_ok(),
        "binding only matches UPDATE"
    );
}

#[test]
fn vap_bindings_actions_failure_policy_and_unsupported_features() {
    let deny_all = json!([{"expression": "false"}]);
    let ok = || Req::mesh(mesh_obj(json!({})));
    // No binding, or a binding without Deny: nothing enforced.
    let mut e = PolicyEngine::default();
    e.upsert(&policy(
        json!({"matchConstraints": mesh_rules(), "validations": deny_all}),
    ));
    assert!(ok().check(&e).is_ok());
    e.upsert(&binding(
        json!({"policyName": "p", "validationActions": ["Warn", "Audit"]}),
    ));
    assert!(ok().check(&e).is_ok());
    e.upsert(&binding(
        json!({"policyName": "p", "validationActions": ["Deny"]}),
    ));
    assert!(ok().check(&e).is_err());
    e.remove("ValidatingAdmissionPolicyBinding", "b");
    assert!(ok().check(&e).is_ok());

    // Runtime errors follow failurePolicy.
    let failing = json!([{"expression": "object.spec.missing == 1"}]);
    let e = engine(json!({"matchConstraints": mesh_rules(), "validations": failing}));
    let err = ok().check(&e).unwrap_err();
    assert!(
        err.contains("failed") && err.contains("object.spec.missing == 1"),
        "{err}"
    );
    let e = engine(
        json!({"matchConstraints": mesh_rules(), "failurePolicy": "Ignore", "validations": failing}),
    );
    assert!(ok().check(&e).is_ok());

    // A policy that does not compile fails the requests it matches (and only those).
    let e = engine(
        json!({"matchConstraints": mesh_rules(), "validations": [{"expression": "authorizer.group('x').check()"}]}),
    );
    let err = ok().check(&e).unwrap_err();
    assert!(err.contains("does not compile"), "{err}");
    let mut peer_req = ok();
    peer_req.resource = "wirekubepeers";
    assert!(peer_req.check(&e).is_ok());

    // Params and namespace selectors are refused, loudly.
    let e = engine(
        json!({"matchConstraints": mesh_rules(), "validations": deny_all,
        "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"}}),
    );
    assert!(ok().check(&e).unwrap_err().contains("not supported"));
    let mut constraints = mesh_rules();
    constraints["namespaceSelector"] = json!({"matchLabels": {"a": "b"}});
    let e =
        engine(json!({"matchConstraints": constraints, "validations": [{"expression": "true"}]}));
    assert!(ok().check(&e).unwrap_err().contains("namespaceSelector"));

    // Removing the policy disables it; junk is ignored.
    let mut e = engine(json!({"matchConstraints": mesh_rules(), "validations": deny_all}));
    e.remove("ValidatingAdmissionPolicy", "p");
    e.upsert(&json!(42));
    e.upsert(&json!({"kind": "ValidatingAdmissionPolicy"}));
    assert!(ok().check(&e).is_ok());
}

#[test]
fn vap_variables_see_object_old_object_and_request() {
    let e = engine(json!({"matchConstraints": mesh_rules(),
    "variables": [
        {"name": "port", "expression": "object.spec.listenPort"},
        {"name": "oldPort", "expression": "oldObject == null ? variables.port : oldObject.spec.listenPort"},
    ],
    "validations": [
        {"expression": "variables.port == variables.oldPort", "message": "listenPort is immutable"},
        {"expression": "request.operation == 'CREATE' || request.resource.resource == 'wirekubemeshes'"},
    ]}));
    let new = mesh_obj(json!({"listenPort": 51820}));
    let old = mesh_obj(json!({"listenPort": 51821}));
    let u = user("alice", &[]);
    let check = |old_object: Option<&Value>| {
        e.validate(&AdmissionRequest {
            user: &u,
            operation: if old_object.is_some() {
                "UPDATE"
            } else {
                "CREATE"
            },
            group: "wirekube.io",
            version: "v1alpha1",
            resource: "wirekubemeshes",
            subresource: None,
            namespace: None,
            name: "default",
            object: Some(&new),
            old_object,
        })
    };
    check(None).unwrap();
    check(Some(&new)).unwrap();
    let err = check(Some(&old)).unwrap_err();
    assert!(err.ends_with("listenPort is immutable"), "{err}");
}
