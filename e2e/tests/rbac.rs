//! `config/rbac` grants the operator and the agent exactly what they use. A managed-relay
//! scenario runs on the real control plane (the binaries as pods, with the installed RBAC) and
//! walks the operator through every write it makes: peers created and deleted, relay objects
//! created and deleted, mesh status, leader lease, events. The API server's audit log then
//! says what each service account did: nothing it did may be forbidden by RBAC, and every
//! rule in `config/rbac` must have been used. Needs root.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use wirekube_e2e::scenario::bins::repo_root;
use wirekube_e2e::scenario::{Options, Scenario, topology};
use wirekube_lab::wait_until;

const NS: &str = "wirekube-system";

/// (service account, "group/resource[/subresource]", verb)
type Use = (String, String, String);

/// What `config/rbac` grants each of our service accounts, one entry per resource and verb.
fn granted() -> BTreeSet<Use> {
    let dir = repo_root().join("config/rbac");
    let mut roles: Vec<(String, Value)> = Vec::new();
    let mut bindings: Vec<Value> = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            match v["kind"].as_str() {
                Some(k @ ("Role" | "ClusterRole")) => {
                    let name = v["metadata"]["name"].as_str().unwrap();
                    roles.push((format!("{k}/{name}"), v));
                }
                Some("RoleBinding" | "ClusterRoleBinding") => bindings.push(v),
                _ => {}
            }
        }
    }
    let mut out = BTreeSet::new();
    for b in &bindings {
        let role = format!(
            "{}/{}",
            b["roleRef"]["kind"].as_str().unwrap(),
            b["roleRef"]["name"].as_str().unwrap()
        );
        let (_, r) = roles
            .iter()
            .find(|(n, _)| *n == role)
            .unwrap_or_else(|| panic!("binding to missing {role}"));
        for s in b["subjects"].as_array().unwrap() {
            let sa = s["name"].as_str().unwrap();
            for rule in r["rules"].as_array().unwrap() {
                for g in strs(&rule["apiGroups"]) {
                    for res in strs(&rule["resources"]) {
                        for verb in strs(&rule["verbs"]) {
                            out.insert((sa.to_owned(), format!("{g}/{res}"), verb));
                        }
                    }
                }
            }
        }
    }
    out
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// What the audit log says our service accounts did: (used, forbidden).
fn audited(log: &str) -> (BTreeSet<Use>, BTreeSet<Use>) {
    let prefix = format!("system:serviceaccount:{NS}:");
    let mut used = BTreeSet::new();
    let mut forbidden = BTreeSet::new();
    // Lenient: the log is read while the API server writes it, so its last line may be cut.
    for e in log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let Some(sa) = e["user"]["username"]
            .as_str()
            .and_then(|u| u.strip_prefix(&prefix))
        else {
            continue;
        };
        let o = &e["objectRef"];
        let Some(res) = o["resource"].as_str() else {
            continue; // discovery and other non-resource URLs
        };
        let mut resource = format!("{}/{res}", o["apiGroup"].as_str().unwrap_or(""));
        if let Some(sub) = o["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let verb = e["verb"].as_str().unwrap().to_owned();
        let decision = e["annotations"]["authorization.k8s.io/decision"].as_str();
        let target = if decision == Some("forbid") {
            &mut forbidden
        } else {
            &mut used
        };
        // A server-side apply that creates its object is a patch answered 201, and needs
        // the create permission as well.
        if verb == "patch" && e["responseStatus"]["code"] == 201 {
            target.insert((sa.to_owned(), resource.clone(), "create".into()));
        }
        target.insert((sa.to_owned(), resource, verb));
    }
    (used, forbidden)
}

/// Whether the operator has updated its Lease (a renewal or a take-over).
fn lease_renewed(log: &str) -> bool {
    let renewal = (
        "wirekube-operator".to_string(),
        "coordination.k8s.io/leases".to_string(),
        "update".to_string(),
    );
    audited(log).0.contains(&renewal)
}

fn show(set: &BTreeSet<Use>) -> String {
    set.iter()
        .map(|(sa, r, v)| format!("  {sa}: {v} {r}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn rbac_grants_exactly_what_the_binaries_use() {
    assert!(wirekube_lab::is_root(), "needs root (network namespaces)");
    let mut sc = Scenario::build(topology::seed_2_mixed(), Options::default()).expect("build");
    if let Err(e) = sc.converge() {
        panic!("{e}\n{}", sc.logs(40));
    }
    let kubectl = |sc: &Scenario, args: &[&str]| {
        sc.kubectl(args)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    };
    let patch_mesh = |sc: &Scenario, patch: &str| {
        kubectl(
            sc,
            &["patch", "wkmesh", "default", "--type=merge", "-p", patch],
        );
    };
    // Leave node-3 out of the mesh: the operator deletes its peer.
    kubectl(&sc, &["label", "node", "node-1", "node-2", "rbac-test=in"]);
    patch_mesh(&sc, r#"{"spec":{"nodeSelector":{"rbac-test":"in"}}}"#);
    wait_until(Duration::from_secs(30), "node-3's peer deleted", || {
        sc.peers().is_ok_and(|p| p.len() == 2)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", sc.logs(40)));
    // An admin cleans up the node that left, with the agent's identity (as `kubectl exec` into
    // its pod would): `cleanup` reads the node's peer for the interface name.
    let kc = sc
        .kube
        .service_account_kubeconfig(NS, "wirekube-agent", None)
        .unwrap();
    let agent = wirekube_e2e::scenario::bins::binary("wirekube-agent").unwrap();
    let (agent, kc) = (agent.to_string_lossy(), kc.to_string_lossy());
    let argv = [
        &*agent,
        "cleanup",
        "--node-name",
        "node-3",
        "--kubeconfig",
        &*kc,
    ];
    let out = sc.lab.exec(&sc.hosts["node-3"], &argv).unwrap();
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and removes the nftables table the agent made (its MSS clamp).
    let argv = ["nft", "list", "table", "inet", "wirekube_mss"];
    let listed = sc.lab.exec(&sc.hosts["node-3"], &argv).unwrap();
    assert!(
        !listed.status.success(),
        "MSS clamp left after cleanup: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
    // Switch to an external relay: the operator deletes the managed relay's objects.
    let external = format!(
        r#"{{"spec":{{"relay":{{"provider":"external","external":{{"endpoint":"{}:3478"}}}}}}}}"#,
        sc.dmz.ip()
    );
    patch_mesh(&sc, &external);
    wait_until(
        Duration::from_secs(30),
        "managed relay objects deleted",
        || {
            sc.kubectl(&[
                "-n",
                NS,
                "get",
                "deploy,svc,secret",
                "-l",
                "app.kubernetes.io/name=wirekube-relay",
                "-o",
                "name",
            ])
            .is_ok_and(|o| o.trim().is_empty())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", sc.logs(40)));

    // The leader renews its Lease (an update) two thirds into the 15 s Lease it won by
    // creating it; the steps above can end before that.
    wait_until(
        Duration::from_secs(30),
        "the operator renewed its Lease",
        || std::fs::read_to_string(sc.kube.cp.audit_log()).is_ok_and(|log| lease_renewed(&log)),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", sc.logs(40)));

    let log = std::fs::read_to_string(sc.kube.cp.audit_log()).unwrap();
    let (used, forbidden) = audited(&log);
    let granted = granted();
    let unused: BTreeSet<Use> = granted.difference(&used).cloned().collect();
    sc.shutdown().expect("clean teardown");
    assert!(
        forbidden.is_empty(),
        "config/rbac refuses requests the binaries make:\n{}",
        show(&forbidden)
    );
    assert!(
        unused.is_empty(),
        "config/rbac grants what no binary used (remove it, or exercise it here):\n{}\n\nused:\n{}",
        show(&unused),
        show(&used)
    );
}
