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

use tinykube_api::metrics::Metrics;

use crate::Informer;
use crate::informer::QueueMetrics;

/// The node a pod is bound to: the pod cache's third index.
pub fn pod_node(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
}

/// What the master's components read of a pod, and no more: its metadata, where it
/// runs and what it asks of a node (scheduling: requests, host ports, selectors,
/// affinity, tolerations; endpoints: named container ports), its phase, conditions
/// and addresses. Volumes, the rest of each container (image, command, env, mounts,
/// probes) and the container statuses the kubelets write are dropped: they are most
/// of a pod's size and no controller reads them.
pub fn project_pod(p: &mut Pod) {
    if let Some(spec) = p.spec.as_mut() {
        spec.volumes = None;
        let keep = |c: &mut k8s_openapi::api::core::v1::Container| {
            *c = k8s_openapi::api::core::v1::Container {
                name: std::mem::take(&mut c.name),
                ports: c.ports.take(),
                resources: c.resources.take(),
                ..Default::default()
            };
        };
        spec.containers.iter_mut().for_each(keep);
        spec.init_containers.iter_mut().flatten().for_each(keep);
        spec.ephemeral_containers = None;
    }
    if let Some(status) = p.status.as_mut() {
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}

/// One informer per kind the master's components read.
pub struct Informers {
    /// Indexed by namespace, owner and node (`by_field(node)`); projected by
    /// [`project_pod`].
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
        Self::start_with(client, None, cancel)
    }

    /// [`Self::start`], measuring the named subscribers' queues in `metrics`.
    pub fn start_measured(
        client: &kube::Client,
        metrics: &Metrics,
        cancel: &CancellationToken,
    ) -> Arc<Self> {
        Self::start_with(client, Some(QueueMetrics::new(metrics)), cancel)
    }

    fn start_with(
        client: &kube::Client,
        qm: Option<QueueMetrics>,
        cancel: &CancellationToken,
    ) -> Arc<Self> {
        let wc = watcher::Config::default;
        Arc::new(Self {
            pods: Informer::start_with(
                Api::all(client.clone()),
                wc(),
                Some(pod_node),
                Some(project_pod),
                qm.clone(),
                cancel.clone(),
            ),
            replicasets: Informer::start_with(
                Api::all(client.clone()),
                wc(),
                None,
                None,
                qm.clone(),
                cancel.clone(),
            ),
            deployments: Informer::start_with(
                Api::all(client.clone()),
                wc(),
                None,
                None,
                qm.clone(),
                cancel.clone(),
            ),
            services: Informer::start_with(
                Api::all(client.clone()),
                wc(),
                None,
                None,
                qm.clone(),
                cancel.clone(),
            ),
            endpoints: Informer::start_with(
                Api::all(client.clone()),
                wc(),
                None,
                None,
                qm.clone(),
                cancel.clone(),
            ),
            slices: Informer::start_with(
                Api::all(client.clone()),
                wc(),
                None,
                None,
                qm.clone(),
                cancel.clone(),
            ),
            nodes: Informer::start_with(
                Api::all(client.clone()),
                wc(),
                None,
                None,
                qm.clone(),
                cancel.clone(),
            ),
            leases: Informer::start_with(
                Api::namespaced(client.clone(), "kube-node-lease"),
                wc(),
                None,
                None,
                qm.clone(),
                cancel.clone(),
            ),
            cluster_roles: Informer::start_with(
                Api::all(client.clone()),
                wc(),
                None,
                None,
                qm.clone(),
                cancel.clone(),
            ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_projected_pod_keeps_what_scheduling_and_endpoints_read() {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "tolerations": [{"key": "k", "operator": "Exists"}],
                     "volumes": [{"name": "token", "emptyDir": {}}],
                     "containers": [{"name": "c", "image": "nginx", "env": [{"name": "A", "value": "1"}],
                                     "ports": [{"name": "http", "containerPort": 80, "hostPort": 8080}],
                                     "resources": {"requests": {"cpu": "100m"}}}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5",
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "c", "image": "nginx", "imageID": "", "ready": true, "restartCount": 0}]}
        }))
        .unwrap();
        project_pod(&mut p);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["spec"]["nodeName"], "n1");
        assert_eq!(v["spec"]["tolerations"][0]["key"], "k");
        assert_eq!(v["spec"]["containers"][0]["ports"][0]["name"], "http");
        assert_eq!(
            v["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "100m"
        );
        assert!(v["spec"]["containers"][0].get("image").is_none());
        assert!(v["spec"]["containers"][0].get("env").is_none());
        assert!(v["spec"].get("volumes").is_none());
        assert_eq!(v["status"]["conditions"][0]["type"], "Ready");
        assert_eq!(v["status"]["podIP"], "10.244.1.5");
        assert!(v["status"].get("containerStatuses").is_none());
        assert_eq!(v["metadata"]["labels"]["app"], "web");
    }
}
