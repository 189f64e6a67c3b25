//! The API server's shared state: what every layer of the chain and every handler
//! reads. Nothing here imports the chain or the handlers back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::admission::Admission;
use crate::authn::Tokens;
use crate::authz::Authorizer;
use crate::certificates::pki::Pki;
use crate::certificates::signer::Signer;
use crate::registry::Registry;
use crate::serviceaccount::ServiceAccountTokens;

pub struct Shared {
    pub registry: Arc<Registry>,
    pub tokens: Tokens,
    pub authorizer: Arc<Authorizer>,
    pub admission: Admission,
    pub advertise: String,
    pub bookmark_interval: Duration,
    pub pki: Arc<Pki>,
    /// Signs and checks service-account tokens.
    pub service_accounts: Arc<ServiceAccountTokens>,
    /// Approves kubelets' certificate requests and signs approved ones.
    pub signer: Signer,
    /// TLS to kubelets, trusting the cluster CA only.
    pub kubelet_tls: tokio_rustls::TlsConnector,
    /// The kubelets' resource usage summaries, kept a few seconds for the metrics API.
    pub usage: UsageCache,
    /// The API server's metrics, in the process's registry.
    pub metrics: crate::metrics::ApiMetrics,
}

/// The last resource-usage summary of each node's kubelet, and when it was read (the
/// metrics API's).
#[derive(Default)]
pub struct UsageCache(pub Mutex<HashMap<String, (Instant, Arc<serde_json::Value>)>>);
