//! The pods of this node: one worker task per pod (`worker`), fed by a watch on the
//! pods bound to the node; on start, what containerd already runs is adopted and what
//! belongs to no pod is removed (`config` builds each container's settings).

pub mod config;
pub mod probe;
pub(crate) mod worker;

pub use worker::log_path;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, Event as WatchEvent};
use serde_json::json;
use tinykube_net::ipam::Ipam;
use tinykube_net::link::Bridge;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::runtime::container::ContainerRecord;
use crate::runtime::image::{LOCAL_REGISTRY, ResolvedImage, normalize};
use crate::runtime::{Runtime, RuntimeError};
use worker::{Ctr, Event, PodState, Run, Sandbox, Terminated};

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
    /// First restart back-off (Kubernetes: 10 s) and its cap (5 min).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// cgroup under which every pod of this node lives.
    pub cgroup_parent: String,
    pub pause_image: ResolvedImage,
    pub images: Images,
    /// What the kubelet API (logs, exec) needs to know of each pod.
    pub registry: PodRegistry,
}

/// A container as the kubelet API sees it.
#[derive(Debug, Clone)]
pub struct ContainerView {
    /// Attempts started so far; the current (or last) one is `attempts - 1`.
    pub attempts: u32,
    pub id: Option<String>,
    pub running: bool,
    pub waiting: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PodView {
    pub uid: String,
    pub containers: HashMap<String, ContainerView>,
}

/// Pods of this node by namespace and name, kept current by their workers.
#[derive(Default)]
pub struct PodRegistry(std::sync::Mutex<HashMap<(String, String), PodView>>);

impl PodRegistry {
    pub fn get(&self, ns: &str, name: &str) -> Option<PodView> {
        self.0
            .lock()
            .expect("registry lock")
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    pub(crate) fn set(&self, pod: &Pod, st: &PodState) {
        let key = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        let containers = st
            .containers
            .iter()
            .map(|(n, c)| {
                let waiting = match &c.run {
                    Run::Waiting { reason, .. } => Some(reason.clone()),
                    _ => None,
                };
                (
                    n.clone(),
                    ContainerView {
                        attempts: c.attempts,
                        id: c.id.clone(),
                        running: matches!(c.run, Run::Running { .. }),
                        waiting,
                    },
                )
            })
            .collect();
        self.0.lock().expect("registry lock").insert(
            key,
            PodView {
                uid: worker::uid(pod),
                containers,
            },
        );
    }

    pub(crate) fn remove(&self, uid: &str) {
        self.0
            .lock()
            .expect("registry lock")
            .retain(|_, v| v.uid != uid);
    }
}

pub(crate) fn labels(
    pod: &Pod,
    container: &str,
    kind: &str,
    attempt: u32,
) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_POD_UID.to_string(), worker::uid(pod)),
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

/// Records a core/v1 Event about `pod` from this node's kubelet.
pub(crate) async fn event(
    client: &kube::Client,
    pod: &Pod,
    kind: &str,
    reason: &str,
    message: &str,
) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let now = jiff::Timestamp::now();
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{:x}", now.as_nanosecond()), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": ns, "uid": pod.metadata.uid},
        "reason": reason, "message": message, "type": kind, "count": 1,
        "source": {"component": "kubelet", "host": pod.spec.as_ref().and_then(|s| s.node_name.clone())},
        "firstTimestamp": tinykube_api::format::rfc3339(now), "lastTimestamp": tinykube_api::format::rfc3339(now),
        "reportingComponent": "kubelet",
    });
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    // Recorded in the background: a pod's start never waits for its events.
    if let Ok(ev) = serde_json::from_value::<k8s_openapi::api::core::v1::Event>(ev) {
        tokio::spawn(async move {
            let _ = api.create(&PostParams::default(), &ev).await;
        });
    }
}

/// Waits for container `id` to exit and reports it; rides out containerd restarts.
pub(crate) fn wait_for_exit(rt: Runtime, id: String, tx: mpsc::UnboundedSender<Event>) {
    tokio::spawn(async move {
        loop {
            match rt.wait_task(&id).await {
                Ok(code) => {
                    let _ = tx.send(Event::Exited { id, code });
                    return;
                }
                Err(e) if e.is_not_found() => {
                    let _ = tx.send(Event::Exited { id, code: 137 });
                    return;
                }
                Err(_) if tx.is_closed() => return,
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    });
}

/// Finds images for containers, honouring imagePullPolicy: pulls what is missing (or
/// always, under `Always`), never pulls the node's own `tinykube.local` images.
pub struct Images {
    pub puller: crate::runtime::pull::Puller,
    /// Recently resolved images, so the pods of one Deployment do not each read the
    /// same manifest and config from containerd.
    pub cache: std::sync::Mutex<HashMap<String, (ResolvedImage, std::time::Instant)>>,
}

const IMAGE_CACHE_TTL: Duration = Duration::from_secs(30);

impl Images {
    /// The image for `reference`, or the waiting reason and message Kubernetes shows.
    pub async fn ensure(
        &self,
        rt: &Runtime,
        reference: &str,
        policy: Option<&str>,
    ) -> Result<ResolvedImage, (String, String)> {
        if reference.is_empty() {
            return Err((
                "InvalidImageName".into(),
                "the container has no image".into(),
            ));
        }
        let name = normalize(reference);
        let local = name.starts_with(&format!("{LOCAL_REGISTRY}/"));
        let pull_error = |e: RuntimeError| ("ErrImagePull".to_string(), crate::error_chain(&e));
        let policy = policy.unwrap_or(if name.ends_with(":latest") {
            "Always"
        } else {
            "IfNotPresent"
        });
        let cached = self
            .cache
            .lock()
            .expect("image cache lock")
            .get(&name)
            .filter(|(_, at)| at.elapsed() < IMAGE_CACHE_TTL)
            .map(|(i, _)| i.clone());
        if let Some(i) = cached
            && (local || policy != "Always")
        {
            return Ok(i);
        }
        let found = rt.resolve(&name).await.map_err(pull_error)?;
        if let Some(i) = &found {
            self.cache
                .lock()
                .expect("image cache lock")
                .insert(name.clone(), (i.clone(), std::time::Instant::now()));
        }
        match (found, policy) {
            (Some(i), _) if local => Ok(i),
            (Some(i), "IfNotPresent" | "Never") => Ok(i),
            (None, "Never") => Err((
                "ErrImageNeverPull".into(),
                format!("Container image \"{reference}\" is not present with pull policy of Never"),
            )),
            (None, _) if local => Err((
                "ErrImagePull".into(),
                format!("image \"{name}\" is made by the node itself and is not present"),
            )),
            (_, _) => {
                self.puller.pull(rt, &name).await.map_err(pull_error)?;
                rt.resolve(&name).await.map_err(pull_error)?.ok_or_else(|| {
                    (
                        "ErrImagePull".into(),
                        format!("image \"{name}\" vanished after its pull"),
                    )
                })
            }
        }
    }
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

/// Containers in containerd, by pod UID.
async fn containers_by_pod(
    rt: &Runtime,
) -> Result<HashMap<String, Vec<ContainerRecord>>, RuntimeError> {
    let mut out: HashMap<String, Vec<ContainerRecord>> = HashMap::new();
    for c in rt.list_containers().await? {
        if let Some(uid) = c.labels.get(LABEL_POD_UID) {
            out.entry(uid.clone()).or_default().push(c);
        }
    }
    Ok(out)
}

/// Rebuilds a worker's state from what containerd runs for `pod` (after a restart of
/// the agent): running containers are kept as they are, exited ones are recorded.
async fn adopt(
    ctx: &Arc<PodContext>,
    pod: &Pod,
    records: Vec<ContainerRecord>,
    exits: &mpsc::UnboundedSender<Event>,
) -> PodState {
    let mut st = PodState::default();
    let uid = worker::uid(pod);
    let attempt = |r: &ContainerRecord| {
        r.labels
            .get(LABEL_ATTEMPT)
            .and_then(|a| a.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let sandbox = records
        .iter()
        .find(|r| r.labels.get(LABEL_KIND).map(String::as_str) == Some("sandbox"));
    if let Some(s) = sandbox
        && let Ok(Some(t)) = ctx.runtime.task_state(&s.id).await
        && t.running
        && let Some(ip) = ctx.ipam.lookup(&uid)
    {
        st.sandbox = Some(Sandbox {
            id: s.id.clone(),
            pid: t.pid,
            ip,
        });
    }
    if st.sandbox.is_none() {
        // Without its sandbox nothing of the pod can be kept.
        for r in &records {
            ctx.runtime.remove_container(&r.id).await;
        }
        return with_api_history(pod, st);
    }
    let mut latest: HashMap<String, &ContainerRecord> = HashMap::new();
    let apps: Vec<&ContainerRecord> = records
        .iter()
        .filter(|r| r.labels.get(LABEL_KIND).map(String::as_str) != Some("sandbox"))
        .collect();
    for r in apps {
        let name = r
            .labels
            .get(LABEL_CONTAINER_NAME)
            .cloned()
            .unwrap_or_default();
        match latest.get(&name) {
            Some(prev) if attempt(prev) >= attempt(r) => ctx.runtime.remove_container(&r.id).await,
            Some(prev) => {
                ctx.runtime.remove_container(&prev.id).await;
                latest.insert(name, r);
            }
            None => {
                latest.insert(name, r);
            }
        }
    }
    st = with_api_history(pod, st);
    for (name, r) in latest {
        let started_at = r
            .labels
            .get(LABEL_STARTED)
            .cloned()
            .unwrap_or_else(tinykube_api::format::now_rfc3339);
        let mut ctr = st.containers.remove(&name).unwrap_or_else(Ctr::new);
        ctr.attempts = attempt(r) + 1;
        match ctx.runtime.task_state(&r.id).await {
            Ok(Some(t)) if t.running => {
                ctr.run = Run::Running { started_at };
                ctr.id = Some(r.id.clone());
                wait_for_exit(ctx.runtime.clone(), r.id.clone(), exits.clone());
                let spec = pod
                    .spec
                    .iter()
                    .flat_map(|s| {
                        s.containers
                            .iter()
                            .chain(s.init_containers.iter().flatten())
                    })
                    .find(|c| c.name == name)
                    .cloned();
                if let (Some(c), Some(sb)) = (spec, st.sandbox.as_ref()) {
                    // Readiness is re-established by the probe, as after a kubelet restart.
                    ctr.ready = c.readiness_probe.is_none();
                    ctr.probes = probe::spawn(
                        ctx.runtime.clone(),
                        r.id.clone(),
                        c,
                        sb.ip.to_string(),
                        ctx.pods_dir.join("exec"),
                        exits.clone(),
                    )
                    .map(|h| h.abort_handle());
                }
            }
            Ok(Some(t)) => {
                // Exited while the agent was away: handled like any exit.
                ctr.run = Run::Running { started_at };
                ctr.id = Some(r.id.clone());
                let _ = exits.send(Event::Exited {
                    id: r.id.clone(),
                    code: t.exit_status,
                });
            }
            _ => ctx.runtime.remove_container(&r.id).await,
        }
        st.containers.insert(name, ctr);
    }
    st
}

/// What the API remembers of containers that no longer exist (restart counts, last
/// terminations, image IDs).
fn with_api_history(pod: &Pod, mut st: PodState) -> PodState {
    let statuses = pod.status.iter().flat_map(|s| {
        s.container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
    });
    for cs in statuses {
        let mut ctr = Ctr::new();
        ctr.attempts = cs.restart_count.max(0) as u32
            + u32::from(
                cs.state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some()),
            );
        ctr.image_id = cs.image_id.clone();
        let term = |t: &k8s_openapi::api::core::v1::ContainerStateTerminated| Terminated {
            exit_code: t.exit_code,
            reason: t.reason.clone().unwrap_or_default(),
            started_at: t
                .started_at
                .as_ref()
                .map(|x| tinykube_api::format::rfc3339(x.0))
                .unwrap_or_default(),
            finished_at: t
                .finished_at
                .as_ref()
                .map(|x| tinykube_api::format::rfc3339(x.0))
                .unwrap_or_default(),
            container_id: t.container_id.clone().unwrap_or_default(),
        };
        ctr.last = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(term);
        if let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            ctr.run = Run::Exited(term(t));
        }
        st.containers.insert(cs.name.clone(), ctr);
    }
    st
}

/// Runs the pods bound to this node until `cancel`.
pub async fn run(ctx: Arc<PodContext>, cancel: CancellationToken) {
    let mut existing = match containers_by_pod(&ctx.runtime).await {
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
                let uid = worker::uid(&p);
                seen.insert(uid.clone());
                match workers.get(&uid) {
                    Some(w) if !w.task.is_finished() => {
                        let _ = w.tx.send(Some(p));
                    }
                    Some(_) => {}
                    None => {
                        let (tx, rx) = mpsc::unbounded_channel();
                        let state = match existing.remove(&uid) {
                            Some(records) => adopt(&ctx, &p, records, &tx).await,
                            None => with_api_history(&p, PodState::default()),
                        };
                        workers.insert(uid, spawn_worker(&ctx, p, state, (tx, rx)));
                    }
                }
            }
            Some(Ok(WatchEvent::Delete(p))) => {
                if let Some(w) = workers.get(&worker::uid(&p)) {
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
                        worker::cleanup_pod(&ctx, &uid).await;
                    }
                    for (_, owner) in ctx.ipam.owners() {
                        if !seen.contains(&owner) {
                            worker::cleanup_pod(&ctx, &owner).await;
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

/// Container logs are rotated past this size (Kubernetes' containerLogMaxSize).
pub const LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// Rotates every container log under `pods_dir` larger than `max`: its content moves to
/// `<attempt>.log.1` (replacing an older one) and the file is truncated in place, since
/// the shim keeps appending to the same open file.
pub fn rotate_logs(pods_dir: &std::path::Path, max: u64) -> usize {
    let mut rotated = 0;
    let pods = std::fs::read_dir(pods_dir).into_iter().flatten().flatten();
    for pod in pods {
        let containers = std::fs::read_dir(pod.path().join("logs"))
            .into_iter()
            .flatten()
            .flatten();
        for c in containers {
            for f in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                let p = f.path();
                if p.extension().is_none_or(|e| e != "log")
                    || f.metadata().map(|m| m.len()).unwrap_or(0) <= max
                {
                    continue;
                }
                let mut old = p.clone().into_os_string();
                old.push(".1");
                if std::fs::copy(&p, &old).is_ok()
                    && let Ok(file) = std::fs::OpenOptions::new().write(true).open(&p)
                    && file.set_len(0).is_ok()
                {
                    rotated += 1;
                }
            }
        }
    }
    rotated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_logs_are_rotated_and_small_ones_left() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("uid-1").join("logs").join("c");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("0.log"), vec![b'x'; 2000]).unwrap();
        std::fs::write(logs.join("1.log"), b"small").unwrap();
        assert_eq!(rotate_logs(dir.path(), 1000), 1);
        assert_eq!(std::fs::metadata(logs.join("0.log")).unwrap().len(), 0);
        assert_eq!(std::fs::read(logs.join("0.log.1")).unwrap().len(), 2000);
        assert_eq!(std::fs::read(logs.join("1.log")).unwrap(), b"small");
        assert_eq!(rotate_logs(dir.path(), 1000), 0);
    }
}
