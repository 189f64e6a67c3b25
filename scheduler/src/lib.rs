//! The scheduler: takes pods without a node, filters the nodes they may run on (Ready,
//! not cordoned, taints tolerated, node selector and required node affinity, resources,
//! host ports), prefers the node with the fewest pods of the same owner or Service, then
//! the least requested one, and binds through `pods/binding`. Pods that fit nowhere get
//! a `FailedScheduling` event in Kubernetes' words and are retried when the cluster
//! changes.

pub mod filter;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;
use tinykube_client::Informer;
use tinykube_client::recorder::{EventType, Recorder};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use filter::{NodeInfo, fit_error};

pub const SCHEDULER_NAME: &str = "default-scheduler";

fn pod_key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

fn wants_us(p: &Pod) -> bool {
    let spec = p.spec.as_ref();
    spec.is_some_and(|s| s.node_name.as_deref().is_none_or(str::is_empty))
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|n| n == SCHEDULER_NAME)
        && p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// A bound pod that is going or gone leaves room for pods that did not fit.
fn frees_room(p: &Arc<Pod>, pods: &Informer<Pod>) -> bool {
    let bound = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some_and(|n| !n.is_empty());
    bound
        && (p.metadata.deletion_timestamp.is_some()
            || pods.store.get(&ObjectRef::from_obj(p.as_ref())).is_none())
}

struct State {
    /// Pods bound here whose binding the cache does not show yet: key -> (node, when).
    assumed: HashMap<String, (String, Instant, Arc<Pod>)>,
    /// Pods that fit nowhere, with the message last reported.
    unschedulable: HashMap<String, String>,
}

pub async fn run(client: kube::Client, cancel: CancellationToken) {
    let pods = Informer::<Pod>::start(
        Api::all(client.clone()),
        watcher::Config::default(),
        cancel.clone(),
    );
    let nodes = Informer::<Node>::start(
        Api::all(client.clone()),
        watcher::Config::default(),
        cancel.clone(),
    );
    let services = Informer::<Service>::start(
        Api::all(client.clone()),
        watcher::Config::default(),
        cancel.clone(),
    );
    tokio::join!(pods.ready(), nodes.ready(), services.ready());
    tracing::info!("scheduler started");
    let mut pod_changes = pods.subscribe().boxed();
    let mut node_changes = nodes.subscribe().boxed();
    let mut state = State {
        assumed: HashMap::new(),
        unschedulable: HashMap::new(),
    };
    let binds = Arc::new(Semaphore::new(64));
    let mut retry_unschedulable = true;
    let mut resync = tokio::time::interval(Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            p = pod_changes.next() => match p {
                None => return,
                Some(p) => retry_unschedulable |= frees_room(&p, &pods),
            },
            n = node_changes.next() => { if n.is_none() { return } retry_unschedulable = true; },
            _ = resync.tick() => retry_unschedulable = true,
        }
        // Take what else arrived in the meantime, then schedule everything pending.
        while let Some(Some(p)) = futures::FutureExt::now_or_never(pod_changes.next()) {
            retry_unschedulable |= frees_room(&p, &pods);
        }
        schedule_pending(
            &client,
            &pods,
            &nodes,
            &services,
            &mut state,
            &binds,
            retry_unschedulable,
        )
        .await;
        retry_unschedulable = false;
    }
}

async fn schedule_pending(
    client: &kube::Client,
    pods: &Informer<Pod>,
    nodes: &Informer<Node>,
    services: &Informer<Service>,
    state: &mut State,
    binds: &Arc<Semaphore>,
    retry_unschedulable: bool,
) {
    let all_pods = pods.store.state();
    // Forget assumptions the cache now shows, or that are too old to trust.
    let bound: HashSet<String> = all_pods
        .iter()
        .filter(|p| !wants_us(p))
        .map(|p| pod_key(p))
        .collect();
    state
        .assumed
        .retain(|k, (_, at, _)| !bound.contains(k) && at.elapsed() < Duration::from_secs(30));
    // Forget unschedulable pods that were bound or deleted since.
    let waiting: HashSet<String> = all_pods
        .iter()
        .filter(|p| wants_us(p))
        .map(|p| pod_key(p))
        .collect();
    state.unschedulable.retain(|k, _| waiting.contains(k));
    let mut pending: Vec<Arc<Pod>> = all_pods
        .iter()
        .filter(|p| wants_us(p) && !state.assumed.contains_key(&pod_key(p)))
        .filter(|p| retry_unschedulable || !state.unschedulable.contains_key(&pod_key(p)))
        .cloned()
        .collect();
    if pending.is_empty() {
        return;
    }
    pending.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let node_list = nodes.store.state();
    let svc_list = services.store.state();
    let mut infos: Vec<NodeInfo> = node_list.iter().map(|n| NodeInfo::new(n.clone())).collect();
    infos.sort_by(|a, b| a.name().cmp(b.name()));
    let index: HashMap<String, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name().to_string(), i))
        .collect();
    for p in all_pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        if let Some(i) = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .and_then(|n| index.get(n))
        {
            infos[*i].add(p, &svc_list);
        }
    }
    for (node, _, p) in state.assumed.values() {
        if let Some(i) = index.get(node) {
            infos[*i].add(p, &svc_list);
        }
    }
    for pod in pending {
        let key = pod_key(&pod);
        match filter::choose(&pod, &infos, &svc_list) {
            Ok(i) => {
                infos[i].add(&pod, &svc_list);
                let node = infos[i].name().to_string();
                state.unschedulable.remove(&key);
                state
                    .assumed
                    .insert(key.clone(), (node.clone(), Instant::now(), pod.clone()));
                let permit = binds.clone().acquire_owned().await.expect("semaphore open");
                let client = client.clone();
                tokio::spawn(async move {
                    bind(&client, &pod, &node).await;
                    drop(permit);
                });
            }
            Err(message) => {
                if state.unschedulable.get(&key) != Some(&message) {
                    state.unschedulable.insert(key, message.clone());
                    let client = client.clone();
                    tokio::spawn(
                        async move { report_unschedulable(&client, &pod, &message).await },
                    );
                }
            }
        }
    }
}

async fn bind(client: &kube::Client, pod: &Pod, node: &str) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let binding = json!({"apiVersion": "v1", "kind": "Binding",
                         "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
                         "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    match api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => {
            // The event is a record, not part of the binding: it does not hold a bind slot.
            let (client, pod) = (client.clone(), pod.clone());
            let msg = format!("Successfully assigned {ns}/{name} to {node}");
            tokio::spawn(async move {
                event(&client, &pod, EventType::Normal, "Scheduled", &msg).await
            });
        }
        Err(e) => tracing::debug!(pod = name, error = %e, "binding failed"),
    }
}

async fn report_unschedulable(client: &kube::Client, pod: &Pod, message: &str) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let cond = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": message, "lastProbeTime": null, "lastTransitionTime": tinykube_api::format::now_rfc3339()}]}});
    let _ = api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(cond))
        .await;
    event(client, pod, EventType::Warning, "FailedScheduling", message).await;
}

/// Records a core/v1 Event about `pod` as the scheduler, as `kubectl describe pod` shows them.
async fn event(client: &kube::Client, pod: &Pod, kind: EventType, reason: &str, message: &str) {
    Recorder::new(client.clone(), SCHEDULER_NAME, None)
        .record(pod, kind, reason, message)
        .await;
}
