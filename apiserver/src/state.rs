//! The API server's shared state: what every layer of the chain and every handler
//! reads. Nothing here imports the chain or the handlers back.

use std::sync::Arc;
use std::time::Duration;

use crate::admission::Admission;
use crate::authn::Tokens;
use crate::authz::Authorizer;
use crate::certificates::pki::Pki;
use crate::registry::Registry;

pub struct Shared {
    pub registry: Arc<Registry>,
    pub tokens: Tokens,
    pub authorizer: Authorizer,
    pub admission: Admission,
    pub advertise: String,
    pub bookmark_interval: Duration,
    pub pki: Arc<Pki>,
    /// TLS to kubelets, trusting the cluster CA only.
    pub kubelet_tls: tokio_rustls::TlsConnector,
    /// The kubelets' resource usage summaries, kept a few seconds for the metrics API.
    pub usage: crate::kubelets::metrics::Cache,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A state over an empty store in a temporary directory (kept as long as the
    /// state is used), for unit tests.
    pub fn shared() -> (Shared, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = crate::store::SledStore::open(&dir.path().join("db"), Default::default())
            .expect("a store");
        let pki = Pki::ensure(&dir.path().join("tls"), &["127.0.0.1".into()]).expect("a CA");
        let (cleanup, _) = tokio::sync::mpsc::unbounded_channel();
        let shared = Shared {
            registry: Arc::new(Registry {
                store: Arc::new(store),
                alloc: Default::default(),
                namespace_cleanup: cleanup,
            }),
            tokens: Tokens { node: "n".into() },
            authorizer: Authorizer::default(),
            admission: Admission {
                default_toleration_seconds: 300,
            },
            advertise: "127.0.0.1:6443".into(),
            bookmark_interval: Duration::from_secs(30),
            kubelet_tls: pki.client_connector().expect("a client config"),
            pki: Arc::new(pki),
            usage: Default::default(),
        };
        (shared, dir)
    }
}
