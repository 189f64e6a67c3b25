//! The controllers the master runs, each an API client with watch caches and
//! level-triggered reconciles: replica sets, deployments, garbage collection,
//! endpoints and endpoint slices, node lifecycle and node IPAM, LoadBalancer
//! addresses (ServiceLB), and ClusterRole aggregation.

pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod node;
pub mod owner;
pub mod rbac;
pub mod replicaset;
pub mod servicelb;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use tinykube_client::{Informer, Informers};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed")]
    Kube(#[from] kube::Error),
    #[error("invalid object: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
pub struct Config {
    /// How long a node may go without renewing its lease before it is NotReady.
    pub node_monitor_grace: Duration,
    /// How often node health is checked.
    pub node_monitor_period: Duration,
    /// The cluster CIDR nodes get their /24 from.
    pub cluster_cidr: String,
    /// LoadBalancer addresses come from this pool when set, else are the nodes' own.
    pub lb_pool: Option<tinykube_api::lbpool::LbPool>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_monitor_grace: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
            cluster_cidr: tinykube_api::constants::CLUSTER_CIDR.into(),
            lb_pool: None,
        }
    }
}

/// Runs every controller until `cancel` fires, reading the master's shared caches.
pub async fn run(
    client: kube::Client,
    inf: Arc<Informers>,
    config: Config,
    cancel: CancellationToken,
) {
    inf.ready().await;
    tracing::info!("controllers started");
    tokio::join!(
        replicaset::run(client.clone(), inf.clone(), cancel.clone()),
        deployment::run(client.clone(), inf.clone(), cancel.clone()),
        gc::run(client.clone(), inf.clone(), cancel.clone()),
        endpoints::run(client.clone(), inf.clone(), cancel.clone()),
        node::run(client.clone(), inf.clone(), config.clone(), cancel.clone()),
        servicelb::run(client.clone(), inf.clone(), config.lb_pool, cancel.clone()),
        rbac::run(client.clone(), inf.cluster_roles.clone(), cancel.clone()),
    );
}
