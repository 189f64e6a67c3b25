//! The pods of this node: one worker task per pod, fed by a watch on the pods bound to
//! the node; on start, what containerd already runs is adopted and what belongs to no
//! pod is removed.
//!
//! A worker's job, file by file: `state` (what it knows, and every transition),
//! `sandbox` (netns, veth, pause container), `containers` (start, spec, exits),
//! `probe`, `status` (the pod's status from its state), `teardown` (stop and remove
//! everything), `adopt` (after an agent restart); `worker` is the loop that drives
//! them; `config` turns a container's spec into its environment, argv and mounts.

mod adopt;
pub mod config;
mod containers;
pub mod files;
pub mod logs;
pub mod probe;
pub mod registry;
pub mod sandbox;
pub mod state;
mod status;
mod teardown;
pub mod tokens;
mod worker;

pub use logs::{LOG_MAX_BYTES, log_path, rotate_logs};
pub use registry::{ContainerView, PodRegistry, PodView, SandboxView};
pub use state::{Backoff, SandboxId};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, Event as WatchEvent};
use tinykube_client::Recorder;
use tinykube_net::ipam::Ipam;
use tinykube_net::link::Bridge;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::images::Images;
use crate::runtime::Runtime;
use crate::runtime::image::ResolvedImage;
use state::{Event, PodState, uid};

pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const LABEL_KIND: &str = "io.tinykube.kind";
pub const LABEL_ATTEMPT: &str = "io.tinykube.attempt";
pub const LABEL_STARTED: &str = "io.tinykube.started";

/// Everything pod workers share.
pub struct PodContext {
    pub client: kube::Client,
    pub runtime: Runtime,
    pub bridge: Bridge,
    pub ipam: Ipam,
    pub node: String,
    pub node_ip: String,
    pub pods_dir: PathBuf,
    /// The node's own resolv.conf, read for each pod's (`dnsPolicy: Default`, and the
    /// node's search domains after the cluster's).
    pub resolv_conf: PathBuf,
    /// Container restart back-off (Kubernetes: 10 s doubling to 5 min).
    pub backoff: Backoff,
    /// cgroup under which every pod of this node lives.
    pub cgroup_parent: String,
    pub pause_image: ResolvedImage,
    pub images: Images,
    /// What the kubelet API (logs, exec) needs to know of each pod.
    pub registry: PodRegistry,
    /// Events about pods, as the kubelet on this node.
    pub recorder: Recorder,
    /// The service-account tokens in pods' volumes, renewed before they expire.
    pub tokens: tokens::TokenFiles,
}

impl PodContext {
    /// The cgroup (path below each controller's root) holding one pod's containers.
    pub fn pod_cgroup(&self, uid: &str) -> String {
        format!("{}/pod{uid}", self.cgroup_parent)
    }

    /// The cgroup of one container of a pod (`sandbox` for the pause container).
    pub fn container_cgroup(&self, uid: &str, container: &str) -> String {
        format!("{}/{container}", self.pod_cgroup(uid))
    }
}

/// The labels every container of a pod carries in containerd (kubelet's own names,
/// so `ctr containers info` reads as on a Kubernetes node).
pub(crate) fn labels(
    pod: &Pod,
    container: &str,
    kind: &str,
    attempt: u32,
) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_POD_UID.to_string(), uid(pod)),
        (
            LABEL_POD_NAME.to_string(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        (
            LABEL_POD_NAMESPACE.to_string(),
            pod.metadata.namespace.clone().unwrap_or_default(),
        ),
        (LABEL_CONTAINER_NAME.to_string(), container.to_string()),
        (LABEL_KIND.to_string(), kind.to_string()),
        (LABEL_ATTEMPT.to_string(), attempt.to_string()),
    ])
}

struct WorkerHandle {
    tx: watch::Sender<Option<Pod>>,
    task: tokio::task::JoinHandle<()>,
}

fn spawn_worker(
    ctx: &Arc<PodContext>,
    pod: Pod,
    state: PodState,
    exits: (mpsc::UnboundedSender<Event>, mpsc::UnboundedReceiver<Event>),
) -> WorkerHandle {
    let (tx, rx) = watch::channel(Some(pod));
    let task = tokio::spawn(worker::run(ctx.clone(), rx, state, exits.0, exits.1));
    WorkerHandle { tx, task }
}

/// Runs the pods bound to this node until `cancel`.
pub async fn run(ctx: Arc<PodContext>, cancel: CancellationToken) {
    let mut existing = match adopt::containers_by_pod(&ctx.runtime).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list containers to adopt");
            HashMap::new()
        }
    };
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node));
    let mut events = watcher::watcher(api, wc).boxed();
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut initial = true;
    let mut tidy = tokio::time::interval(Duration::from_secs(30));
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tidy.tick() => {
                workers.retain(|_, w| !w.task.is_finished());
                continue;
            }
            ev = events.next() => ev,
        };
        match ev {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "pod watch restarting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Some(Ok(WatchEvent::Init)) => seen.clear(),
            Some(Ok(WatchEvent::InitApply(p) | WatchEvent::Apply(p))) => {
                let uid = uid(&p);
                seen.insert(uid.clone());
                match workers.get(&uid) {
                    Some(w) if !w.task.is_finished() => {
                        let _ = w.tx.send(Some(p));
                    }
                    Some(_) => {}
                    None => {
                        let (tx, rx) = mpsc::unbounded_channel();
                        let state = match existing.remove(&uid) {
                            Some(records) => adopt::adopt(&ctx, &p, records, &tx).await,
                            None => adopt::with_api_history(&p, PodState::default()),
                        };
                        workers.insert(uid, spawn_worker(&ctx, p, state, (tx, rx)));
                    }
                }
            }
            Some(Ok(WatchEvent::Delete(p))) => {
                if let Some(w) = workers.get(&uid(&p)) {
                    let _ = w.tx.send(None);
                }
            }
            Some(Ok(WatchEvent::InitDone)) => {
                for (uid, w) in &workers {
                    if !seen.contains(uid) {
                        let _ = w.tx.send(None);
                    }
                }
                if initial {
                    initial = false;
                    // Pods deleted while the agent was down: remove what is left.
                    for (uid, records) in existing.drain() {
                        if seen.contains(&uid) {
                            continue;
                        }
                        tracing::info!(pod = %uid, "removing the containers of a pod that no longer exists");
                        for r in records {
                            ctx.runtime.remove_container(&r.id).await;
                        }
                        teardown::cleanup_pod(&ctx, &uid).await;
                    }
                    for (_, owner) in ctx.ipam.owners() {
                        if !seen.contains(&owner) {
                            teardown::cleanup_pod(&ctx, &owner).await;
                        }
                    }
                }
            }
        }
    }
    // On shutdown pods keep running (a restarted agent adopts them).
    for (_, w) in workers {
        w.task.abort();
    }
}
