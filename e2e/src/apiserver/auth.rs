//! Bearer-token identities and kubeconfig files for them.

use std::collections::{BTreeMap, HashMap};

use super::rbac::UserInfo;
use super::util;

/// Who a client is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// `kubernetes-admin`, group `system:masters` (bypasses RBAC).
    Admin,
    /// `system:serviceaccount:wirekube-system:wirekube-operator`.
    Operator,
    /// `system:serviceaccount:wirekube-system:wirekube-agent` on the given node
    /// (user extra `authentication.kubernetes.io/node-name: [<node>]`).
    Agent(String),
    /// Any other user.
    User { name: String, groups: Vec<String> },
}

pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

impl Identity {
    pub fn user_info(&self) -> UserInfo {
        let sa = |name: &str| UserInfo {
            name: format!("system:serviceaccount:wirekube-system:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:wirekube-system".into(),
                "system:authenticated".into(),
            ],
            extra: BTreeMap::new(),
        };
        match self {
            Identity::Admin => UserInfo {
                name: "kubernetes-admin".into(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
                extra: BTreeMap::new(),
            },
            Identity::Operator => sa("wirekube-operator"),
            Identity::Agent(node) => {
                let mut u = sa("wirekube-agent");
                u.extra.insert(NODE_NAME_EXTRA.into(), vec![node.clone()]);
                u
            }
            Identity::User { name, groups } => {
                let mut groups = groups.clone();
                groups.push("system:authenticated".into());
                UserInfo {
                    name: name.clone(),
                    groups,
                    extra: BTreeMap::new(),
                }
            }
        }
    }

    /// A file-name friendly label.
    pub fn label(&self) -> String {
        match self {
            Identity::Admin => "admin".into(),
            Identity::Operator => "operator".into(),
            Identity::Agent(n) => format!("agent-{n}"),
            Identity::User { name, .. } => format!("user-{}", name.replace([':', '/'], "-")),
        }
    }
}

/// Tokens issued so far (kept across restarts).
#[derive(Debug, Default)]
pub struct Tokens {
    by_token: HashMap<String, UserInfo>,
    by_identity: HashMap<Identity, String>,
}

impl Tokens {
    pub fn token_for(&mut self, id: &Identity) -> String {
        if let Some(t) = self.by_identity.get(id) {
            return t.clone();
        }
        let t = format!("{}-{}", id.label(), util::random_token());
        self.by_token.insert(t.clone(), id.user_info());
        self.by_identity.insert(id.clone(), t.clone());
        t
    }
    pub fn user(&self, token: &str) -> Option<UserInfo> {
        self.by_token.get(token).cloned()
    }
}

/// A kubeconfig (YAML) for one identity against `server`. The token is also in the server URL
/// (`/t/<token>` prefix) because kubectl does not send bearer tokens over plain HTTP.
pub fn kubeconfig_yaml(server: &str, id: &Identity, token: &str) -> String {
    let user = id.label();
    let server = format!("{server}/t/{token}");
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: wirekube-test\n  cluster:\n    server: {server}\n\
         users:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: {user}\n  context:\n    \
         cluster: wirekube-test\n    user: {user}\n    namespace: default\ncurrent-context: {user}\n"
    )
}
