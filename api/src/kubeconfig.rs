//! Kubeconfig files: the admin file the master writes, and the subset a client reads.

use base64::Engine;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub clusters: Vec<NamedCluster>,
    #[serde(default)]
    pub users: Vec<NamedUser>,
    #[serde(default)]
    pub contexts: Vec<NamedContext>,
    #[serde(default)]
    pub current_context: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: Cluster,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct Cluster {
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority_data: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: User,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct User {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: Context,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Context {
    pub cluster: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl Kubeconfig {
    /// The admin kubeconfig: one cluster (CA embedded), one token user, one context.
    pub fn admin(name: &str, server: &str, ca_pem: &str, token: &str) -> Self {
        let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
        Self {
            api_version: "v1".into(),
            kind: "Config".into(),
            clusters: vec![NamedCluster {
                name: name.into(),
                cluster: Cluster {
                    server: server.into(),
                    certificate_authority_data: Some(ca),
                },
            }],
            users: vec![NamedUser {
                name: format!("{name}-admin"),
                user: User {
                    token: Some(token.into()),
                },
            }],
            contexts: vec![NamedContext {
                name: name.into(),
                context: Context {
                    cluster: name.into(),
                    user: format!("{name}-admin"),
                    namespace: None,
                },
            }],
            current_context: name.into(),
        }
    }

    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("kubeconfig serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_kubeconfig_round_trips() {
        let k = Kubeconfig::admin("tinykube", "https://127.0.0.1:6443", "PEM", "tok");
        let back: Kubeconfig = serde_saphyr::from_str(&k.to_yaml()).unwrap();
        assert_eq!(back.current_context, "tinykube");
        assert_eq!(back.users[0].user.token.as_deref(), Some("tok"));
        assert_eq!(back.clusters[0].cluster.server, "https://127.0.0.1:6443");
    }
}
