//! Hostile or cloned nodes against the real control plane (etcd, kube-apiserver,
//! controller-manager in a lab DMZ; WireKube's namespace, CRDs and RBAC applied as shipped)
//! and the real operator binary, authenticated as its shipped ServiceAccount. No kubelet and
//! no agent: the test writes the Nodes and the agents' statuses itself, as the admin.
//!
//! - Two nodes reporting one public key (a VM image cloned with its key) are quarantined:
//!   absent from the third node's spec, named by the mesh's `PublicKeysValid` condition, the
//!   peers' quarantine annotation and an Event; as soon as one regenerates, all three list
//!   each other. A malformed key never gets in: the API server refuses it.
//! - A peer write the API server refuses (here a ValidatingAdmissionPolicy) does not stop the
//!   operator's other writes of the pass, nor the deletion of a leaver's peer; the failure is
//!   named by `PeersWritten`, and the node converges once the policy is gone.
//!
//! Needs root and `target/debug/wirekube-operator` (`cargo build --bins -p wirekube-operator`).

use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use wirekube_crds::{QUARANTINE_ANNOTATION, WireKubeMesh, WireKubePeer};
use wirekube_e2e::kube_lab::KubeLab;
use wirekube_e2e::scenario::bins;
use wirekube_lab::wait_for;

const NS: &str = "wirekube-system";
const SELECTOR: &str = "wirekube.io/enabled";
/// Distinct, well-formed keys (base64 of 32 bytes).
const KEY_CLONED: &str = "YNqHbfBQKaGvzefgLJGJVgUoJfT2ECuTYwRYeKiM8ig=";
const KEY_C: &str = "cG9vbC0wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
const KEY_NEW: &str = "bmV3LWtleS1mb3ItYgAAAAAAAAAAAAAAAAAAAAAAAAA=";
const KEY_D: &str = "ZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGRkZGQ=";
/// Long enough for the operator's first pass after a start (cache sync, debounce).
const T: Duration = Duration::from_secs(30);

/// The lab with WireKube's API installed and the operator running; `prepare` runs before the
/// operator starts (e.g. to install an admission policy).
fn start(tag: &str, prepare: impl FnOnce(&KubeLab)) -> KubeLab {
    assert!(wirekube_lab::is_root(), "needs root (network namespaces)");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let k = KubeLab::start(tag).expect("lab control plane");
    k.install_api().expect("namespace, CRDs and RBAC");
    prepare(&k);
    let kc = k
        .service_account_kubeconfig(NS, "wirekube-operator", None)
        .expect("operator token");
    let mut cmd = Command::new(bins::binary("wirekube-operator").expect("operator binary"));
    cmd.arg("--kubeconfig")
        .arg(&kc)
        .args(["--namespace", NS, "--identity", "hostile-test"])
        .args(["--metrics-listen", "127.0.0.1:18080", "--debounce-ms", "50"])
        .env("RUST_LOG", "info");
    k.lab.spawn(&k.dmz, cmd).expect("operator started");
    k
}

fn add_node(k: &KubeLab, name: &str, ip: &str) {
    let (name, ip) = (name.to_owned(), ip.to_owned());
    k.run_admin(move |c| async move {
        let api: Api<Node> = Api::all(c);
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {SELECTOR: "true"}},
        }))?;
        api.create(&PostParams::default(), &node).await?;
        let st = json!({"status": {"addresses": [{"type": "InternalIP", "address": ip}]}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(st))
            .await?;
        Ok(())
    })
}

fn apply_mesh(k: &KubeLab) {
    k.run_admin(|c| async move {
        let body = json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubeMesh",
            "metadata": {"name": "default"},
            "spec": {"meshCIDR": "10.99.0.0/24", "nodeSelector": {SELECTOR: "true"},
                     "relay": {"mode": "never"}}});
        Api::<WireKubeMesh>::all(c)
            .patch("default", &PatchParams::apply("test"), &Patch::Apply(&body))
            .await?;
        Ok(())
    })
}

/// Reports `key` for `node` as its agent would (status subresource); the API server's
/// refusal, if any.
fn report(k: &KubeLab, node: &str, key: &str, ip: &str) -> Result<(), String> {
    let node = node.to_owned();
    let st = json!({"status": {"publicKey": key, "natType": "open", "publicIP": ip,
        "candidates": [{"kind": "host", "address": format!("{ip}:51820"), "prefixLength": 24}]}});
    k.run_admin(move |c| async move {
        let r = Api::<WireKubePeer>::all(c)
            .patch_status(&node, &PatchParams::default(), &Patch::Merge(st))
            .await;
        Ok(r.map(|_| ()).map_err(|e| e.to_string()))
    })
}

fn peers(k: &KubeLab) -> Vec<WireKubePeer> {
    k.run_admin(|c| async move {
        Ok(Api::<WireKubePeer>::all(c)
            .list(&Default::default())
            .await?
            .items)
    })
}

fn peer<'a>(ps: &'a [WireKubePeer], name: &str) -> Option<&'a WireKubePeer> {
    ps.iter().find(|p| p.metadata.name.as_deref() == Some(name))
}

/// The names `node`'s spec lists, with a key.
fn listed(ps: &[WireKubePeer], node: &str) -> Option<Vec<String>> {
    let p = peer(ps, node)?;
    Some(
        (p.spec.peers.iter())
            .filter(|e| !e.public_key.is_empty())
            .map(|e| e.name.clone())
            .collect(),
    )
}

fn mesh_condition(k: &KubeLab, ty: &str) -> Option<(String, String, String)> {
    let ty = ty.to_owned();
    k.run_admin(move |c| async move {
        let m = Api::<WireKubeMesh>::all(c).get("default").await?;
        Ok((m.status.unwrap_or_default().conditions.into_iter())
            .find(|x| x.type_ == ty)
            .map(|x| (x.status, x.reason, x.message)))
    })
}

/// The operator's events with `reason`: note and how many times it was published.
fn events(k: &KubeLab, reason: &str) -> Vec<(String, i32)> {
    let reason = reason.to_owned();
    k.run_admin(move |c| async move {
        let evs = Api::<Event>::all(c).list(&Default::default()).await?;
        Ok((evs.items.into_iter())
            .filter(|e| e.reason.as_deref() == Some(reason.as_str()))
            .map(|e| {
                let n = e.series.map_or(1, |s| s.count);
                (e.note.unwrap_or_default(), n)
            })
            .collect())
    })
}

fn wait<T>(k: &KubeLab, what: &str, f: impl FnMut() -> Option<T>) -> T {
    match wait_for(T, what, f) {
        Ok((v, _)) => v,
        Err(e) => panic!(
            "{e}\n{}\n{}",
            k.kubectl(&["get", "wkmesh,wkpeer", "-o", "yaml"])
                .unwrap_or_default(),
            k.lab.logs_tail(40)
        ),
    }
}

#[test]
fn cloned_key_is_quarantined_until_one_node_regenerates() {
    let k = start("hkey", |_| {});
    for (n, ip) in [
        ("node-a", "10.0.0.1"),
        ("node-b", "10.0.0.2"),
        ("node-c", "10.0.0.3"),
    ] {
        add_node(&k, n, ip);
    }
    apply_mesh(&k);
    wait(&k, "a peer per node", || {
        (peers(&k).len() == 3).then_some(())
    });

    // A malformed or oversized key never reaches the operator: the API server refuses it.
    for bad in ["not-a-key".to_string(), "A".repeat(4096)] {
        let e = report(&k, "node-c", &bad, "198.51.100.3").expect_err("malformed key admitted");
        assert!(e.contains("publicKey"), "{e}");
    }
    let e = report(&k, "node-c", "not-a-key", "198.51.100.3").unwrap_err();
    assert!(
        e.contains("publicKey must be a WireGuard public key"),
        "{e}"
    );

    // node-b is a clone of node-a, key included.
    report(&k, "node-a", KEY_CLONED, "198.51.100.1").unwrap();
    report(&k, "node-b", KEY_CLONED, "198.51.100.2").unwrap();
    report(&k, "node-c", KEY_C, "198.51.100.3").unwrap();
    let ps = wait(&k, "both clones quarantined", || {
        let ps = peers(&k);
        let noted = ["node-a", "node-b"].iter().all(|n| {
            peer(&ps, n).is_some_and(|p| p.annotations().contains_key(QUARANTINE_ANNOTATION))
        });
        (noted && listed(&ps, "node-c")? == Vec::<String>::new()).then_some(ps)
    });
    for n in ["node-a", "node-b"] {
        assert_eq!(
            listed(&ps, n),
            Some(vec![]),
            "a quarantined node lists nobody"
        );
        let note = &peer(&ps, n).unwrap().annotations()[QUARANTINE_ANNOTATION];
        assert!(note.contains("node-a, node-b"), "{note}");
    }
    let (st, reason, msg) = wait(&k, "PublicKeysValid False", || {
        mesh_condition(&k, "PublicKeysValid").filter(|c| c.0 == "False")
    });
    assert_eq!(
        (st.as_str(), reason.as_str()),
        ("False", "DuplicatePublicKey")
    );
    assert!(msg.contains("node-a, node-b"), "{msg}");
    let evs = wait(&k, "DuplicatePublicKey event", || {
        Some(events(&k, "DuplicatePublicKey")).filter(|e| !e.is_empty())
    });
    assert!(
        evs.iter().all(|e| e.0.contains("node-a, node-b")),
        "{evs:?}"
    );

    // node-b regenerates its key: the next pass lists everybody again.
    report(&k, "node-b", KEY_NEW, "198.51.100.2").unwrap();
    let ps = wait(&k, "all three see each other", || {
        let ps = peers(&k);
        let full = ["node-a", "node-b", "node-c"]
            .iter()
            .all(|n| listed(&ps, n).is_some_and(|l| l.len() == 2));
        full.then_some(ps)
    });
    assert!(
        ps.iter()
            .all(|p| !p.annotations().contains_key(QUARANTINE_ANNOTATION))
    );
    let keys: Vec<&str> = (peer(&ps, "node-c").unwrap().spec.peers.iter())
        .map(|e| e.public_key.as_str())
        .collect();
    assert_eq!(keys, [KEY_CLONED, KEY_NEW]);
    wait(&k, "PublicKeysValid True", || {
        mesh_condition(&k, "PublicKeysValid").filter(|c| c.0 == "True")
    });
    wait(&k, "PublicKeyAccepted events", || {
        (events(&k, "PublicKeyAccepted").len() >= 2).then_some(())
    });
    let dup = events(&k, "DuplicatePublicKey");
    assert!(dup.len() == 1 && dup[0].1 == 1, "announced once: {dup:?}");
    k.shutdown().unwrap();
}

/// A ValidatingAdmissionPolicy refusing every write of node-b's WireKubePeer (not its status).
fn deny_node_b(k: &KubeLab) {
    let policy = json!({"apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy", "metadata": {"name": "test-deny-node-b"},
        "spec": {"failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": ["wirekube.io"],
                "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                "resources": ["wirekubepeers"]}]},
            "validations": [{"expression": "object.metadata.name != 'node-b'",
                "message": "test policy: node-b's peer may not be written"}]}});
    let binding = json!({"apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": "test-deny-node-b"},
        "spec": {"policyName": "test-deny-node-b", "validationActions": ["Deny"]}});
    for (i, obj) in [policy, binding].into_iter().enumerate() {
        let f = k.cp.dir.join(format!("deny-{i}.json"));
        std::fs::write(&f, obj.to_string()).unwrap();
        k.kubectl(&["apply", "-f", &f.to_string_lossy()]).unwrap();
    }
    // Active once the admin's own dry-run create is refused.
    wait(k, "policy active", || {
        let refused = k.run_admin(|c| async move {
            let p: WireKubePeer = serde_json::from_value(peer_body("node-b"))?;
            let r = Api::<WireKubePeer>::all(c)
                .create(
                    &PostParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &p,
                )
                .await;
            Ok(r.is_err_and(|e| e.to_string().contains("may not be written")))
        });
        refused.then_some(())
    });
}

fn peer_body(name: &str) -> Value {
    json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubePeer", "metadata": {"name": name},
        "spec": {"mesh": "default", "meshIP": "10.99.0.9", "meshCIDR": "10.99.0.0/24",
            "interfaceName": "wirekube0", "listenPort": 51820, "mtu": 1420, "relayMode": "never",
            "directTimeout": "10s"}})
}

#[test]
fn one_refused_peer_write_does_not_stop_the_others() {
    let k = start("hwrite", deny_node_b);
    let nodes = [
        ("node-a", "10.0.0.1", KEY_CLONED),
        ("node-b", "10.0.0.2", KEY_NEW),
        ("node-c", "10.0.0.3", KEY_C),
        ("node-d", "10.0.0.4", KEY_D),
    ];
    for (n, ip, _) in nodes {
        add_node(&k, n, ip);
    }
    apply_mesh(&k);
    wait(&k, "every peer but node-b's", || {
        let ps = peers(&k);
        (ps.len() == 3 && peer(&ps, "node-b").is_none()).then_some(())
    });
    let (_, reason, msg) = wait(&k, "PeersWritten False", || {
        mesh_condition(&k, "PeersWritten").filter(|c| c.0 == "False")
    });
    assert_eq!(reason, "WriteFailed");
    assert!(
        msg.contains("node-b") && msg.contains("may not be written"),
        "{msg}"
    );

    // Later passes keep writing the others: the agents' keys reach every other spec.
    for (n, _, key) in nodes.iter().filter(|n| n.0 != "node-b") {
        report(&k, n, key, "198.51.100.9").unwrap();
    }
    wait(&k, "node-a lists node-c and node-d", || {
        let l = listed(&peers(&k), "node-a")?;
        (l == ["node-c", "node-d"]).then_some(())
    });
    // A leaver's peer is deleted in the same passes.
    k.run_admin(|c| async move {
        let patch = json!({"metadata": {"labels": {SELECTOR: null}}});
        Api::<Node>::all(c)
            .patch("node-d", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .context("unlabel node-d")?;
        Ok(())
    });
    wait(&k, "node-d's peer deleted", || {
        peer(&peers(&k), "node-d").is_none().then_some(())
    });

    // The policy goes: node-b converges.
    k.run_admin(|c| async move {
        let api: Api<
            k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding,
        > = Api::all(c);
        api.delete("test-deny-node-b", &DeleteParams::default())
            .await?;
        Ok(())
    });
    wait(&k, "node-b's peer written", || {
        let ps = peers(&k);
        let b = peer(&ps, "node-b")?;
        (!b.spec.mesh_ip.is_empty() && b.spec.peers.len() == 2).then_some(())
    });
    wait(&k, "PeersWritten True", || {
        mesh_condition(&k, "PeersWritten").filter(|c| c.0 == "True")
    });
    k.shutdown().unwrap();
}
