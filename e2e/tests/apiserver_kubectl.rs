//! Real kubectl against the test API server, as a user would use it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use wirekube_e2e::apiserver::{ApiServer, ApiServerConfig, ApiServerHandle, Identity};

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.wirekube.io
spec:
  group: test.wirekube.io
  scope: Cluster
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wdg], categories: [wirekube]}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Ready, type: string, jsonPath: ".status.conditions[?(@.type=='Ready')].status"}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string, default: blue}
          status:
            type: object
            properties:
              conditions:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [type]
                items:
                  type: object
                  required: [type, status]
                  properties:
                    type: {type: string}
                    status: {type: string}
"#;

struct Kubectl {
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(server: &ApiServerHandle) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("admin.kubeconfig");
        server
            .write_kubeconfig(&Identity::Admin, &kubeconfig)
            .unwrap();
        Kubectl { kubeconfig, dir }
    }

    fn file(&self, name: &str, content: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .args(args)
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(Duration::from_secs(30), self.cmd(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .unwrap();
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), s(&out.stdout), s(&out.stderr))
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed: {err}\n{out}");
        out
    }

    async fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(!ok, "kubectl {args:?} unexpectedly succeeded: {out}");
        err
    }

    async fn poll(&self, args: &[&str], what: &str, pred: impl Fn(bool, &str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (ok, out, err) = self.run(args).await;
            if pred(ok, &out) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {out} {err}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn start() -> ApiServerHandle {
    let cfg = ApiServerConfig {
        lb_pool: vec!["10.250.0.10".parse().unwrap()],
        ..ApiServerConfig::default()
    };
    ApiServer::start(cfg).await.unwrap()
}

/// Reads lines from a child's stdout until one satisfies `pred`, with a deadline.
async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line with {what} before the deadline"))
            .unwrap()
            .unwrap_or_else(|| panic!("stream ended before {what}"));
        if pred(&line) {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_custom_resource_lifecycle() {
    let server = start().await;
    let k = Kubectl::new(&server);
    let crd = k.file("crd.yaml", WIDGET_CRD);
    k.ok(&["apply", "--server-side", "-f", &crd]).await;
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.test.wirekube.io",
        "--timeout=10s",
    ])
    .await;

    let res = k.ok(&["api-resources", "--categories", "wirekube"]).await;
    assert!(
        res.contains("widgets") && res.contains("wdg") && res.contains("Widget"),
        "{res}"
    );

    let w1 = k.file(
        "w1.yaml",
        "apiVersion: test.wirekube.io/v1alpha1\nkind: Widget\nmetadata: {name: w1, labels: {app: demo}}\nspec: {size: 3}\n",
    );
    let out = k.ok(&["apply", "--server-side", "-f", &w1]).await;
    assert!(
        out.contains("widget.test.wirekube.io/w1 serverside-applied"),
        "{out}"
    );

    // Printer columns via the short name; defaults from the schema.
    let out = k.ok(&["get", "wdg"]).await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SIZE", "READY", "AGE"]);
    assert!(out.lines().nth(1).unwrap().starts_with("w1"), "{out}");
    let yaml = k
        .ok(&["get", "widget", "w1", "-o", "yaml", "--show-managed-fields"])
        .await;
    assert!(
        yaml.contains("size: 3") && yaml.contains("color: blue"),
        "{yaml}"
    );
    assert!(
        yaml.contains("manager: kubectl") && yaml.contains("operation: Apply"),
        "{yaml}"
    );
    assert!(
        k.ok(&["get", "wdg", "-l", "app in (demo,x)", "-o", "name"])
            .await
            .contains("widget.test.wirekube.io/w1")
    );
    assert!(
        k.ok(&["get", "wdg", "-l", "app=other", "-o", "name"])
            .await
            .trim()
            .is_empty()
    );

    // Watch: see a change made by another client.
    let mut child = k
        .cmd(&["get", "wdg", "-w"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    read_until(&mut lines, "the initial row", |l| l.starts_with("w1")).await;
    k.ok(&[
        "patch",
        "wdg",
        "w1",
        "--type=merge",
        "-p",
        r#"{"spec":{"size":5}}"#,
    ])
    .await;
    let row = read_until(&mut lines, "the updated row", |l| {
        l.starts_with("w1") && l.split_whitespace().nth(1) == Some("5")
    })
    .await;
    assert!(row.contains('5'));
    child.kill().await.unwrap();

    // Status subresource: the main endpoint ignores status; /status writes it.
    k.ok(&[
        "patch",
        "wdg",
        "w1",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
    ])
    .await;
    assert_eq!(
        k.ok(&["get", "wdg", "w1", "-o", "jsonpath={.status}"])
            .await,
        ""
    );
    let gen_before = k
        .ok(&["get", "wdg", "w1", "-o", "jsonpath={.metadata.generation}"])
        .await;
    k.ok(&[
        "patch",
        "wdg",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
    ])
    .await;
    k.ok(&["wait", "--for=condition=Ready", "wdg/w1", "--timeout=10s"])
        .await;
    let gen_after = k
        .ok(&["get", "wdg", "w1", "-o", "jsonpath={.metadata.generation}"])
        .await;
    assert_eq!(
        gen_before, gen_after,
        "status writes do not bump generation"
    );
    assert_eq!(gen_after, "2", "the spec change bumped it once");
    let out = k.ok(&["get", "wdg", "w1"]).await;
    assert!(
        out.lines().nth(1).unwrap().split_whitespace().nth(2) == Some("True"),
        "{out}"
    );

    let desc = k.ok(&["describe", "wdg", "w1"]).await;
    assert!(
        desc.contains("Name:         w1") && desc.contains("Size:") && desc.contains("Ready"),
        "{desc}"
    );

    // Server-side apply conflicts between managers.
    let w1b = k.file(
        "w1b.yaml",
        "apiVersion: test.wirekube.io/v1alpha1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 7}\n",
    );
    let err = k
        .fails(&[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            &w1b,
        ])
        .await;
    assert!(
        err.contains("conflict") && err.contains(".spec.size"),
        "{err}"
    );
    k.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "-f",
        &w1b,
    ])
    .await;
    assert_eq!(
        k.ok(&["get", "wdg", "w1", "-o", "jsonpath={.spec.size}"])
            .await,
        "7"
    );

    // A bad object is rejected with the field named.
    let bad = k.file("bad.yaml", "apiVersion: test.wirekube.io/v1alpha1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: 0}\n");
    let err = k.fails(&["apply", "--server-side", "-f", &bad]).await;
    assert!(err.contains("spec.size"), "{err}");

    // Delete with a finalizer held, then released.
    k.ok(&[
        "patch",
        "wdg",
        "w1",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["test.wirekube.io/hold"]}}"#,
    ])
    .await;
    k.ok(&["delete", "wdg", "w1", "--wait=false"]).await;
    let ts = k
        .ok(&[
            "get",
            "wdg",
            "w1",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .await;
    assert!(
        !ts.is_empty(),
        "deletionTimestamp set while the finalizer is held"
    );
    k.ok(&[
        "patch",
        "wdg",
        "w1",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await;
    k.poll(&["get", "wdg", "w1"], "w1 to be gone", |ok, _| !ok)
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_builtin_kinds() {
    let server = start().await;
    let k = Kubectl::new(&server);
    // Typed imperative commands (`kubectl create namespace ...`) send protobuf bodies, which this
    // server refuses (415); manifests are sent as JSON.
    let err = k.fails(&["create", "namespace", "demo"]).await;
    assert!(err.contains("protobuf"), "{err}");
    let ns = k.file(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n",
    );
    k.ok(&["create", "-f", &ns]).await;
    let deploy = k.file(
        "deploy.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: relay, namespace: demo}
spec:
  selector: {matchLabels: {app: relay}}
  template:
    metadata: {labels: {app: relay}}
    spec:
      containers:
      - name: relay
        image: ghcr.io/wirekube/relay:v1
        env: [{name: A, value: "1"}]
      - name: sidecar
        image: busybox
"#,
    );
    k.ok(&["apply", "--server-side", "-f", &deploy]).await;
    // Strategic merge patch (kubectl's default): containers merge by name, env by name.
    k.ok(&[
        "-n",
        "demo",
        "patch",
        "deployment",
        "relay",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"relay","image":"ghcr.io/wirekube/relay:v2","env":[{"name":"B","value":"2"}]}]}}}}"#,
    ])
    .await;
    let images = k
        .ok(&[
            "-n",
            "demo",
            "get",
            "deploy",
            "relay",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].image}",
        ])
        .await;
    assert_eq!(images, "ghcr.io/wirekube/relay:v2 busybox");
    let env = k
        .ok(&[
            "-n",
            "demo",
            "get",
            "deploy",
            "relay",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[*].name}",
        ])
        .await;
    assert_eq!(env, "A B");

    // The "cloud": a LoadBalancer Service gets an address from the pool and node ports.
    let svc = k.file(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: relay, namespace: demo}\nspec:\n  type: LoadBalancer\n  selector: {app: relay}\n  ports: [{name: tls, port: 443, targetPort: 8443}]\n",
    );
    k.ok(&["apply", "-f", &svc]).await;
    let ip = k
        .poll(
            &[
                "-n",
                "demo",
                "get",
                "svc",
                "relay",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ],
            "a LoadBalancer ingress",
            |ok, out| ok && !out.is_empty(),
        )
        .await;
    assert_eq!(ip, "10.250.0.10");
    let np: u16 = k
        .ok(&[
            "-n",
            "demo",
            "get",
            "svc",
            "relay",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}",
        ])
        .await
        .parse()
        .unwrap();
    assert!((30000..=32767).contains(&np));
    let svc = k.ok(&["-n", "demo", "get", "svc"]).await;
    assert!(
        svc.contains("10.250.0.10") && svc.contains("LoadBalancer"),
        "{svc}"
    );

    // Secrets: stringData is stored as data.
    let secret = k.file(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: tok, namespace: demo}\nstringData: {token: s3cret}\n",
    );
    k.ok(&["apply", "--server-side", "-f", &secret]).await;
    assert_eq!(
        k.ok(&[
            "-n",
            "demo",
            "get",
            "secret",
            "tok",
            "-o",
            "jsonpath={.data.token}"
        ])
        .await,
        "czNjcmV0"
    );

    // Deleting the namespace removes its contents.
    k.ok(&[
        "delete",
        "namespace",
        "demo",
        "--wait=true",
        "--timeout=15s",
    ])
    .await;
    assert!(
        k.fails(&["-n", "demo", "get", "deploy", "relay"])
            .await
            .contains("NotFound")
    );
    assert!(
        server
            .object("apps", "deployments", "demo", "relay")
            .is_none()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_project_crds_and_samples() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crd_dir = root.join("config/crd");
    if !crd_dir.exists() {
        eprintln!("config/crd does not exist yet; skipping");
        return;
    }
    let server = start().await;
    let k = Kubectl::new(&server);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&crd_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files.iter().filter(|f| !f.ends_with("kustomization.yaml")) {
        k.ok(&["apply", "--server-side", "-f", f.to_str().unwrap()])
            .await;
    }
    let res = k.ok(&["api-resources", "--api-group=wirekube.io"]).await;
    assert!(
        res.contains("wkpeer") && res.contains("wirekubemeshes"),
        "{res}"
    );
    let samples = root.join("config/samples");
    let mut n = 0;
    for e in std::fs::read_dir(&samples).into_iter().flatten() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") && !p.ends_with("kustomization.yaml") {
            k.ok(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                p.to_str().unwrap(),
            ])
            .await;
            n += 1;
        }
    }
    if n > 0 {
        let out = k.ok(&["get", "wirekubemeshes"]).await;
        assert!(out.lines().count() >= 2, "{out}");
    }
    let out = k.ok(&["get", "wkpeer"]).await;
    assert!(out.is_empty() || out.contains("NAME"), "{out}");
    server.shutdown().await;
}
