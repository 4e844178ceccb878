//! Kubernetes RBAC authorization over Roles, ClusterRoles and their bindings.

use std::collections::BTreeMap;
use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RbacError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Yaml {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
}

/// The authenticated identity of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request does, as the authorizer sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAttributes {
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Default)]
pub struct Authorizer {}

impl Authorizer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn upsert(&mut self, _obj: &serde_json::Value) {}

    pub fn remove(&mut self, _kind: &str, _namespace: Option<&str>, _name: &str) {}

    pub fn authorize(&self, _user: &UserInfo, _attrs: &RequestAttributes) -> Result<(), String> {
        Err("not implemented".into())
    }

    pub fn load_yaml_dir(&mut self, _dir: &Path) -> Result<usize, RbacError> {
        Ok(0)
    }
}
