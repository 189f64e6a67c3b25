//! Joining a node with the token alone: fetch the cluster CA from the master, check it
//! against the hash the token carries, check that the master's certificate is signed by
//! it (else someone is in between), then trade the token for this node's own client
//! certificate. The result is a kubeconfig the node agent uses from then on; the token
//! is not used again while that kubeconfig is good.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tinykube_api::kubeconfig::{Kubeconfig, User};
use tinykube_api::pki::{self, JoinToken};

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{0}")]
    Token(#[from] pki::TokenError),
    #[error(
        "the token has no CA hash, so the master cannot be checked: pass the master's whole node-token (K10...) or --ca-file"
    )]
    NoCa,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not an https:// URL with a host")]
    Url(String),
    #[error("cannot fetch the cluster CA from {server}: {message}")]
    Fetch { server: String, message: String },
    #[error(
        "the CA served by {server} has hash {got}, but the token expects {expected}: the token is for another cluster, or something between this machine and the master answered in its place; refusing to join"
    )]
    WrongCa {
        server: String,
        got: String,
        expected: String,
    },
    #[error(
        "the certificate {server} presented is not signed by the cluster CA (the one the token's hash names): {reason}; someone between this machine and the master may be intercepting, refusing to join"
    )]
    NotSignedByCa { server: String, reason: String },
    #[error("the CA file {path} does not match the token's CA hash")]
    CaFileMismatch { path: PathBuf },
    #[error("the master refused to join this node: {0}")]
    Refused(String),
    #[error("cannot make a certificate request: {0}")]
    Request(String),
}

/// Where a joined node keeps its credentials.
pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kubelet.kubeconfig")
}

/// Makes sure `data_dir` holds a kubeconfig for node `node` at `server`, joining with
/// `token` when it does not (or when the one there is for another node or CA).
/// `ca_file`, when given, is trusted instead of fetching the CA. Returns the
/// kubeconfig's path and the CA.
pub async fn join(
    server: &str,
    token: &JoinToken,
    node: &str,
    ca_file: Option<&Path>,
    data_dir: &Path,
) -> Result<(PathBuf, String), JoinError> {
    std::fs::create_dir_all(data_dir).map_err(|source| JoinError::Write {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let ca = cluster_ca(server, token, ca_file, data_dir).await?;
    let path = kubeconfig_path(data_dir);
    if holds_credentials(&path, server, node, &ca) {
        return Ok((path, ca));
    }
    let (csr, key) = pki::node_csr(node).map_err(|e| JoinError::Request(e.to_string()))?;
    let body = serde_json::json!({"nodeName": node, "csr": csr}).to_string();
    let resp = request(
        server,
        Trust::Ca(&ca),
        "POST",
        "/tinykube/v1/join",
        Some(&token.to_string()),
        &body,
    )
    .await?;
    let v: serde_json::Value = serde_json::from_str(&resp.body).unwrap_or_default();
    if resp.code != 200 {
        let message = v["message"].as_str().map_or_else(
            || format!("HTTP {}: {}", resp.code, resp.body.trim()),
            String::from,
        );
        return Err(JoinError::Refused(message));
    }
    let cert = v["certificate"]
        .as_str()
        .ok_or_else(|| JoinError::Refused("the answer has no certificate".into()))?;
    let kc = Kubeconfig::new(
        "tinykube",
        &format!("{}{node}", pki::NODE_USER_PREFIX),
        server,
        &ca,
        User::certificate(cert, &key),
    );
    write_private(&path, &kc.to_yaml()).map_err(|source| JoinError::Write {
        path: path.clone(),
        source,
    })?;
    Ok((path, ca))
}

/// Whether the kubeconfig at `path` is this node's, for this server and CA, and still
/// valid.
fn holds_credentials(path: &Path, server: &str, node: &str, ca: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(kc) = serde_saphyr::from_str::<Kubeconfig>(&text) else {
        return false;
    };
    let same_cluster = kc.clusters.first().is_some_and(|c| {
        c.cluster.server == server
            && c.cluster.certificate_authority_data.as_deref()
                == Some(&base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    ca,
                ))
    });
    let Some(der) = kc
        .users
        .first()
        .and_then(|u| u.user.certificate_pem())
        .and_then(|pem| rustls_pemfile::certs(&mut pem.as_bytes()).next()?.ok())
    else {
        return false;
    };
    let named = pki::identity(&der).is_some_and(|id| id.node() == Some(node));
    // An expired certificate (the node was off past its renewal) means joining again.
    let valid = pki::not_after(&der).is_some_and(|t| t > jiff::Timestamp::now().as_second());
    same_cluster && named && valid
}

/// The cluster CA: from `ca_file`, from an earlier join, or fetched and checked.
async fn cluster_ca(
    server: &str,
    token: &JoinToken,
    ca_file: Option<&Path>,
    data_dir: &Path,
) -> Result<String, JoinError> {
    let matches = |pem: &str| {
        token
            .ca_hash
            .as_deref()
            .is_none_or(|h| pki::ca_hash(pem) == h)
    };
    if let Some(path) = ca_file {
        let pem = std::fs::read_to_string(path).map_err(|source| JoinError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        return match matches(&pem) {
            true => Ok(pem),
            false => Err(JoinError::CaFileMismatch {
                path: path.to_path_buf(),
            }),
        };
    }
    let Some(expected) = token.ca_hash.clone() else {
        return Err(JoinError::NoCa);
    };
    let saved = data_dir.join("ca.crt");
    if let Ok(pem) = std::fs::read_to_string(&saved)
        && matches(&pem)
    {
        return Ok(pem);
    }
    let seen = Arc::new(Seen::default());
    let resp = request(
        server,
        Trust::Any(seen.clone()),
        "GET",
        "/cacerts",
        None,
        "",
    )
    .await?;
    if resp.code != 200 {
        return Err(JoinError::Fetch {
            server: server.into(),
            message: format!("HTTP {}", resp.code),
        });
    }
    let got = pki::ca_hash(&resp.body);
    if got != expected {
        return Err(JoinError::WrongCa {
            server: server.into(),
            got,
            expected,
        });
    }
    // The CA is the right one; now the server must prove it holds a certificate from it.
    let chain = seen.chain.lock().expect("not poisoned").clone();
    verify_chain(server, &resp.body, &chain)?;
    write_private(&saved, &resp.body).map_err(|source| JoinError::Write {
        path: saved.clone(),
        source,
    })?;
    Ok(resp.body)
}

fn verify_chain(
    server: &str,
    ca_pem: &str,
    chain: &[CertificateDer<'static>],
) -> Result<(), JoinError> {
    let fail = |reason: String| JoinError::NotSignedByCa {
        server: server.into(),
        reason,
    };
    let roots = roots(ca_pem).map_err(|e| fail(format!("the CA is not usable: {e}")))?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| fail(e.to_string()))?;
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| fail("it presented none".into()))?;
    let (host, _) = host_port(server)?;
    let name = ServerName::try_from(host).map_err(|e| fail(e.to_string()))?;
    verifier
        .verify_server_cert(leaf, rest, &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| fail(e.to_string()))
}

/// The certificates of a CA bundle (PEM) as TLS roots.
fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()).flatten() {
        roots.add(c)?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Writes a file only its owner may read, whole or not at all (a renewal rewrites
/// the kubeconfig a running node reads).
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// `https://host:port` split, with 6443 as the default port.
fn host_port(server: &str) -> Result<(String, u16), JoinError> {
    let bad = || JoinError::Url(server.to_string());
    let rest = server.strip_prefix("https://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority, tinykube_api::constants::API_SERVER_PORT),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// What the first connection saw: the certificates the server presented.
#[derive(Debug, Default)]
struct Seen {
    chain: std::sync::Mutex<Vec<CertificateDer<'static>>>,
}

/// Trusts any certificate for one request (the CA is not known yet), keeping what it
/// saw so the chain can be checked once the CA is.
#[derive(Debug)]
struct Remember(Arc<Seen>);

impl ServerCertVerifier for Remember {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.0.chain.lock().expect("not poisoned") = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

enum Trust<'a> {
    Any(Arc<Seen>),
    Ca(&'a str),
}

struct Answer {
    code: u16,
    body: String,
}

/// One HTTP/1.1 request over TLS (hyper), its answer read to the end.
async fn request(
    server: &str,
    trust: Trust<'_>,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> Result<Answer, JoinError> {
    let fail = |message: String| JoinError::Fetch {
        server: server.into(),
        message,
    };
    let (host, port) = host_port(server)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?;
    let config = match trust {
        Trust::Any(seen) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Remember(seen)))
            .with_no_client_auth(),
        Trust::Ca(ca) => {
            let roots = roots(ca).map_err(|e| fail(e.to_string()))?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    let name = ServerName::try_from(host.clone()).map_err(|e| fail(e.to_string()))?;
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host.as_str())
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(t) = bearer {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| fail(e.to_string()))?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(
                |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(rustls::Error::InvalidCertificate(c)) => JoinError::NotSignedByCa {
                        server: server.into(),
                        reason: format!("{c:?}"),
                    },
                    _ => fail(format!("TLS: {e}")),
                },
            )?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(e.to_string()))?;
        // The connection is driven beside the one request and ends with it (the
        // sender is dropped when the answer is read).
        let answer = async move {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let code = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| fail(e.to_string()))?
                .to_bytes();
            Ok(Answer {
                code,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            })
        };
        let (answer, _) = tokio::join!(answer, conn);
        answer
    };
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .map_err(|_| fail("no answer in 15 s".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_split_into_host_and_port() {
        assert_eq!(
            host_port("https://192.168.56.10:6443").unwrap(),
            ("192.168.56.10".to_string(), 6443)
        );
        assert_eq!(
            host_port("https://master").unwrap(),
            ("master".to_string(), 6443)
        );
        assert_eq!(
            host_port("https://[::1]:7443/").unwrap(),
            ("::1".to_string(), 7443)
        );
        assert!(host_port("http://x:1").is_err());
        assert!(host_port("https://:1").is_err());
    }
}
