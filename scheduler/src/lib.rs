//! The scheduler: takes pods without a node, filters the nodes they may run on (Ready,
//! not cordoned, taints tolerated, node selector and required node affinity, resources,
//! host ports), prefers the node with the fewest pods of the same owner or Service, then
//! the least requested one, and binds through `pods/binding`. Pods that fit nowhere get
//! a `FailedScheduling` event in Kubernetes' words and wait in kube-scheduler's
//! queues (`queue.rs`) until the cluster changes.

pub mod filter;
pub mod metrics;
pub mod queue;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use tinykube_client::recorder::{EventType, Recorder};
use tinykube_client::{Informer, Informers};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use filter::{NodeInfo, fit_error};
use queue::Queue;

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
fn frees_room(p: &Pod, pods: &Informer<Pod>) -> bool {
    let bound = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some_and(|n| !n.is_empty());
    bound
        && (p.metadata.deletion_timestamp.is_some()
            || pods.store.get(&ObjectRef::from_obj(p)).is_none())
}

fn digest(parts: &[serde_json::Value]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.to_string().hash(&mut h);
    }
    h.finish()
}

/// What a pod asks of scheduling: its spec and labels, not its status.
fn pod_fingerprint(p: &Pod) -> u64 {
    let spec = serde_json::to_value(&p.spec).unwrap_or_default();
    let labels = serde_json::to_value(&p.metadata.labels).unwrap_or_default();
    digest(&[spec, labels])
}

/// What scheduling reads of a node; a heartbeat changes none of it, so a heartbeat
/// does not send unschedulable pods back to the queue (kube-scheduler's
/// isSchedulableAfterNodeChange).
fn node_fingerprint(n: &Node) -> u64 {
    let spec = n.spec.as_ref();
    let status = n.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    let parts = [
        serde_json::to_value(&n.metadata.labels).unwrap_or_default(),
        serde_json::to_value(spec.map(|s| (&s.taints, s.unschedulable))).unwrap_or_default(),
        serde_json::to_value(status.map(|s| &s.allocatable)).unwrap_or_default(),
        serde_json::to_value(ready).unwrap_or_default(),
    ];
    digest(&parts)
}

struct State {
    queue: Queue,
    /// Pods bound here whose binding the cache does not show yet: key -> (node, when).
    assumed: HashMap<String, (String, Instant, Arc<Pod>)>,
    /// The message last written to each unschedulable pod's PodScheduled condition.
    reported: HashMap<String, String>,
    /// What scheduling last read of each node.
    nodes: HashMap<String, u64>,
    recorder: Recorder,
    metrics: metrics::SchedulerMetrics,
}

impl State {
    fn pod(&mut self, p: &Pod, pods: &Informer<Pod>) {
        let key = pod_key(p);
        let now = Instant::now();
        if frees_room(p, pods) {
            self.queue.cluster_changed(now);
        }
        let live = pods.store.get(&ObjectRef::from_obj(p));
        match live {
            Some(p) if wants_us(&p) => {
                if !self.assumed.contains_key(&key) {
                    self.queue.pod_changed(&key, pod_fingerprint(&p), now);
                }
            }
            _ => {
                self.queue.forget(&key);
                self.reported.remove(&key);
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                    // The cache shows the binding now.
                    self.assumed.remove(&key);
                }
            }
        }
    }

    fn node(&mut self, n: &Node, nodes: &Informer<Node>) {
        let name = n.metadata.name.clone().unwrap_or_default();
        if nodes.store.get(&ObjectRef::from_obj(n)).is_none() {
            self.nodes.remove(&name);
            return;
        }
        let fp = node_fingerprint(n);
        if self.nodes.insert(name, fp) != Some(fp) {
            self.queue.cluster_changed(Instant::now());
        }
    }
}

/// Schedules until `cancel` fires, reading the master's shared caches.
pub async fn run(
    client: kube::Client,
    inf: Arc<Informers>,
    registry: &tinykube_api::metrics::Metrics,
    cancel: CancellationToken,
) {
    let (pods, nodes, services) = (&inf.pods, &inf.nodes, &inf.services);
    tokio::join!(pods.ready(), nodes.ready(), services.ready());
    tracing::info!("scheduler started");
    let mut pod_changes = pods.subscribe_as("scheduler");
    let mut node_changes = nodes.subscribe_as("scheduler");
    let mut state = State {
        queue: Queue::default(),
        assumed: HashMap::new(),
        reported: HashMap::new(),
        nodes: HashMap::new(),
        recorder: Recorder::new(client.clone(), SCHEDULER_NAME, None),
        metrics: metrics::SchedulerMetrics::new(registry),
    };
    let binds = Arc::new(Semaphore::new(64));
    let mut resync = tokio::time::interval(Duration::from_secs(30));
    loop {
        let wakeup = state
            .queue
            .next_wakeup()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = cancel.cancelled() => return,
            p = pod_changes.next() => match p {
                None => return,
                Some(p) => state.pod(&p, pods),
            },
            n = node_changes.next() => match n {
                None => return,
                Some(n) => state.node(&n, nodes),
            },
            _ = async { tokio::time::sleep_until(wakeup.expect("some")).await }, if wakeup.is_some() => {}
            _ = resync.tick() => {}
        }
        // Take what else arrived in the meantime, then schedule everything active.
        while let Some(Some(p)) = futures::FutureExt::now_or_never(pod_changes.next()) {
            state.pod(&p, pods);
        }
        while let Some(Some(n)) = futures::FutureExt::now_or_never(node_changes.next()) {
            state.node(&n, nodes);
        }
        state.queue.tick(Instant::now());
        schedule_active(&client, pods, nodes, services, &mut state, &binds).await;
        state.metrics.pending(state.queue.depths());
    }
}

fn ref_of(key: &str) -> ObjectRef<Pod> {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    ObjectRef::new(name).within(ns)
}

async fn schedule_active(
    client: &kube::Client,
    pods: &Informer<Pod>,
    nodes: &Informer<Node>,
    services: &Informer<Service>,
    state: &mut State,
    binds: &Arc<Semaphore>,
) {
    // Forget assumptions too old to trust.
    state
        .assumed
        .retain(|_, (_, at, _)| at.elapsed() < Duration::from_secs(30));
    let mut pending: Vec<Arc<Pod>> = state
        .queue
        .take_active()
        .iter()
        .filter(|k| !state.assumed.contains_key(*k))
        .filter_map(|k| pods.store.get(&ref_of(k)))
        .filter(|p| wants_us(p))
        .collect();
    if pending.is_empty() {
        return;
    }
    pending.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let node_list = nodes.store.state();
    let svc_list = services.store.state();
    let mut infos: Vec<NodeInfo> = node_list.iter().map(|n| NodeInfo::new(n.clone())).collect();
    infos.sort_by(|a, b| a.name().cmp(b.name()));
    for info in &mut infos {
        let name = info.name().to_string();
        for p in pods.by_field(&name) {
            if p.metadata.deletion_timestamp.is_none() {
                info.add(&p, &svc_list);
            }
        }
    }
    let index: HashMap<String, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name().to_string(), i))
        .collect();
    for (node, _, p) in state.assumed.values() {
        if let Some(i) = index.get(node) {
            infos[*i].add(p, &svc_list);
        }
    }
    for pod in pending {
        let key = pod_key(&pod);
        let started = Instant::now();
        let chosen = filter::choose(&pod, &infos, &svc_list);
        let result = if chosen.is_ok() {
            "scheduled"
        } else {
            "unschedulable"
        };
        state
            .metrics
            .attempt(result, started.elapsed().as_secs_f64());
        match chosen {
            Ok(i) => {
                infos[i].add(&pod, &svc_list);
                let node = infos[i].name().to_string();
                state.queue.scheduled(&key);
                state.reported.remove(&key);
                state
                    .assumed
                    .insert(key.clone(), (node.clone(), Instant::now(), pod.clone()));
                let permit = binds.clone().acquire_owned().await.expect("semaphore open");
                let (client, recorder) = (client.clone(), state.recorder.clone());
                tokio::spawn(async move {
                    bind(&client, &recorder, &pod, &node).await;
                    drop(permit);
                });
            }
            Err(message) => {
                state
                    .queue
                    .failed(&key, pod_fingerprint(&pod), Instant::now());
                // Every failed attempt is an event, as kube-scheduler records it; the
                // recorder folds repeats into one Event's count. The condition is
                // written only when its message changes.
                let condition = state.reported.get(&key) != Some(&message);
                if condition {
                    state.reported.insert(key, message.clone());
                }
                let (client, recorder) = (client.clone(), state.recorder.clone());
                tokio::spawn(async move {
                    report_unschedulable(&client, &recorder, &pod, &message, condition).await
                });
            }
        }
    }
}

async fn bind(client: &kube::Client, recorder: &Recorder, pod: &Pod, node: &str) {
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
            let msg = format!("Successfully assigned {ns}/{name} to {node}");
            recorder.record_later(pod, EventType::Normal, "Scheduled", &msg);
        }
        Err(e) => tracing::debug!(pod = name, error = %e, "binding failed"),
    }
}

async fn report_unschedulable(
    client: &kube::Client,
    recorder: &Recorder,
    pod: &Pod,
    message: &str,
    condition: bool,
) {
    if condition {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let cond = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastProbeTime": null, "lastTransitionTime": tinykube_api::format::now_rfc3339()}]}});
        let _ = api
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(cond))
            .await;
    }
    recorder
        .record(pod, EventType::Warning, "FailedScheduling", message)
        .await;
}
