//! The cluster CA and the API server's serving certificate (rcgen), and the rustls config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("failed to read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to generate a certificate")]
    Generate(#[from] rcgen::Error),
    #[error("failed to build the TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error("no usable {0} in PEM file")]
    Pem(&'static str),
}

/// The cluster CA (its key stays under the data dir) and this server's key pair.
pub struct Pki {
    pub ca_pem: String,
    ca_key: KeyPair,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn certs(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem("certificate"))
}

fn private_key(pem: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .ok()
        .flatten()
        .ok_or(TlsError::Pem("private key"))
}

/// How far before now a certificate's validity starts, for clocks that differ
/// between machines: five minutes as kube's signer backdates, less for a short-lived
/// certificate (a tenth of it), whose renewal point is reckoned from its start.
pub fn backdate(lifetime: std::time::Duration) -> time::Duration {
    let tenth = time::Duration::try_from(lifetime / 10).unwrap_or(time::Duration::MAX);
    tenth.min(time::Duration::minutes(5))
}

/// The CA's parameters are fixed, so the issuer can be rebuilt from its key alone.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "tinykube-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl Pki {
    /// Loads the CA from `dir` or creates it on first start, then issues a serving
    /// certificate for `sans` (IP addresses and DNS names).
    pub fn ensure(dir: &Path, sans: &[String]) -> Result<Self, TlsError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let (ca_pem, ca_key) = if ca_cert.exists() && ca_key.exists() {
            let key_pem = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
            let pem = std::fs::read_to_string(&ca_cert).map_err(io(&ca_cert))?;
            (pem, KeyPair::from_pem(&key_pem)?)
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write_private(&ca_key, &key.serialize_pem())?;
            write_private(&ca_cert, &cert.pem())?;
            (cert.pem(), key)
        };
        let mut pki = Self {
            ca_pem,
            ca_key,
            server_cert_pem: String::new(),
            server_key_pem: String::new(),
        };
        let (cert, key) = pki.issue("kube-apiserver", sans)?;
        write_private(&dir.join("server.crt"), &cert)?;
        write_private(&dir.join("server.key"), &key)?;
        pki.server_cert_pem = cert;
        pki.server_key_pem = key;
        Ok(pki)
    }

    /// The service-account signing key, `<dir>/sa.key`, made on first start.
    pub fn service_account_key(dir: &Path) -> Result<KeyPair, TlsError> {
        let path = dir.join("sa.key");
        match std::fs::read_to_string(&path) {
            Ok(pem) => Ok(KeyPair::from_pem(&pem)?),
            Err(_) => {
                let key = KeyPair::generate()?;
                write_private(&path, &key.serialize_pem())?;
                Ok(key)
            }
        }
    }

    /// Issues a certificate signed by the cluster CA; returns (cert PEM, key PEM).
    pub fn issue(&self, common_name: &str, sans: &[String]) -> Result<(String, String), TlsError> {
        let issuer = Issuer::new(ca_params(), &self.ca_key);
        let mut params = CertificateParams::new(sans.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a client certificate for user `user` in `groups` (the subject's CN and
    /// O, as kube-apiserver's x509 authenticator reads them), valid for `lifetime`;
    /// returns (cert PEM, key PEM).
    pub fn issue_client(
        &self,
        user: &str,
        groups: &[&str],
        lifetime: std::time::Duration,
    ) -> Result<(String, String), TlsError> {
        let issuer = Issuer::new(ca_params(), &self.ca_key);
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        // A little slack for clocks that differ between machines.
        params.not_before = now - backdate(lifetime);
        params.not_after = now + lifetime;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs a node's certificate request: whatever the request asks, the certificate
    /// says `system:node:<node>` in `system:nodes`, for client authentication only.
    pub fn sign_node_request(
        &self,
        node: &str,
        csr_pem: &str,
        lifetime: std::time::Duration,
    ) -> Result<String, TlsError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{}{node}", tinykube_api::pki::NODE_USER_PREFIX),
        );
        params
            .distinguished_name
            .push(DnType::OrganizationName, tinykube_api::pki::NODES_GROUP);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - backdate(lifetime);
        params.not_after = now + lifetime;
        csr.params = params;
        Ok(csr
            .signed_by(&Issuer::new(ca_params(), &self.ca_key))?
            .pem())
    }

    /// Signs a certificate request whose parameters the signer has set; the PEM.
    pub fn sign_request(
        &self,
        req: rcgen::CertificateSigningRequestParams,
    ) -> Result<String, rcgen::Error> {
        Ok(req
            .signed_by(&Issuer::new(ca_params(), &self.ca_key))?
            .pem())
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut self.ca_pem.as_bytes()) {
            roots.add(c.map_err(|_| TlsError::Pem("CA certificate"))?)?;
        }
        Ok(roots)
    }

    /// A TLS client for talking to kubelets: it trusts only the cluster CA and presents
    /// the API server's kubelet-client certificate, the one identity kubelets serve.
    pub fn client_connector(&self) -> Result<tokio_rustls::TlsConnector, TlsError> {
        let (cert, key) = self.issue(tinykube_api::pki::APISERVER_KUBELET_CLIENT, &[])?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(certs(&cert)?, private_key(&key)?)?;
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }

    /// The API server's TLS: clients may present a certificate signed by the cluster CA
    /// (nodes do), or none and a bearer token.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certs(&self.server_cert_pem)?,
                private_key(&self.server_key_pem)?,
            )?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_kept_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let first = Pki::ensure(dir.path(), &sans).unwrap();
        let second = Pki::ensure(dir.path(), &sans).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_ne!(first.server_key_pem, second.server_key_pem);
        second.server_config().unwrap();
    }
}
