//! Errors of the plugin. Every one ends up as a one-line message and exit code 2.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CliError {
    #[error("cannot load the kubeconfig: {0}; check KUBECONFIG, --kubeconfig and --context")]
    Kubeconfig(String),
    #[error(
        "cannot reach the API server at {server}: {detail}; check KUBECONFIG, --context and that the cluster is up"
    )]
    Connect { server: String, detail: String },
    #[error("{what}: {detail}")]
    Api { what: String, detail: String },
    #[error(
        "no WireKubeMesh {0} in this cluster (is WireKube installed? try `kubectl wirekube doctor`)"
    )]
    NoMesh(String),
    #[error("more than one WireKubeMesh ({0}); choose one with --mesh")]
    AmbiguousMesh(String),
    #[error("node {node} is not in mesh {mesh} (its nodes: {known})")]
    UnknownNode {
        node: String,
        mesh: String,
        known: String,
    },
    #[error("explain needs two different nodes (got {0} twice)")]
    SameNode(String),
    #[error("cannot encode the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}
