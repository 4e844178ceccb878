//! `kubectl wirekube` on the real control plane (needs root and `cargo build --workspace
//! --bins`): a mesh and peers written as the operator and the agents write them (admin client,
//! their field managers), then the built plugin binary run against the lab's admin kubeconfig,
//! as a user runs it: `doctor` and `status` before WireKube is installed, then `status` (text,
//! `--problems`, JSON), `explain`, `netcheck`, `doctor` (a node whose agent is not ready, then
//! a quarantined duplicate key), and its usage/connection errors.

use std::process::Output;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use wirekube_crds::{WireKubeMesh, WireKubePeer};
use wirekube_e2e::kube_lab::KubeLab;
use wirekube_e2e::scenario::bins;

const NS: &str = "wirekube-system";
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
const RELAY: &str = "198.18.0.2:3478";

fn key(i: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([i as u8 + 1; 32])
}

/// RFC 3339 time `secs` ago.
fn ago(secs: i64) -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(secs)).to_string()
}

/// Server-side apply of `body` (a whole object, or `{status: ...}` with `status`) as `manager`.
fn apply<K>(k: &KubeLab, name: &str, manager: &str, status: bool, body: Value)
where
    K: kube::Resource<Scope = kube::core::ClusterResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let (name, manager) = (name.to_owned(), manager.to_owned());
    k.run_admin(move |c| async move {
        let api: Api<K> = Api::all(c);
        let pp = PatchParams::apply(&manager).force();
        if status {
            api.patch_status(&name, &pp, &Patch::Apply(&body)).await?;
        } else {
            api.patch(&name, &pp, &Patch::Apply(&body)).await?;
        }
        Ok(())
    })
}

fn cond(type_: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": if ok { "True" } else { "False" }, "reason": reason,
           "message": message, "lastTransitionTime": ago(600)})
}

fn mesh_status(k: &KubeLab, keys_valid: Value) {
    let body = json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubeMesh",
        "metadata": {"name": "default"},
        "status": {"conditions": [cond("Ready", true, "Reconciled", "3 nodes planned"), keys_valid],
                   "relayEndpoints": [RELAY], "nodes": {"total": 3, "ready": 2, "pending": 0}}});
    apply::<WireKubeMesh>(k, "default", "wirekube-operator", true, body);
}

/// (peer, path, reason) of each node's spec: node-1 and node-2 share a LAN, node-3 is behind
/// a symmetric NAT elsewhere; node-2 (a full cone) is planned direct to node-3.
fn plan(node: &str) -> Vec<(&'static str, &'static str, &'static str)> {
    match node {
        "node-1" => vec![
            ("node-2", "Direct", "same-site"),
            ("node-3", "Relay", "both-symmetric"),
        ],
        "node-2" => vec![
            ("node-1", "Direct", "same-site"),
            ("node-3", "Direct", "cone-symmetric"),
        ],
        _ => vec![
            ("node-1", "Relay", "both-symmetric"),
            ("node-2", "Direct", "cone-symmetric"),
        ],
    }
}

fn write_peer_spec(k: &KubeLab, i: usize, node: &str) {
    let peers: Vec<Value> = plan(node)
        .into_iter()
        .map(|(to, path, reason)| {
            let j = NODES.iter().position(|n| *n == to).unwrap_or(0);
            json!({"name": to, "publicKey": key(j), "allowedIPs": [format!("10.99.0.{}/32", j + 1)],
                   "path": path, "reason": reason})
        })
        .collect();
    let body = json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubePeer",
        "metadata": {"name": node, "labels": {"wirekube.io/mesh": "default"}},
        "spec": {"mesh": "default", "meshIP": format!("10.99.0.{}", i + 1), "meshCIDR": "10.99.0.0/16",
                 "interfaceName": "wirekube0", "listenPort": 51820, "mtu": 1420, "relayMode": "auto",
                 "relayEndpoints": [RELAY], "directTimeout": "10s", "peers": peers}});
    apply::<WireKubePeer>(k, node, "wirekube-operator", false, body);
}

/// The status node-`i`'s agent would write; node-3's dataplane failed.
fn write_agent_status(k: &KubeLab, i: usize, node: &str) {
    let (nat, public, lan) = match node {
        "node-1" => ("symmetric", "198.18.0.10", "192.168.10.11"),
        "node-2" => ("full-cone", "198.18.0.10", "192.168.10.12"),
        _ => ("symmetric", "198.18.0.20", "192.168.20.11"),
    };
    let ready = node != "node-3";
    let conns: Vec<Value> = plan(node)
        .into_iter()
        .map(|(to, _, reason)| match (node, to) {
            ("node-2", "node-3") => json!({"name": to, "path": "relay", "reason": "direct-failed",
                "fallback": true, "lastHandshake": ago(20)}),
            ("node-3", _) => json!({"name": to, "path": "down", "reason": reason}),
            (_, _) => {
                json!({"name": to, "path": if reason == "same-site" { "direct" } else { "relay" },
                "reason": reason, "lastHandshake": ago(5)})
            }
        })
        .collect();
    let body = json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubePeer",
        "metadata": {"name": node},
        "status": {"publicKey": key(i), "natType": nat, "publicIP": public, "engine": "kernel",
            "candidates": [{"kind": "host", "address": format!("{lan}:51820"), "prefixLength": 24},
                           {"kind": "srflx", "address": format!("{public}:4{i}000")}],
            "conditions": [
                cond("Ready", ready, if ready { "Ready" } else { "DataplaneNotReady" },
                     if ready { "agent reconciled the dataplane" } else { "see DataplaneReady" }),
                cond("DataplaneReady", ready, if ready { "Reconciled" } else { "Error" },
                     if ready { "converged" } else { "wireguard: module not loaded" }),
                cond("StunReachable", true, "Answered", "2 of 2 STUN server address(es) answered"),
                cond("RelayConnected", true, "Connected", &format!("connected to {RELAY}"))],
            "connections": conns}});
    apply::<WireKubePeer>(k, node, "wirekube-agent", true, body);
}

/// The operator's leader election Lease, freshly renewed.
fn write_lease(k: &KubeLab) {
    k.run_admin(|c| async move {
        let body = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "wirekube-operator", "namespace": NS},
            "spec": {"holderIdentity": "wirekube-operator-0", "leaseDurationSeconds": 3600,
                     "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}});
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(c, NS)
            .patch(
                "wirekube-operator",
                &PatchParams::apply("test").force(),
                &Patch::Apply(&body),
            )
            .await?;
        Ok(())
    })
}

/// Runs the plugin in the DMZ (where the API server is reachable) with the admin kubeconfig.
fn plugin(k: &KubeLab, args: &[&str]) -> Output {
    let bin = bins::binary("kubectl-wirekube").expect("plugin binary");
    let kc = k.cp.admin_kubeconfig();
    let (bin, kc) = (bin.to_string_lossy(), kc.to_string_lossy());
    let mut argv = vec![bin.as_ref(), "--kubeconfig", kc.as_ref()];
    argv.extend_from_slice(args);
    k.lab.exec(&k.dmz, &argv).expect("run kubectl-wirekube")
}

fn out(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output, code: i32) -> String {
    assert_eq!(o.status.code(), Some(code), "{}", out(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn kubectl_wirekube_reports_status_explain_doctor_netcheck_on_the_lab_api() {
    assert!(wirekube_lab::is_root(), "needs root (network namespaces)");
    let _ = rustls::crypto::ring::default_provider().install_default();
    bins::binary("kubectl-wirekube").expect("build it first: cargo build --workspace --bins");
    let k = KubeLab::start("cli").expect("lab control plane");
    check_before_install(&k);
    k.install_api().expect("namespace, CRDs and RBAC");
    let mesh = json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubeMesh",
        "metadata": {"name": "default"},
        "spec": {"meshCIDR": "10.99.0.0/16",
                 "relay": {"mode": "auto", "provider": "external", "external": {"endpoint": RELAY}}}});
    apply::<WireKubeMesh>(&k, "default", "test", false, mesh);
    mesh_status(
        &k,
        cond("PublicKeysValid", true, "AllValid", "3 distinct keys"),
    );
    for (i, n) in NODES.iter().enumerate() {
        write_peer_spec(&k, i, n);
        write_agent_status(&k, i, n);
    }
    write_lease(&k);

    check_status(&k);
    check_explain_and_netcheck(&k);
    check_doctor(&k);
    check_errors(&k);
    k.shutdown().expect("clean teardown");
}

/// A cluster without WireKube: doctor says what to install, status that there is no mesh.
fn check_before_install(k: &KubeLab) {
    let t = stdout(&plugin(k, &["doctor"]), 1);
    assert!(
        t.contains("[FAIL] crds      wirekubemeshes.wirekube.io is not installed"),
        "{t}"
    );
    assert!(t.contains("fix: install the CRDs"), "{t}");
    let o = plugin(k, &["status"]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(
        out(&o).contains("no WireKubeMesh at all in this cluster"),
        "{}",
        out(&o)
    );
}

fn check_status(k: &KubeLab) {
    let t = stdout(&plugin(k, &["status"]), 0);
    eprintln!("$ kubectl wirekube status\n{t}");
    for want in [
        "mesh default: Ready; 2/3 agents ready; relay: 198.18.0.2:3478",
        "1 node-1   ·   D   R",
        "2 node-2   D   ·   R*",
        "3 node-3   x   x   ·",
        "legend: D direct",
        "node-1  node-3  Relay    both-symmetric  relay",
        "direct did not come up (direct-failed); relayed while probing",
    ] {
        assert!(t.contains(want), "status lacks {want:?}:\n{t}");
    }
    let t = stdout(&plugin(k, &["status", "--problems"]), 0);
    let listed: Vec<&str> = t
        .lines()
        .skip_while(|l| !l.starts_with("FROM"))
        .skip(1)
        .collect();
    assert_eq!(
        listed.len(),
        3,
        "node-3's two directions and node-2's fallback:\n{t}"
    );
    assert!(!t.contains("node-1  node-2  Direct"), "{t}");
    let j: Value = serde_json::from_str(&stdout(&plugin(k, &["status", "-o", "json"]), 0))
        .expect("status -o json is JSON");
    assert_eq!(j["nodes"].as_array().map(Vec::len), Some(3), "{j:#}");
    let pairs = j["pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), 6, "both directions of 3 pairs: {j:#}");
    let d = pairs
        .iter()
        .find(|p| p["from"] == "node-2" && p["to"] == "node-3")
        .expect("node-2 → node-3");
    assert_eq!(
        (&d["planned"], &d["reason"]),
        (&json!("Direct"), &json!("cone-symmetric"))
    );
    assert_eq!(
        (&d["actual"], &d["fallback"]),
        (&json!("relay"), &json!(true))
    );
    assert!(
        d["handshakeAgeSeconds"]
            .as_i64()
            .is_some_and(|s| (15..120).contains(&s)),
        "{d}"
    );
    assert_eq!(
        j["matrix"][1][2],
        json!({"path": "relay", "fallback": true})
    );
    assert_eq!(j["matrix"][0][1]["path"], "direct");
}

fn check_explain_and_netcheck(k: &KubeLab) {
    let t = stdout(&plugin(k, &["explain", "node-1", "node-2"]), 0);
    for want in [
        "Why: rule 5 (same-site)",
        "both have a LAN address in 192.168.10.0/24",
        "both leave through the same public IP 198.18.0.10",
        "node-1 → node-2: Direct (same-site)",
        "node-1 → node-2: direct, last handshake",
    ] {
        assert!(t.contains(want), "explain lacks {want:?}:\n{t}");
    }
    eprintln!("$ kubectl wirekube explain node-1 node-2\n{t}");
    let t = stdout(&plugin(k, &["explain", "node-2", "node-3"]), 0);
    assert!(
        t.contains("rule 10 (cone-symmetric)") && t.contains("FELL BACK"),
        "{t}"
    );
    let t = stdout(&plugin(k, &["netcheck", "node-2"]), 0);
    eprintln!("$ kubectl wirekube netcheck node-2\n{t}");
    for want in [
        "NAT type:     full-cone",
        "public IP:    198.18.0.10",
        "198.18.0.10:41000",
        "relay:        ok",
    ] {
        assert!(t.contains(want), "netcheck lacks {want:?}:\n{t}");
    }
}

fn check_doctor(k: &KubeLab) {
    let t = stdout(&plugin(k, &["doctor"]), 1);
    eprintln!("$ kubectl wirekube doctor\n{t}");
    for want in [
        "[ok  ] crds",
        "[FAIL] agents    node-3: not Ready (wireguard: module not loaded)",
        "fix: kubectl -n wirekube-system get pods -l app.kubernetes.io/name=wirekube-agent",
        "leader wirekube-operator-0",
        "[ok  ] keys",
    ] {
        assert!(t.contains(want), "doctor lacks {want:?}:\n{t}");
    }
    // The operator quarantines a cloned key: the mesh condition and both peers' annotations.
    let msg = "nodes node-1, node-3 report the same public key";
    mesh_status(k, cond("PublicKeysValid", false, "DuplicatePublicKey", msg));
    for n in ["node-1", "node-3"] {
        let body = json!({"apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubePeer",
            "metadata": {"name": n, "annotations": {wirekube_crds::QUARANTINE_ANNOTATION: msg}}});
        apply::<WireKubePeer>(k, n, "wirekube-operator-quarantine", false, body);
    }
    let t = stdout(&plugin(k, &["doctor"]), 1);
    eprintln!("$ kubectl wirekube doctor  # after the quarantine\n{t}");
    assert!(t.contains("[FAIL] keys      DuplicatePublicKey: "), "{t}");
    let j: Value = serde_json::from_str(&stdout(&plugin(k, &["doctor", "-o", "json"]), 1))
        .expect("doctor -o json is JSON");
    let keys = j
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "keys"))
        .expect("keys check");
    assert_eq!(keys["level"], "fail", "{keys}");
    let detail = keys["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("DuplicatePublicKey") && detail.contains("quarantined: node-1, node-3"),
        "{keys}"
    );
    assert!(
        keys["fix"]
            .as_str()
            .unwrap_or("")
            .contains("/var/lib/wirekube"),
        "{keys}"
    );
    let clock = j
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "clock"));
    assert_eq!(clock.map(|c| &c["level"]), Some(&json!("ok")), "{j:#}");
}

fn check_errors(k: &KubeLab) {
    let o = plugin(k, &["explain", "node-1", "nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(
        out(&o).contains("node nope is not in mesh default (its nodes: node-1, node-2, node-3)"),
        "{}",
        out(&o)
    );
    let dead = k.cp.dir.join("dead.kubeconfig");
    let doc = json!({"apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": true}}],
        "users": [{"name": "x", "user": {"token": "x"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}], "current-context": "x"});
    std::fs::write(&dead, doc.to_string()).expect("write kubeconfig");
    let bin = bins::binary("kubectl-wirekube").expect("plugin binary");
    let o = k
        .lab
        .exec(
            &k.dmz,
            &[
                &bin.to_string_lossy(),
                "--kubeconfig",
                &dead.to_string_lossy(),
                "status",
            ],
        )
        .expect("run");
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(
        out(&o).contains("cannot reach the API server at https://127.0.0.1:1/"),
        "{}",
        out(&o)
    );
}

/// Every metric config/monitoring's alert rules and dashboard query is exported by the running
/// binaries, with at least one sample in a converged mesh (prometheus-client leaves a labelled
/// family out of a scrape until its first child exists, so a metric that only appears after an
/// event would fail here: the relay pre-creates its refusal reasons for that reason), and every
/// label value they select on is one a sample carries: the agents (host network, :9473 as the
/// chart sets), the operator pods (their pod IPs, :8080) and the relay (:9090 in the DMZ).
fn every_monitored_metric_is_exported(sc: &wirekube_e2e::scenario::Scenario) {
    use wirekube_e2e::monitoring::{scrape_scenario, used_label_matchers, used_metric_names};
    let (got, operators) = scrape_scenario(sc).expect("scrape the lab's binaries");
    assert_eq!(operators, 2, "the chart's two operator replicas");
    let used = used_metric_names(&bins::repo_root()).expect("config/monitoring");
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        assert!(
            got.declares(name),
            "{name} (config/monitoring) is exported by no binary"
        );
        assert!(
            got.samples.contains(name),
            "{name} (config/monitoring) has no sample in a converged mesh"
        );
    }
    // A label value the binaries never write makes a panel or an alert silently empty.
    let matchers = used_label_matchers(&bins::repo_root()).expect("config/monitoring");
    assert!(!matchers.is_empty(), "config/monitoring selects by label");
    for m in &matchers {
        assert!(
            got.labels.contains(m),
            "{m:?} (config/monitoring) matches no exported sample"
        );
    }
    eprintln!(
        "config/monitoring uses {} metrics, all exported; its label matchers {matchers:?} all \
         match samples",
        used.len()
    );
}

/// The plugin on a mesh the real operator, relay and agents converged (seed topology 1),
/// installed and checked by e2e/kind/check.sh as on kind: its install phase (version check,
/// `helm upgrade --install` of the chart) is the scenario's install, its check phase (rollouts,
/// every direction's path and reason as the seed table expects, `kubectl wirekube doctor`,
/// HTTP over the mesh between every pair of nodes) must pass; then `status -o json` reports an
/// RTT in every direction, `doctor` warns of nothing on a healthy install (no false alarms
/// from real agents' statuses), and the monitored metrics are exported.
#[test]
fn kubectl_wirekube_agrees_with_a_converged_lab_mesh() {
    use wirekube_e2e::kind_check;
    use wirekube_e2e::scenario::{Options, Scenario, topology};
    assert!(wirekube_lab::is_root(), "needs root (network namespaces)");
    bins::binary("kubectl-wirekube").expect("build it first: cargo build --workspace --bins");
    let opts = Options {
        install: Some(Box::new(|k| {
            eprintln!(
                "$ e2e/kind/check.sh --phase install\n{}",
                kind_check::install(k, &[])?
            );
            Ok(())
        })),
        ..Default::default()
    };
    let mut sc = Scenario::build(topology::seed_1_all_private(), opts).expect("build");
    match kind_check::check(&sc, Duration::from_secs(180)) {
        Ok(out) => eprintln!("$ e2e/kind/check.sh --phase check  # seed 1\n{out}"),
        Err(e) => panic!("{e:#}\n{}", sc.logs(40)),
    }
    // The form for a cluster whose sites are not spelled out: every direction as planned.
    if let Err(e) = kind_check::check_with(&sc, &["--expect-planned"], Duration::from_secs(30)) {
        panic!("{e:#}\n{}", sc.logs(20));
    }
    // kind's expectation (every direction direct, same-site) is wrong for seed 1: check.sh
    // must fail and name the relayed directions.
    let wrong = kind_check::check_all_alike(&sc, "direct/same-site", Duration::from_secs(4));
    let msg = format!("{:#}", wrong.expect_err("seed 1 has relayed pairs"));
    for want in [
        "timed out after 4s: every direction's path and reason as expected",
        "directions: 6 reported, 6 expected",
        "\"want\": \"direct/same-site\"",
        "\"got\": \"relay/both-symmetric (agent: both-symmetric, fallback false)\"",
    ] {
        assert!(msg.contains(want), "check.sh output lacks {want:?}:\n{msg}");
    }
    assert!(
        !msg.contains("\"from\": \"node-1\",\n  \"to\": \"node-2\""),
        "{msg}"
    );
    // check.sh saw every direction on its path; the handshake of a relayed pair may
    // reach the status a moment later (the next status write), and the first RTT sample comes
    // within one RTT request interval (10 s) of the pair coming up, so wait for both.
    let mut j = Value::Null;
    let handshakes = wirekube_lab::wait_until(
        Duration::from_secs(60),
        "a handshake and an RTT in every direction",
        || {
            j = serde_json::from_str(&stdout(&plugin(&sc.kube, &["status", "-o", "json"]), 0))
                .expect("status -o json is JSON");
            j["pairs"].as_array().is_some_and(|p| {
                p.len() == 6
                    && p.iter().all(|d| {
                        d["handshakeAgeSeconds"].as_i64().is_some()
                            && d["rttMicros"].as_u64().is_some()
                    })
            })
        },
    );
    assert!(handshakes.is_ok(), "{handshakes:?}: {j:#}");
    let pairs = j["pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), 6, "{j:#}");
    for d in pairs {
        let (a, b) = (
            d["from"].as_str().unwrap_or(""),
            d["to"].as_str().unwrap_or(""),
        );
        let want = sc.topo.expectation(a, b).expect("seed row");
        assert_eq!(
            d["actual"],
            serde_json::to_value(want.path).unwrap_or_default(),
            "{d}"
        );
        assert_eq!(
            d["reason"],
            serde_json::to_value(want.reason).unwrap_or_default(),
            "{d}"
        );
        assert!(
            d["handshakeAgeSeconds"].as_i64().is_some(),
            "a handshake: {d}"
        );
        // A round trip through the tunnel in the lab's namespaces: well under a second.
        let rtt = d["rttMicros"].as_u64().unwrap_or(0);
        assert!((1..1_000_000).contains(&rtt), "an RTT in (0, 1 s): {d}");
        eprintln!("rtt {a} -> {b} ({}): {rtt} us", d["actual"]);
    }
    eprintln!(
        "$ kubectl wirekube status  # converged seed 1\n{}",
        stdout(&plugin(&sc.kube, &["status"]), 0)
    );
    // check.sh waited for the rollouts (the operator's replicas available) and ran doctor.
    let doctor = plugin(&sc.kube, &["doctor"]);
    eprintln!(
        "$ kubectl wirekube doctor  # converged seed 1\n{}",
        out(&doctor)
    );
    assert_eq!(
        doctor.status.code(),
        Some(0),
        "{}\n{}",
        out(&doctor),
        sc.logs(20)
    );
    assert!(
        out(&doctor).contains(" 0 warnings, 0 failures"),
        "a healthy install warns of nothing: {}",
        out(&doctor)
    );
    let t = stdout(&plugin(&sc.kube, &["explain", "node-1", "node-3"]), 0);
    assert!(t.contains("rule 12 (both-symmetric)"), "{t}");
    // netcheck shows what the agent measured of the relay's STUN responder, latency included.
    let t = stdout(&plugin(&sc.kube, &["netcheck", "node-1"]), 0);
    eprintln!("$ kubectl wirekube netcheck node-1\n{t}");
    assert!(t.contains(" STUN server address(es) answered (RTT "), "{t}");
    assert!(t.contains(" ms"), "{t}");
    every_monitored_metric_is_exported(&sc);
    sc.shutdown().expect("clean teardown");
}
