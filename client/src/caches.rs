//! The master's watch caches: one informer per kind, started once and shared by every
//! controller and the scheduler, as kube-controller-manager's shared informer factory
//! is shared by its controllers. No component keeps a copy of its own.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use crate::Informer;

/// The node a pod is bound to: the pod cache's third index.
pub fn pod_node(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
}

/// One informer per kind the master's components read.
pub struct Informers {
    /// Indexed by namespace, owner and node (`by_field(node)`).
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
    /// Starts every watch as `client`'s user; they run until `cancel` fires.
    pub fn start(client: &kube::Client, cancel: &CancellationToken) -> Arc<Self> {
        let wc = watcher::Config::default;
        Arc::new(Self {
            pods: Informer::start_indexed(
                Api::all(client.clone()),
                wc(),
                Some(pod_node),
                cancel.clone(),
            ),
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
        })
    }

    /// Waits until every cache holds its first full list.
    pub async fn ready(&self) {
        tokio::join!(
            self.pods.ready(),
            self.replicasets.ready(),
            self.deployments.ready(),
            self.services.ready(),
            self.nodes.ready(),
            self.leases.ready(),
            self.endpoints.ready(),
            self.slices.ready(),
            self.cluster_roles.ready(),
        );
    }

    /// Waits for every watch task to end (after the token fired).
    pub async fn stopped(&self) {
        tokio::join!(
            self.pods.stopped(),
            self.replicasets.stopped(),
            self.deployments.stopped(),
            self.services.stopped(),
            self.nodes.stopped(),
            self.leases.stopped(),
            self.endpoints.stopped(),
            self.slices.stopped(),
            self.cluster_roles.stopped(),
        );
    }
}
