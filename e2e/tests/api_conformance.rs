//! Our API on the real Kubernetes API server (`scripts/build-k8s.sh`, run in a lab DMZ): the
//! install (`kubectl apply -k config/default`) is accepted, every sample is admitted and
//! defaulted, every bad example is refused with the field named, and an agent's pod-bound
//! service-account token may write its own node's WireKubePeer status and nothing else.
//! Needs root.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use wirekube_crds::WireKubePeer;
use wirekube_e2e::kube_lab::KubeLab;
use wirekube_e2e::scenario::bins::repo_root;

const NS: &str = "wirekube-system";

fn mesh(spec: Value) -> Value {
    json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubeMesh",
           "metadata": {"name": "default"}, "spec": spec})
}

/// Creates `obj` as the admin; Ok(stored object) or Err(the API server's message).
fn create_mesh(k: &KubeLab, obj: Value) -> Result<Value, String> {
    k.admin
        .run(move |c| async move {
            let api: Api<kube::api::DynamicObject> = Api::all_with(c, &mesh_resource());
            let obj: kube::api::DynamicObject = serde_json::from_value(obj)?;
            let r = api.create(&PostParams::default(), &obj).await;
            if r.is_ok() {
                api.delete("default", &DeleteParams::default()).await?;
            }
            Ok(r.map(|o| serde_json::to_value(o).unwrap_or_default()))
        })
        .expect("API call")
        .map_err(|e| match e {
            kube::Error::Api(s) => s.message,
            other => format!("{other}"),
        })
}

fn mesh_resource() -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: "wirekube.io".into(),
        version: "v1alpha1".into(),
        api_version: "wirekube.io/v1alpha1".into(),
        kind: "WireKubeMesh".into(),
        plural: "wirekubemeshes".into(),
    }
}

#[test]
fn install_samples_and_bad_examples_on_the_real_api_server() {
    let k = KubeLab::start("apc").unwrap();
    let out = k.install().unwrap();
    for want in [
        "customresourcedefinition.apiextensions.k8s.io/wirekubemeshes.wirekube.io",
        "validatingadmissionpolicy.admissionregistration.k8s.io/wirekube-agent-own-peer",
        "deployment.apps/wirekube-operator",
        "daemonset.apps/wirekube-agent",
    ] {
        assert!(out.contains(want), "install output lacks {want}:\n{out}");
    }

    // Every sample is admitted and defaulted by the real server.
    let mut n = 0;
    for entry in std::fs::read_dir(repo_root().join("config/samples")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("mesh-") {
            continue;
        }
        let obj: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let stored = create_mesh(&k, obj).unwrap_or_else(|e| panic!("{name} refused: {e}"));
        assert_eq!(stored["spec"]["listenPort"], 51820, "{name}");
        assert_eq!(stored["spec"]["mtu"], 1420, "{name}");
        assert!(
            stored["spec"]["relay"]["directTimeout"].is_string(),
            "{name}"
        );
        n += 1;
    }
    assert_eq!(n, 5, "samples found");

    // spec: {} gets every default.
    let s = create_mesh(&k, mesh(json!({}))).unwrap()["spec"].clone();
    assert_eq!(s["meshCIDR"], "10.99.0.0/16");
    assert_eq!(s["interfaceName"], "wirekube0");
    assert_eq!(s["relay"]["mode"], "auto");
    assert_eq!(s["relay"]["provider"], "managed");
    assert_eq!(s["relay"]["managed"]["port"], 3478);
    assert_eq!(s["relay"]["managed"]["serviceType"], "LoadBalancer");
    assert_eq!(s["relay"]["managed"]["replicas"], 1);

    // Unknown fields are pruned, not kept.
    let s = create_mesh(
        &k,
        mesh(json!({"meshCIDR": "10.99.0.0/16", "typo": true, "relay": {"mdoe": "always"}})),
    )
    .unwrap()["spec"]
        .clone();
    assert!(
        s.get("typo").is_none() && s["relay"].get("mdoe").is_none(),
        "{s}"
    );

    let wrong = refusals_as_documented(&k);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    k.shutdown().unwrap();
}

/// Every invalid sample in `config/samples/invalid/` is refused by the real server (as
/// `kubectl apply --dry-run=server` shows a user) naming the field on its `# field:` line with
/// the text on its `# message:` line, and `docs/operator.md` lists the sample with both.
/// Returns what differs.
fn refusals_as_documented(k: &KubeLab) -> Vec<String> {
    let docs = std::fs::read_to_string(repo_root().join("docs/operator.md")).unwrap();
    let dir = repo_root().join("config/samples/invalid");
    let mut wrong = Vec::new();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let line = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
        };
        let (Some(field), Some(message)) = (line("# field:"), line("# message:")) else {
            wrong.push(format!("{name}: needs `# field:` and `# message:` lines"));
            continue;
        };
        n += 1;
        let row = docs.lines().find(|l| l.contains(&format!("`{name}`")));
        if !row.is_some_and(|r| r.contains(&format!("`{field}`")) && r.contains(message)) {
            wrong.push(format!(
                "{name}: docs/operator.md has no row with `{field}` and `{message}`"
            ));
        }
        let file = path.to_string_lossy();
        match k.kubectl(&["apply", "--dry-run=server", "-f", &file]) {
            Ok(out) => wrong.push(format!("{name}: admitted ({})", out.trim())),
            Err(e) => {
                let e = e.to_string();
                let named = e.contains(&format!("{field}:"));
                if !named || !e.contains(message) {
                    wrong.push(format!("{name}: want `{field}: ... {message}`, got: {e}"));
                }
            }
        }
    }
    assert!(n >= 22, "only {n} invalid samples in {}", dir.display());
    wrong
}

/// Requests the API server dispatched in WireKube's priority level
/// (config/flowcontrol/peer-writes.yaml), from its metrics.
fn peer_writes_dispatched(k: &KubeLab) -> u64 {
    let metrics = k.kubectl(&["get", "--raw", "/metrics"]).unwrap();
    let total = metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_flowcontrol_dispatched_requests_total{")
                && l.contains(r#"flow_schema="wirekube-peer-writes""#)
                && l.contains(r#"priority_level="wirekube-peer-writes""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    total as u64
}

fn peer(name: &str, ip: &str) -> WireKubePeer {
    serde_json::from_value(json!({
        "apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubePeer", "metadata": {"name": name},
        "spec": {"mesh": "default", "meshIP": ip, "meshCIDR": "10.99.0.0/16", "interfaceName": "wk0",
            "listenPort": 51820, "mtu": 1380, "relayMode": "auto", "directTimeout": "30s"}
    }))
    .unwrap()
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other:?}"),
    }
}

#[test]
fn agent_token_writes_only_its_own_peer_status() {
    agent_token_is_confined("apt", "config/default", NS);
}

/// Installed into another namespace (kustomize's `namespace:`), the agent gets its Secret
/// there and the ValidatingAdmissionPolicy still confines it to its own node's peer.
#[test]
fn agent_token_is_confined_in_another_install_namespace() {
    agent_token_is_confined("apn", "config/examples/custom-namespace", "network-system");
}

fn agent_token_is_confined(lab: &str, kustomization: &str, ns: &'static str) {
    let k = KubeLab::start(lab).unwrap();
    let out = k.install_from(kustomization).unwrap();
    assert!(out.contains(&format!("namespace/{ns} ")), "{out}");
    for n in ["n1", "n2"] {
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}});
        let f = k.cp.dir.join(format!("{n}.json"));
        std::fs::write(&f, node.to_string()).unwrap();
        k.kubectl(&["create", "-f", &f.to_string_lossy()]).unwrap();
    }
    k.admin
        .run(|c| async move {
            let api: Api<WireKubePeer> = Api::all(c);
            for (n, ip) in [("n1", "10.99.0.1/16"), ("n2", "10.99.0.2/16")] {
                api.create(&PostParams::default(), &peer(n, ip)).await?;
            }
            Ok(())
        })
        .unwrap();

    let dispatched_before = peer_writes_dispatched(&k);
    let kc = k.service_account_kubeconfig(ns, "wirekube-agent", Some("n1"));
    let agent = k.client(&kc.unwrap()).unwrap();
    agent
        .run(|c| async move {
            let api: Api<WireKubePeer> = Api::all(c.clone());
            assert_eq!(
                api.list(&ListParams::default()).await?.items.len(),
                2,
                "reads allowed"
            );
            let st = json!({"status": {"observedGeneration": 1}});
            api.patch_status("n1", &PatchParams::default(), &Patch::Merge(&st))
                .await?;
            let apply = json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubePeer",
                "metadata": {"name": "n1"}, "status": {"observedGeneration": 2}});
            api.patch_status(
                "n1",
                // Forced, as the agent applies (the merge patch above made another manager).
                &PatchParams::apply("wirekube-agent").force(),
                &Patch::Apply(&apply),
            )
            .await?;
            // Another node's status: refused by the ValidatingAdmissionPolicy, with its message.
            let err = api
                .patch_status("n2", &PatchParams::default(), &Patch::Merge(&st))
                .await
                .unwrap_err();
            let msg = format!("{err}");
            assert!(
                msg.contains("may only write the WireKubePeer of its own node, not n2"),
                "{msg}"
            );
            assert_eq!(code(err), 403);
            // Spec, create, delete, PUT of status: refused by RBAC.
            let spec = Patch::Merge(json!({"spec": {"mtu": 1280}}));
            assert_eq!(
                code(
                    api.patch("n1", &PatchParams::default(), &spec)
                        .await
                        .unwrap_err()
                ),
                403
            );
            let new = peer("n3", "10.99.0.3/16");
            assert_eq!(
                code(api.create(&PostParams::default(), &new).await.unwrap_err()),
                403
            );
            assert_eq!(
                code(
                    api.delete("n1", &DeleteParams::default())
                        .await
                        .unwrap_err()
                ),
                403
            );
            let cur = api.get("n1").await?;
            assert_eq!(
                code(
                    api.replace_status("n1", &PostParams::default(), &cur)
                        .await
                        .unwrap_err()
                ),
                403
            );
            // Secrets: only the relay token Secret, by name; no Nodes list.
            let secrets: Api<Secret> = Api::namespaced(c.clone(), ns);
            assert_eq!(
                code(secrets.list(&ListParams::default()).await.unwrap_err()),
                403
            );
            assert_eq!(code(secrets.get("other").await.unwrap_err()), 403);
            let pinned = |n: &str| ListParams::default().fields(&format!("metadata.name={n}"));
            assert!(
                secrets
                    .list(&pinned("wirekube-relay-default"))
                    .await
                    .is_ok()
            );
            assert_eq!(code(secrets.list(&pinned("other")).await.unwrap_err()), 403);
            // The agent watches its Secret (list + watch by name) and never gets it.
            assert_eq!(
                code(secrets.get("wirekube-relay-default").await.unwrap_err()),
                403
            );
            Ok(())
        })
        .unwrap();
    // The agent's six WireKubePeer writes above (create, patch, update; allowed or refused,
    // the priority level admits them before authorization) went through WireKube's API
    // priority level, whatever the install namespace; its reads and the delete did not.
    let after_agent = peer_writes_dispatched(&k);
    assert_eq!(
        after_agent - dispatched_before,
        6,
        "the agent's WireKubePeer writes in the wirekube-peer-writes level"
    );
    // So does the operator's spec write.
    let kc = k.service_account_kubeconfig(ns, "wirekube-operator", None);
    k.client(&kc.unwrap())
        .unwrap()
        .run(|c| async move {
            let spec = Patch::Merge(json!({"spec": {"mtu": 1300}}));
            Api::<WireKubePeer>::all(c)
                .patch("n1", &PatchParams::default(), &spec)
                .await?;
            Ok(())
        })
        .unwrap();
    assert_eq!(peer_writes_dispatched(&k) - after_agent, 1);

    // A token of the same service account that is not bound to a pod carries no node name:
    // the policy refuses its status writes.
    let kc = k.service_account_kubeconfig(ns, "wirekube-agent", None);
    let agent = k.client(&kc.unwrap()).unwrap();
    let err = agent
        .run(|c| async move {
            let api: Api<WireKubePeer> = Api::all(c);
            let st = json!({"status": {"observedGeneration": 3}});
            Ok(api
                .patch_status("n1", &PatchParams::default(), &Patch::Merge(&st))
                .await)
        })
        .unwrap()
        .unwrap_err();
    assert_eq!(code(err), 403);
    k.shutdown().unwrap();
}
