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

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

pub use tinykube_client::Informer;

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

/// The watch caches the controllers share: one watch per type.
pub struct Informers {
    pub pods: Arc<Informer<Pod>>,
    pub replicasets: Arc<Informer<ReplicaSet>>,
    pub deployments: Arc<Informer<Deployment>>,
    pub services: Arc<Informer<Service>>,
    pub endpoints: Arc<Informer<Endpoints>>,
    pub slices: Arc<Informer<EndpointSlice>>,
    pub nodes: Arc<Informer<Node>>,
    pub leases: Arc<Informer<Lease>>,
    pub cluster_roles: Arc<Informer<ClusterRole>>,
}

impl Informers {
    pub fn start(client: &kube::Client, cancel: &CancellationToken) -> Self {
        let wc = watcher::Config::default;
        Self {
            pods: Informer::start(Api::all(client.clone()), wc(), cancel.clone()),
            replicasets: Informer::start(Api::all(client.clone()), wc(), cancel.clone()),
            deployments: Informer::start(Api::all(client.clone()), wc(), cancel.clone()),
            services: Informer::start(Api::all(client.clone()), wc(), cancel.clone()),
            endpoints: Informer::start(Api::all(client.clone()), wc(), cancel.clone()),
            slices: Informer::start(Api::all(client.clone()), wc(), cancel.clone()),
            nodes: Informer::start(Api::all(client.clone()), wc(), cancel.clone()),
            leases: Informer::start(
                Api::namespaced(client.clone(), "kube-node-lease"),
                wc(),
                cancel.clone(),
            ),
            cluster_roles: Informer::start(Api::all(client.clone()), wc(), cancel.clone()),
        }
    }
}

/// Runs every controller until `cancel` fires.
pub async fn run(client: kube::Client, config: Config, cancel: CancellationToken) {
    let inf = Arc::new(Informers::start(&client, &cancel));
    tokio::join!(
        inf.pods.ready(),
        inf.replicasets.ready(),
        inf.deployments.ready(),
        inf.services.ready(),
        inf.nodes.ready(),
        inf.leases.ready(),
        inf.endpoints.ready(),
        inf.slices.ready(),
        inf.cluster_roles.ready(),
    );
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
