//! What joining a node takes, without I/O: the join token (which carries the hash of the
//! cluster CA, as k3s' `K10<sha256>::server:<secret>` does), a node's certificate
//! request, and who a certificate names (CN = user, O = groups, as Kubernetes' x509
//! authenticator reads them).

use std::fmt;

/// The group every node's client certificate carries.
pub const NODES_GROUP: &str = "system:nodes";
/// The prefix of a node's user name (`system:node:<name>`).
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The signer of kubelets' client certificates (what a node's renewal asks for).
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The user the API server presents to kubelets (kubeadm's name for that certificate).
pub const APISERVER_KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

/// A join token: `K10<sha256 of the CA PEM>::server:<secret>`, or a bare secret (then
/// the CA must come from a file).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: Option<String>,
    pub secret: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("the token is empty")]
    Empty,
    #[error(
        "the token is not K10<CA hash>::server:<secret> (the master's <data-dir>/node-token): {0}"
    )]
    Malformed(&'static str),
}

impl JoinToken {
    pub fn new(ca_pem: &str, secret: &str) -> Self {
        Self {
            ca_hash: Some(ca_hash(ca_pem)),
            secret: secret.to_string(),
        }
    }

    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TokenError::Empty);
        }
        let Some(rest) = s.strip_prefix("K10") else {
            if s.contains("::") {
                return Err(TokenError::Malformed("it does not start with K10"));
            }
            return Ok(Self {
                ca_hash: None,
                secret: s.to_string(),
            });
        };
        let (hash, cred) = rest
            .split_once("::")
            .ok_or(TokenError::Malformed("no :: after the CA hash"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed(
                "the CA hash is not 64 hexadecimal digits",
            ));
        }
        let secret = cred
            .split_once(':')
            .map_or(cred, |(_, secret)| secret)
            .to_string();
        if secret.is_empty() {
            return Err(TokenError::Malformed("the secret after server: is empty"));
        }
        Ok(Self {
            ca_hash: Some(hash.to_ascii_lowercase()),
            secret,
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ca_hash {
            Some(h) => write!(f, "K10{h}::server:{}", self.secret),
            None => f.write_str(&self.secret),
        }
    }
}

/// Never printed whole: the secret is what lets a machine join.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken {{ ca_hash: {:?}, .. }}", self.ca_hash)
    }
}

/// The SHA-256 of the CA bundle as the master serves it at `/cacerts`, in hex.
pub fn ca_hash(ca_pem: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, ca_pem.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Who a certificate names: its subject's common name and organizations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// The node this identity is, when it is one (`system:node:<name>` in `system:nodes`).
    pub fn node(&self) -> Option<&str> {
        let name = self.user.strip_prefix(NODE_USER_PREFIX)?;
        (self.groups.iter().any(|g| g == NODES_GROUP) && !name.is_empty()).then_some(name)
    }
}

/// Reads the subject of a DER certificate (already verified by the TLS layer).
pub fn identity(der: &[u8]) -> Option<Identity> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    Some(Identity { user, groups })
}

/// When a DER certificate stops being valid, in seconds since the epoch.
pub fn not_after(der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// When a DER certificate starts being valid, in seconds since the epoch.
pub fn not_before(der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_before.timestamp())
}

/// A certificate request for node `name` (CN `system:node:<name>`, O `system:nodes`),
/// and its private key; both PEM. The key never leaves the node.
pub fn node_csr(name: &str) -> Result<(String, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{NODE_USER_PREFIX}{name}"),
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, NODES_GROUP);
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_say_why() {
        let t = JoinToken::new("PEM", "s3cret");
        let s = t.to_string();
        assert!(
            s.starts_with("K10") && s.ends_with("::server:s3cret"),
            "{s}"
        );
        assert_eq!(JoinToken::parse(&s).unwrap(), t);
        assert_eq!(JoinToken::parse(&format!(" {s}\n")).unwrap(), t);
        let bare = JoinToken::parse("abc").unwrap();
        assert_eq!((bare.ca_hash, bare.secret.as_str()), (None, "abc"));
        assert_eq!(JoinToken::parse(""), Err(TokenError::Empty));
        assert!(JoinToken::parse("K10abc::server:x").is_err());
        assert!(JoinToken::parse(&format!("K10{}::server:", "a".repeat(64))).is_err());
        assert!(JoinToken::parse("X10aa::server:x").is_err());
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn a_node_request_names_the_node() {
        let (csr, key) = node_csr("worker-1").unwrap();
        assert!(csr.contains("CERTIFICATE REQUEST") && key.contains("PRIVATE KEY"));
        let params = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        let issuer_key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::CertificateParams::default()
            .self_signed(&issuer_key)
            .unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(issuer.der(), issuer_key).unwrap();
        let cert = params.signed_by(&issuer).unwrap();
        let id = identity(cert.der()).unwrap();
        assert_eq!(id.user, "system:node:worker-1");
        assert_eq!(id.node(), Some("worker-1"));
        let other = Identity {
            user: "system:node:w".into(),
            groups: vec![],
        };
        assert_eq!(other.node(), None, "a node certificate needs system:nodes");
    }
}
