//! A container's environment from its pod, facts about the node and the Secrets and ConfigMaps
//! the pod references (fetched beforehand by the effect layer).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, Pod};

use super::error::{KubeletError, Result};
use super::expand::expand_with;

/// What the kubelet knows about a pod's place in the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub node_name: String,
    pub host_ip: String,
    /// The pod IP (the node IP for hostNetwork pods); `None` before the network is set up.
    pub pod_ip: Option<String>,
    /// ClusterIP and port of `default/kubernetes`, when known.
    pub api_service: Option<(String, u16)>,
}

/// Key → bytes of one Secret or ConfigMap (`data` and `binaryData` merged).
pub type KeyData = BTreeMap<String, Vec<u8>>;

/// The Secrets and ConfigMaps of a pod's namespace that the pod references and that exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Objects {
    pub secrets: BTreeMap<String, KeyData>,
    pub config_maps: BTreeMap<String, KeyData>,
}

/// Names of the Secrets and ConfigMaps a pod references (env, envFrom, volumes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refs {
    pub secrets: BTreeSet<String>,
    pub config_maps: BTreeSet<String>,
}

/// Every Secret and ConfigMap the pod's containers and volumes refer to.
pub fn referenced(pod: &Pod) -> Refs {
    let mut refs = Refs::default();
    let Some(spec) = &pod.spec else { return refs };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for from in c.env_from.iter().flatten() {
            if let Some(s) = &from.secret_ref {
                refs.secrets.insert(s.name.clone());
            }
            if let Some(m) = &from.config_map_ref {
                refs.config_maps.insert(m.name.clone());
            }
        }
        for src in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            if let Some(s) = &src.secret_key_ref {
                refs.secrets.insert(s.name.clone());
            }
            if let Some(m) = &src.config_map_key_ref {
                refs.config_maps.insert(m.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            refs.secrets.insert(s);
        }
        if let Some(m) = &v.config_map {
            refs.config_maps.insert(m.name.clone());
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &p.secret {
                refs.secrets.insert(s.name.clone());
            }
            if let Some(m) = &p.config_map {
                refs.config_maps.insert(m.name.clone());
            }
        }
    }
    refs
}

/// The value of a downward-API `fieldPath` (env `fieldRef` and downwardAPI volumes).
pub fn field_value(pod: &Pod, path: &str, facts: &PodFacts) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", meta.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
        return Ok(v);
    }
    let opt = |v: Option<&String>| v.cloned().unwrap_or_default();
    Ok(match path {
        "metadata.name" => opt(meta.name.as_ref()),
        "metadata.namespace" => opt(meta.namespace.as_ref()),
        "metadata.uid" => opt(meta.uid.as_ref()),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => opt(spec.and_then(|s| s.service_account_name.as_ref())),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone().unwrap_or_default(),
        other => return Err(format!("unsupported fieldPath {other:?}")),
    })
}

/// `key="value"` lines, sorted by key, as downwardAPI volumes render labels and annotations.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The variables a real kubelet adds for the API server's Service.
fn service_env(facts: &PodFacts) -> Vec<(String, String)> {
    let Some((host, port)) = &facts.api_service else {
        return Vec::new();
    };
    let url = format!("tcp://{host}:{port}");
    [
        ("KUBERNETES_SERVICE_HOST", host.clone()),
        ("KUBERNETES_SERVICE_PORT", port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string()),
        ("KUBERNETES_PORT", url.clone()),
        (&format!("KUBERNETES_PORT_{port}_TCP"), url),
        (&format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (
            &format!("KUBERNETES_PORT_{port}_TCP_PORT"),
            port.to_string(),
        ),
        (&format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Sets `name` to `value`, replacing an earlier definition in place.
fn set(env: &mut Vec<(String, String)>, name: &str, value: String) {
    match env.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value,
        None => env.push((name.to_owned(), value)),
    }
}

/// One key of a referenced object; `Ok(None)` when it is missing but optional.
fn lookup_key(
    objects: &BTreeMap<String, KeyData>,
    kind: &str,
    name: &str,
    key: &str,
    optional: Option<bool>,
) -> Result<Option<String>, String> {
    match objects.get(name).map(|o| o.get(key)) {
        Some(Some(v)) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
        _ if optional == Some(true) => Ok(None),
        Some(None) => Err(format!("key {key:?} not found in {kind} {name:?}")),
        None => Err(format!("{kind} {name:?} not found")),
    }
}

/// The value of one `valueFrom`.
fn value_from(
    src: &EnvVarSource,
    pod: &Pod,
    facts: &PodFacts,
    objects: &Objects,
) -> Result<Option<String>, String> {
    if let Some(f) = &src.field_ref {
        return field_value(pod, &f.field_path, facts).map(Some);
    }
    if let Some(s) = &src.secret_key_ref {
        return lookup_key(&objects.secrets, "secret", &s.name, &s.key, s.optional);
    }
    if let Some(m) = &src.config_map_key_ref {
        return lookup_key(
            &objects.config_maps,
            "configmap",
            &m.name,
            &m.key,
            m.optional,
        );
    }
    Err("only fieldRef, secretKeyRef and configMapKeyRef are supported".into())
}

/// The environment of `container`: the API server's Service variables, then `envFrom`, then
/// `env` (each value expanded with what is defined before it). Later definitions win.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    facts: &PodFacts,
    objects: &Objects,
) -> Result<Vec<(String, String)>> {
    let mut env = service_env(facts);
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let (kind, name, optional, pool) = match (&from.secret_ref, &from.config_map_ref) {
            (Some(s), _) => ("secret", &s.name, s.optional, &objects.secrets),
            (None, Some(m)) => ("configmap", &m.name, m.optional, &objects.config_maps),
            (None, None) => continue,
        };
        match pool.get(name) {
            Some(data) => {
                for (k, v) in data {
                    set(
                        &mut env,
                        &format!("{prefix}{k}"),
                        String::from_utf8_lossy(v).into(),
                    );
                }
            }
            None if optional == Some(true) => {}
            None => {
                return Err(KubeletError::Env {
                    name: format!("envFrom {kind}"),
                    reason: format!("{kind} {name:?} not found"),
                });
            }
        }
    }
    for EnvVar {
        name,
        value,
        value_from: src,
    } in container.env.iter().flatten()
    {
        let resolved = match (value, src) {
            (Some(v), _) => Some(expand_with(v, &env)),
            (None, Some(src)) => {
                value_from(src, pod, facts, objects).map_err(|reason| KubeletError::Env {
                    name: name.clone(),
                    reason,
                })?
            }
            (None, None) => Some(String::new()),
        };
        if let Some(v) = resolved {
            set(&mut env, name, v);
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                         "labels": {"app": "x", "b": "y\"z"}},
            "spec": {
                "nodeName": "n1", "serviceAccountName": "sa",
                "containers": [{
                    "name": "c",
                    "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"},
                                {"secretRef": {"name": "gone", "optional": true}}],
                    "env": [
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                        {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                        {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
                        {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "s", "key": "no", "optional": true}}},
                        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "mode"}}},
                        {"name": "URL", "value": "http://$(IP):80/$(NODE)/$$(NODE)"},
                        {"name": "CM_mode", "value": "override"}
                    ]
                }],
                "volumes": [
                    {"name": "v1", "secret": {"secretName": "vs"}},
                    {"name": "v2", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}]}}
                ]
            }
        }))
        .unwrap()
    }

    fn facts() -> PodFacts {
        PodFacts {
            node_name: "n1".into(),
            host_ip: "10.0.0.11".into(),
            pod_ip: Some("10.244.1.5".into()),
            api_service: Some(("10.96.0.1".into(), 443)),
        }
    }

    fn objects() -> Objects {
        let data = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect::<KeyData>()
        };
        Objects {
            secrets: [("s".to_string(), data(&[("pw", "hunter2")]))].into(),
            config_maps: [("cm".to_string(), data(&[("mode", "fast")]))].into(),
        }
    }

    #[test]
    fn resolves_every_kind_of_source() {
        let p = pod();
        let env = container_env(
            &p,
            &p.spec.as_ref().unwrap().containers[0],
            &facts(),
            &objects(),
        )
        .unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let want = [
            ("KUBERNETES_SERVICE_HOST", Some("10.96.0.1")),
            ("KUBERNETES_SERVICE_PORT", Some("443")),
            ("KUBERNETES_PORT_443_TCP_ADDR", Some("10.96.0.1")),
            ("CM_mode", Some("override")),
            ("NODE", Some("n1")),
            ("IP", Some("10.244.1.5")),
            ("HOST", Some("10.0.0.11")),
            ("NS", Some("ns")),
            ("APP", Some("x")),
            ("SA", Some("sa")),
            ("PW", Some("hunter2")),
            ("OPT", None),
            ("MODE", Some("fast")),
            ("URL", Some("http://10.244.1.5:80/n1/$(NODE)")),
        ];
        for (k, v) in want {
            assert_eq!(get(k), v, "{k}");
        }
        assert_eq!(env.iter().filter(|(n, _)| n == "CM_mode").count(), 1);
    }

    #[test]
    fn missing_required_references_fail_with_the_variable_name() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let mut no_secret = objects();
        no_secret.secrets.clear();
        let err = container_env(&p, c, &facts(), &no_secret).unwrap_err();
        assert!(
            err.to_string().contains("PW") && err.to_string().contains("\"s\""),
            "{err}"
        );
        assert_eq!(err.reason(), "CreateContainerConfigError");
        let mut no_cm = objects();
        no_cm.config_maps.clear();
        let err = container_env(&p, c, &facts(), &no_cm).unwrap_err();
        assert!(
            err.to_string().contains("configmap \"cm\" not found"),
            "{err}"
        );
    }

    #[test]
    fn field_paths() {
        let p = pod();
        let cases = [
            ("metadata.name", Ok("p")),
            ("metadata.uid", Ok("u-1")),
            ("metadata.labels['missing']", Ok("")),
            ("metadata.labels", Ok("app=\"x\"\nb=\"y\\\"z\"")),
            ("status.podIPs", Ok("10.244.1.5")),
            ("spec.hostname", Err(())),
        ];
        for (path, want) in cases {
            let got = field_value(&p, path, &facts()).map_err(|_| ());
            assert_eq!(got.as_deref().map_err(|_| ()), want, "{path}");
        }
    }

    #[test]
    fn collects_references_from_env_and_volumes() {
        let refs = referenced(&pod());
        assert_eq!(refs.secrets, ["gone", "s", "vs"].map(String::from).into());
        assert_eq!(
            refs.config_maps,
            ["cm", "kube-root-ca.crt"].map(String::from).into()
        );
    }
}
