//! Kubeconfig files: the ones the master and a joining node write, and the subset a
//! client reads.

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
#[serde(rename_all = "kebab-case")]
pub struct User {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A client certificate and its key, PEM in base64 (what a node's kubeconfig has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_data: Option<String>,
}

impl User {
    pub fn token(token: &str) -> Self {
        Self {
            token: Some(token.into()),
            ..Default::default()
        }
    }

    pub fn certificate(cert_pem: &str, key_pem: &str) -> Self {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        Self {
            client_certificate_data: Some(b64(cert_pem)),
            client_key_data: Some(b64(key_pem)),
            ..Default::default()
        }
    }

    /// The client certificate, PEM, when the user has one.
    pub fn certificate_pem(&self) -> Option<String> {
        let data = self.client_certificate_data.as_ref()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .ok()?;
        String::from_utf8(bytes).ok()
    }
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
    /// One cluster (CA embedded), one user, one context.
    pub fn new(name: &str, user_name: &str, server: &str, ca_pem: &str, user: User) -> Self {
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
                name: user_name.into(),
                user,
            }],
            contexts: vec![NamedContext {
                name: name.into(),
                context: Context {
                    cluster: name.into(),
                    user: user_name.into(),
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
    fn kubeconfigs_round_trip() {
        let k = Kubeconfig::new(
            "tinykube",
            "tinykube-admin",
            "https://127.0.0.1:6443",
            "PEM",
            User::token("tok"),
        );
        let back: Kubeconfig = serde_saphyr::from_str(&k.to_yaml()).unwrap();
        assert_eq!(back.current_context, "tinykube");
        assert_eq!(back.users[0].user.token.as_deref(), Some("tok"));
        assert_eq!(back.clusters[0].cluster.server, "https://127.0.0.1:6443");
        let node = Kubeconfig::new(
            "c",
            "system:node:w1",
            "https://x",
            "CA",
            User::certificate("CERT", "KEY"),
        );
        let yaml = node.to_yaml();
        assert!(
            yaml.contains("client-certificate-data") && !yaml.contains("token"),
            "{yaml}"
        );
        let back: Kubeconfig = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(
            back.users[0].user.certificate_pem().as_deref(),
            Some("CERT")
        );
    }
}
