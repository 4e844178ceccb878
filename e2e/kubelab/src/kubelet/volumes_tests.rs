use super::*;
use serde_json::json;

fn pod(volumes: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
        "spec": {"containers": [], "volumes": volumes}
    }))
    .unwrap()
}

fn objects() -> Objects {
    let data = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect::<KeyData>()
    };
    Objects {
        secrets: [("s".to_string(), data(&[("a", "1"), ("b", "2")]))].into(),
        config_maps: [("kube-root-ca.crt".to_string(), data(&[("ca.crt", "PEM")]))].into(),
    }
}

fn plan_of(vol: serde_json::Value) -> Result<Backing> {
    let p = pod(json!([vol]));
    let v = &p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
    plan(&p, v, &objects(), &PodFacts::default())
}

fn bytes(path: &str, mode: u32, s: &str) -> FileSpec {
    FileSpec {
        path: path.into(),
        mode,
        content: Content::Bytes(s.as_bytes().to_vec()),
    }
}

#[test]
fn kube_api_access_projection() {
    let got = plan_of(json!({"name": "kube-api-access-x", "projected": {
    "defaultMode": 420,
    "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
    ]}}))
    .unwrap();
    let token = FileSpec {
        path: "token".into(),
        mode: 0o644,
        content: Content::Token {
            audience: None,
            expiration_seconds: Some(3607),
        },
    };
    let want = vec![
        token,
        bytes("ca.crt", 0o644, "PEM"),
        bytes("namespace", 0o644, "ns"),
    ];
    assert_eq!(got, Backing::Files(want));
}

#[test]
fn plans_table() {
    let cases = [
        (
            json!({"name": "v", "secret": {"secretName": "s"}}),
            Ok(Backing::Files(vec![
                bytes("a", 0o644, "1"),
                bytes("b", 0o644, "2"),
            ])),
        ),
        (
            json!({"name": "v", "secret": {"secretName": "s", "defaultMode": 256,
                   "items": [{"key": "b", "path": "sub/b.txt", "mode": 384}, {"key": "a", "path": "a"}]}}),
            Ok(Backing::Files(vec![
                bytes("sub/b.txt", 0o600, "2"),
                bytes("a", 0o400, "1"),
            ])),
        ),
        (
            json!({"name": "v", "secret": {"secretName": "nope", "optional": true}}),
            Ok(Backing::Files(vec![])),
        ),
        (
            json!({"name": "v", "secret": {"secretName": "nope"}}),
            Err("secret \"nope\" not found"),
        ),
        (
            json!({"name": "v", "secret": {"secretName": "s", "items": [{"key": "z", "path": "z"}]}}),
            Err("key \"z\" not found"),
        ),
        (
            json!({"name": "v", "secret": {"secretName": "s", "items": [{"key": "a", "path": "../x"}]}}),
            Err("invalid path"),
        ),
        (
            json!({"name": "v", "configMap": {"name": "missing"}}),
            Err("configmap \"missing\" not found"),
        ),
        (json!({"name": "v", "emptyDir": {}}), Ok(Backing::EmptyDir)),
        (
            json!({"name": "v", "hostPath": {"path": "/dev/net/tun", "type": "CharDevice"}}),
            Ok(Backing::HostPath {
                path: "/dev/net/tun".into(),
                kind: HostPathType::CharDevice,
            }),
        ),
        (
            json!({"name": "v", "hostPath": {"path": "/x"}}),
            Ok(Backing::HostPath {
                path: "/x".into(),
                kind: HostPathType::Any,
            }),
        ),
        (
            json!({"name": "v", "hostPath": {"path": "/x", "type": "Weird"}}),
            Err("unsupported hostPath type"),
        ),
        (
            json!({"name": "v", "persistentVolumeClaim": {"claimName": "c"}}),
            Err("unsupported volume type"),
        ),
        (
            json!({"name": "v", "downwardAPI": {"items": [{"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}}]}}),
            Ok(Backing::Files(vec![bytes("uid", 0o644, "u-1")])),
        ),
        (
            json!({"name": "v", "downwardAPI": {"items": [{"path": "c", "resourceFieldRef": {"resource": "limits.cpu"}}]}}),
            Err("only fieldRef"),
        ),
    ];
    for (vol, want) in cases {
        let got = plan_of(vol.clone());
        match (got, want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "{vol}"),
            (Err(e), Err(w)) => {
                assert!(e.to_string().contains(w), "{vol}: {e}");
                assert_eq!(e.reason(), "FailedMount");
            }
            (g, w) => panic!("{vol}: got {g:?}, want {w:?}"),
        }
    }
}

#[test]
fn host_path_checks() {
    use FileKind as F;
    use HostPathAction as A;
    use HostPathType as T;
    let cases = [
        (T::Any, F::Missing, Ok(A::Use)),
        (T::Directory, F::Directory, Ok(A::Use)),
        (T::Directory, F::Missing, Err(())),
        (T::DirectoryOrCreate, F::Missing, Ok(A::CreateDirectory)),
        (T::DirectoryOrCreate, F::File, Err(())),
        (T::File, F::File, Ok(A::Use)),
        (T::FileOrCreate, F::Missing, Ok(A::CreateFile)),
        (T::CharDevice, F::CharDevice, Ok(A::Use)),
        (T::CharDevice, F::File, Err(())),
        (T::Socket, F::Socket, Ok(A::Use)),
        (T::BlockDevice, F::Missing, Err(())),
    ];
    for (want, found, expect) in cases {
        assert_eq!(
            check_host_path(want, found).map_err(|_| ()),
            expect,
            "{want:?} {found:?}"
        );
    }
}

#[test]
fn binds_table() {
    let c: Container = serde_json::from_value(json!({"name": "c", "volumeMounts": [
        {"name": "a", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
        {"name": "b", "mountPath": "/etc/app.conf", "subPath": "conf/app.conf"}
    ]}))
    .unwrap();
    let vols: BTreeMap<String, PathBuf> =
        [("a".into(), "/r/a".into()), ("b".into(), "/r/b".into())].into();
    let got = binds(&c, &vols).unwrap();
    let want = vec![
        Bind {
            source: "/r/a".into(),
            target: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
            read_only: true,
        },
        Bind {
            source: "/r/b/conf/app.conf".into(),
            target: "/etc/app.conf".into(),
            read_only: false,
        },
    ];
    assert_eq!(got, want);
    let missing: BTreeMap<String, PathBuf> = [("a".into(), "/r/a".into())].into();
    assert!(
        binds(&c, &missing)
            .unwrap_err()
            .to_string()
            .contains("not declared")
    );
    let bad: Container = serde_json::from_value(json!({"name": "c", "volumeMounts": [
        {"name": "a", "mountPath": "rel"}]}))
    .unwrap();
    assert!(binds(&bad, &vols).is_err());
}
