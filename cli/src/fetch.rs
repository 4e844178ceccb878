//! The thin layer that talks to the API server: kubeconfig like kubectl, then one list or
//! get per kind into a [`Snapshot`].

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use wirekube_crds::{WireKubeMesh, WireKubePeer};

use crate::error::CliError;
use crate::snapshot::{
    AGENT_DAEMONSET, CRD_NAMES, OPERATOR_DEPLOYMENT, OPERATOR_LEASE, Snapshot, peer_name,
};

/// Where to connect, as kubectl's flags say it.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// A client for `t`, and the server URL for error messages.
pub async fn connect(t: &Target) -> Result<(Client, String), CliError> {
    let opts = KubeConfigOptions {
        context: t.context.clone(),
        ..Default::default()
    };
    let bad = |e: &dyn std::fmt::Display| CliError::Kubeconfig(e.to_string());
    let mut config = match &t.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| CliError::Kubeconfig(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| bad(&e))?
        }
        // Like kubectl: KUBECONFIG or ~/.kube/config, else the in-cluster service account.
        None if t.context.is_some() => Config::from_kubeconfig(&opts).await.map_err(|e| bad(&e))?,
        None => Config::infer().await.map_err(|e| bad(&e))?,
    };
    // A dead API server should fail in seconds, not hang the terminal.
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(20));
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| CliError::Connect {
        server: server.clone(),
        detail: e.to_string(),
    })?;
    Ok((client, server))
}

/// Reads everything the reports need. The meshes are read first, so that an unreachable
/// server or missing permission is reported before anything else; the install's other
/// objects are optional (not found or forbidden: the reports say so).
pub async fn snapshot(
    client: &Client,
    server: &str,
    namespace: &str,
    mesh: Option<&str>,
) -> Result<Snapshot, CliError> {
    let err = |what: &str| {
        let what = what.to_owned();
        let server = server.to_owned();
        move |e: kube::Error| classify(&server, &what, e)
    };
    let crds_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crds = Vec::new();
    let mut crds_readable = true;
    for name in CRD_NAMES {
        match crds_api.get_opt(name).await {
            Ok(Some(c)) => crds.push(c),
            Ok(None) => {}
            Err(kube::Error::Api(s)) if s.code == 403 => crds_readable = false,
            Err(e) => return Err(err("reading the WireKube CRDs")(e)),
        }
    }
    let meshes = match Api::<WireKubeMesh>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        // No CRD: nothing to report but doctor's findings.
        Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
        Err(e) => return Err(err("listing WireKubeMeshes")(e)),
    };
    let mesh = pick_mesh(meshes, mesh)?;
    let mut peers = match &mesh {
        None => Vec::new(),
        Some(_) => {
            Api::<WireKubePeer>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map_err(err("listing WireKubePeers"))?
                .items
        }
    };
    let mesh_name = mesh
        .as_ref()
        .and_then(|m| m.metadata.name.clone())
        .unwrap_or_default();
    peers.retain(|p| p.spec.mesh == mesh_name);
    peers.sort_by_key(peer_name);
    Ok(Snapshot {
        namespace: namespace.to_owned(),
        mesh,
        peers,
        // Optional: a user may read the mesh without being allowed to list nodes.
        nodes: Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default(),
        crds,
        crds_readable,
        lease: optional_get(
            Api::<Lease>::namespaced(client.clone(), namespace),
            OPERATOR_LEASE,
        )
        .await,
        operator: optional_get(
            Api::<Deployment>::namespaced(client.clone(), namespace),
            OPERATOR_DEPLOYMENT,
        )
        .await,
        agents: optional_get(
            Api::<DaemonSet>::namespaced(client.clone(), namespace),
            AGENT_DAEMONSET,
        )
        .await,
        taken_at: jiff::Timestamp::now(),
    })
}

/// `--mesh`, else the only mesh there is.
fn pick_mesh(
    mut meshes: Vec<WireKubeMesh>,
    want: Option<&str>,
) -> Result<Option<WireKubeMesh>, CliError> {
    match want {
        Some(name) => match meshes
            .iter()
            .position(|m| m.metadata.name.as_deref() == Some(name))
        {
            Some(i) => Ok(Some(meshes.swap_remove(i))),
            None => Err(CliError::NoMesh(name.to_owned())),
        },
        None if meshes.len() > 1 => {
            let names: Vec<String> = meshes
                .iter()
                .filter_map(|m| m.metadata.name.clone())
                .collect();
            Err(CliError::AmbiguousMesh(names.join(", ")))
        }
        None => Ok(meshes.pop()),
    }
}

async fn optional_get<K>(api: Api<K>, name: &str) -> Option<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.ok().flatten()
}

/// An answer from the server is an API error; anything else means we never got one.
fn classify(server: &str, what: &str, e: kube::Error) -> CliError {
    match e {
        kube::Error::Api(s) => CliError::Api {
            what: what.to_owned(),
            detail: format!("{} ({} {})", s.message, s.code, s.reason),
        },
        other => CliError::Connect {
            server: server.to_owned(),
            detail: error_chain(&other),
        },
    }
}

/// kube's top-level messages ("HyperError: ...") hide the cause (refused, TLS, DNS).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(name: &str) -> WireKubeMesh {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "wirekube.io/v1alpha1", "kind": "WireKubeMesh",
            "metadata": {"name": name}, "spec": {}}))
        .unwrap()
    }

    fn name(m: Option<WireKubeMesh>) -> Option<String> {
        m.and_then(|m| m.metadata.name)
    }

    #[test]
    fn the_only_mesh_or_the_named_one() {
        assert_eq!(
            name(pick_mesh(vec![mesh("a")], None).unwrap()),
            Some("a".into())
        );
        assert_eq!(name(pick_mesh(vec![], None).unwrap()), None);
        let two = || vec![mesh("a"), mesh("b")];
        assert_eq!(name(pick_mesh(two(), Some("b")).unwrap()), Some("b".into()));
        let err = pick_mesh(two(), None).unwrap_err().to_string();
        assert_eq!(
            err,
            "more than one WireKubeMesh (a, b); choose one with --mesh"
        );
        let err = pick_mesh(two(), Some("c")).unwrap_err().to_string();
        assert!(
            err.starts_with("no WireKubeMesh c in this cluster"),
            "{err}"
        );
    }

    #[test]
    fn transport_errors_read_as_unreachable_and_answers_as_api_errors() {
        let status = kube::core::Status {
            code: 403,
            message: "forbidden".into(),
            reason: "Forbidden".into(),
            ..Default::default()
        };
        let e = classify(
            "https://x/",
            "listing WireKubePeers",
            kube::Error::Api(Box::new(status)),
        );
        assert_eq!(
            e.to_string(),
            "listing WireKubePeers: forbidden (403 Forbidden)"
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = classify("https://x/", "listing", kube::Error::ReadEvents(io));
        assert!(
            e.to_string()
                .starts_with("cannot reach the API server at https://x/: "),
            "{e}"
        );
    }
}
