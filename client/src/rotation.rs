//! A node's client certificate, renewed before it runs out, as the kubelet's
//! certificate manager renews its own: between 70% and 80% of the certificate's
//! lifetime the node makes a new key, asks for a certificate for it with a
//! CertificateSigningRequest (signer `kubernetes.io/kube-apiserver-client-kubelet`,
//! approved automatically for a node asking for itself), waits for it to be signed,
//! writes it to the kubeconfig and presents it on every connection made from then on.
//! Connections already open finish their requests and are not used again, and no
//! TLS session made with the old certificate is resumed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use kube::client::ConfigExt;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use tinykube_api::kubeconfig::{Kubeconfig, User};
use tinykube_api::pki;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has no usable client certificate and key")]
    NoCertificate { path: PathBuf },
    #[error("cannot make a client: {0}")]
    Client(#[from] kube::Error),
    #[error("cannot make a certificate request")]
    Request(#[from] rcgen::Error),
    #[error("the certificate request {name} was {how}: {message}")]
    Refused {
        name: String,
        how: &'static str,
        message: String,
    },
    #[error("the certificate request {0} was not signed in time")]
    Timeout(String),
    #[error("the signed certificate is not usable: {0}")]
    Tls(#[from] rustls::Error),
}

type Connector = hyper_timeout::TimeoutConnector<hyper_rustls::HttpsConnector<HttpConnector>>;
type HttpClient = hyper_util::client::legacy::Client<Connector, kube::client::Body>;

/// The certificate and key presented on new connections.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesClientCert for Current {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("not poisoned").clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The HTTP client requests go through; replaced at rotation so that no connection
/// made with the old certificate is used again.
#[derive(Clone)]
struct Swappable(Arc<RwLock<HttpClient>>);

impl tower::Service<http::Request<kube::client::Body>> for Swappable {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let client = self.0.read().expect("not poisoned").clone();
        client.request(req)
    }
}

/// Renews the certificate of the kubeconfig at `path` while the client lives.
pub struct Rotation {
    path: PathBuf,
    current: Arc<Current>,
    http: Swappable,
    tls: rustls::ClientConfig,
    timeouts: Timeouts,
}

fn read(path: &Path) -> Result<Kubeconfig, RotationError> {
    let text = std::fs::read_to_string(path).map_err(|e| RotationError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_saphyr::from_str(&text).map_err(|e| RotationError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The PEM certificate and key of the kubeconfig's user.
fn identity(kc: &Kubeconfig, path: &Path) -> Result<(String, String), RotationError> {
    let none = || RotationError::NoCertificate {
        path: path.to_path_buf(),
    };
    let user = &kc.users.first().ok_or_else(none)?.user;
    let cert = user.certificate_pem().ok_or_else(none)?;
    let key = user
        .client_key_data
        .as_ref()
        .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
        .and_then(|k| String::from_utf8(k).ok())
        .ok_or_else(none)?;
    Ok((cert, key))
}

fn certified(cert: &str, key: &str) -> Result<Arc<CertifiedKey>, RotationError> {
    let chain = rustls_pemfile::certs(&mut cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| rustls::Error::General("no private key".into()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// The certificate's validity, in seconds since the epoch.
fn validity(cert: &str) -> Option<(i64, i64)> {
    let der = rustls_pemfile::certs(&mut cert.as_bytes()).next()?.ok()?;
    Some((pki::not_before(&der)?, pki::not_after(&der)?))
}

type Timeouts = (Option<Duration>, Option<Duration>, Option<Duration>);

/// An HTTP client with its own connection pool, presenting whatever `tls` resolves.
/// It resumes no TLS session of an earlier client: a resumed session keeps the
/// certificate it was made with, and the server would see the old one.
fn http_client(tls: &rustls::ClientConfig, timeouts: Timeouts) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let mut tls = tls.clone();
    tls.resumption = rustls::client::Resumption::default();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(timeouts.0);
    connector.set_read_timeout(timeouts.1);
    connector.set_write_timeout(timeouts.2);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector)
}

impl Rotation {
    /// Waits until the renewal point of the current certificate, renews it, and
    /// again, until `cancel`. A failed renewal is tried again a little later.
    pub async fn run(self, client: kube::Client, cancel: CancellationToken) {
        let mut retry = Duration::from_secs(5);
        loop {
            let wait = match read(&self.path).and_then(|kc| identity(&kc, &self.path)) {
                Ok((cert, _)) => renewal_wait(&cert),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the node's certificate");
                    retry
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let renewed = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.renew(&client) => r,
            };
            match renewed {
                Ok(name) => {
                    retry = Duration::from_secs(5);
                    tracing::info!(csr = %name, "client certificate renewed");
                }
                Err(e) => {
                    tracing::warn!(error = %tinykube_api::error_chain(&e), "cannot renew the client certificate; trying again");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(Duration::from_secs(300));
                }
            }
        }
    }

    /// One renewal: a new key, a request for it, the signed certificate written and
    /// used. Returns the request's name.
    pub async fn renew(&self, client: &kube::Client) -> Result<String, RotationError> {
        let kc = read(&self.path)?;
        let (cert, _) = identity(&kc, &self.path)?;
        let node = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .and_then(Result::ok)
            .and_then(|der| pki::identity(&der))
            .and_then(|id| id.node().map(String::from))
            .ok_or_else(|| RotationError::NoCertificate {
                path: self.path.clone(),
            })?;
        let (request, key) = pki::node_csr(&node)?;
        let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
        let body: CertificateSigningRequest = serde_json::from_value(serde_json::json!({
            "metadata": {"generateName": "csr-"},
            "spec": {
                "request": base64::engine::general_purpose::STANDARD.encode(&request),
                "signerName": pki::KUBELET_CLIENT_SIGNER,
                "usages": ["digital signature", "client auth"],
            }
        }))
        .expect("a well-formed request");
        let created = csrs.create(&PostParams::default(), &body).await?;
        let name = created.metadata.name.clone().unwrap_or_default();
        let signed = wait_signed(&csrs, &name).await?;
        let next = certified(&signed, &key)?;
        let mut kc = kc;
        if let Some(u) = kc.users.first_mut() {
            u.user = User::certificate(&signed, &key);
        }
        crate::join::write_private(&self.path, &kc.to_yaml()).map_err(|source| {
            RotationError::Write {
                path: self.path.clone(),
                source,
            }
        })?;
        *self.current.0.write().expect("not poisoned") = next;
        *self.http.0.write().expect("not poisoned") = http_client(&self.tls, self.timeouts);
        Ok(name)
    }
}

/// From now until a point between 70% and 80% of the certificate's lifetime.
fn renewal_wait(cert: &str) -> Duration {
    let Some((from, until)) = validity(cert) else {
        return Duration::ZERO;
    };
    let share = 0.7 + rand::random::<f64>() * 0.1;
    let at = from as f64 + (until - from) as f64 * share;
    let now = jiff::Timestamp::now().as_second() as f64;
    Duration::from_secs_f64((at - now).max(0.0))
}

async fn wait_signed(
    csrs: &Api<CertificateSigningRequest>,
    name: &str,
) -> Result<String, RotationError> {
    for _ in 0..300 {
        let csr = csrs.get(name).await?;
        let status = csr.status.unwrap_or_default();
        for c in status.conditions.iter().flatten() {
            let how = match c.type_.as_str() {
                "Denied" => "denied",
                "Failed" => "not signed",
                _ => continue,
            };
            return Err(RotationError::Refused {
                name: name.into(),
                how,
                message: c.message.clone().unwrap_or_default(),
            });
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            return String::from_utf8(cert.0).map_err(|_| RotationError::Refused {
                name: name.into(),
                how: "signed",
                message: "the certificate is not PEM".into(),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(RotationError::Timeout(name.into()))
}

/// A client for the node whose kubeconfig is at `path`, and the renewal that keeps
/// its certificate valid (run it with `Rotation::run`).
pub async fn node_client(path: &Path) -> Result<(kube::Client, Rotation), RotationError> {
    let kc = read(path)?;
    let (cert, key) = identity(&kc, path)?;
    let current = Arc::new(Current(RwLock::new(certified(&cert, &key)?)));
    let raw = kube::config::Kubeconfig::read_from(path).map_err(|e| RotationError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let config = kube::Config::from_custom_kubeconfig(raw, &Default::default())
        .await
        .map_err(|e| RotationError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let mut tls = config.rustls_client_config()?;
    tls.client_auth_cert_resolver = current.clone();
    let timeouts = (
        config.connect_timeout,
        config.read_timeout,
        config.write_timeout,
    );
    let rotation = Rotation {
        path: path.to_path_buf(),
        current,
        http: Swappable(Arc::new(RwLock::new(http_client(&tls, timeouts)))),
        tls,
        timeouts,
    };
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .service(rotation.http.clone());
    Ok((
        kube::Client::new(service, config.default_namespace.clone()),
        rotation,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_between_70_and_80_percent() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now;
        p.not_after = now + time::Duration::seconds(1000);
        let cert = p.self_signed(&key).unwrap().pem();
        for _ in 0..20 {
            let w = renewal_wait(&cert).as_secs_f64();
            assert!((695.0..=801.0).contains(&w), "{w}");
        }
    }
}
