//! ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1) evaluation.

use super::rbac::UserInfo;

/// One request, as admission sees it.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionRequest<'a> {
    pub user: &'a UserInfo,
    pub operation: &'a str,
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub object: Option<&'a serde_json::Value>,
    pub old_object: Option<&'a serde_json::Value>,
}

#[derive(Debug, Default)]
pub struct PolicyEngine {}

impl PolicyEngine {
    pub fn upsert(&mut self, _obj: &serde_json::Value) {}

    pub fn remove(&mut self, _kind: &str, _name: &str) {}

    pub fn validate(&self, _req: &AdmissionRequest) -> Result<(), String> {
        Ok(())
    }
}
