//! Self-contained kubeconfig files (certificates embedded), one per identity.

use std::path::Path;

use base64::Engine;
use serde_json::json;

use crate::pki::{CertFiles, PkiError};

/// Writes a kubeconfig for `user` (client certificate `client`) to `path`, trusting `ca_pem`.
pub fn write(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    client: &CertFiles,
) -> Result<(), PkiError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(&client.cert_pem),
            "client-key-data": b64(&client.key_pem),
        }}],
        "contexts": [{"name": user, "context": {"cluster": "lab", "user": user}}],
        "current-context": user,
    });
    // JSON is YAML; kubectl, client-go and kube-rs all read it.
    crate::pki::write(path, &doc.to_string(), 0o600)
}
