//! Hollow nodes: each registers a Node, renews its Lease, and moves the pods bound to
//! it to Running/Ready with an IP from its podCIDR, without running anything. Deleted
//! pods are confirmed at once. One shared pod watch serves every hollow node.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::registration;

#[derive(Debug, Clone)]
pub struct HollowConfig {
    /// How often each node renews its Lease and posts Ready.
    pub heartbeat: Duration,
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
}

impl Default for HollowConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(10),
            cpu: "4".into(),
            memory: "8Gi".into(),
            max_pods: 110,
        }
    }
}

struct NodeState {
    cidr: Option<String>,
    next_ip: u32,
    ips: HashMap<String, Ipv4Addr>,
}

struct Shared {
    client: kube::Client,
    config: HollowConfig,
    nodes: Mutex<HashMap<String, NodeState>>,
    paused: Mutex<HashSet<String>>,
}

/// A set of running hollow nodes; `stop` ends them (their Node objects stay, as a
/// stopped kubelet's do).
pub struct HollowNodes {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HollowNodes {
    pub async fn start(
        client: kube::Client,
        names: Vec<String>,
        config: HollowConfig,
    ) -> Result<Self, kube::Error> {
        let shared = Arc::new(Shared {
            client,
            config,
            nodes: Mutex::new(
                names
                    .iter()
                    .map(|n| {
                        (
                            n.clone(),
                            NodeState {
                                cidr: None,
                                next_ip: 2,
                                ips: HashMap::new(),
                            },
                        )
                    })
                    .collect(),
            ),
            paused: Mutex::default(),
        });
        for n in &names {
            register(&shared, n).await?;
        }
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        for n in names {
            let shared = shared.clone();
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(
                async move { heartbeat(shared, n, cancel).await },
            ));
        }
        let (s, c) = (shared.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move { pods(s, c).await }));
        Ok(Self {
            shared,
            cancel,
            tasks,
        })
    }

    /// The node stops renewing its Lease and handling pods, like a crashed kubelet.
    pub fn pause(&self, node: &str) {
        self.shared
            .paused
            .lock()
            .expect("lock")
            .insert(node.to_string());
    }

    /// The node comes back: heartbeats resume and its pods are handled again.
    pub fn resume(&self, node: &str) {
        self.shared.paused.lock().expect("lock").remove(node);
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn register(shared: &Shared, name: &str) -> Result<(), kube::Error> {
    let c = &shared.config;
    let status = json!({
        "capacity": {"cpu": c.cpu, "memory": c.memory, "pods": c.max_pods.to_string()},
        "allocatable": {"cpu": c.cpu, "memory": c.memory, "pods": c.max_pods.to_string()},
        "conditions": [ready_condition()],
        "addresses": [{"type": "Hostname", "address": name}],
        "nodeInfo": {"kubeletVersion": tinykube_api::constants::KUBE_GIT_VERSION, "kubeProxyVersion": "",
                     "containerRuntimeVersion": "hollow://0", "osImage": "hollow", "kernelVersion": "hollow",
                     "operatingSystem": "linux", "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": ""},
    });
    let labels = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "tinykube.io/hollow": "true"});
    registration::register(&shared.client, name, labels, json!([]), status)
        .await
        .map(|_| ())
}

fn ready_condition() -> serde_json::Value {
    let now = tinykube_api::format::now_rfc3339();
    json!({"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
           "lastHeartbeatTime": now, "lastTransitionTime": now})
}

async fn heartbeat(shared: Arc<Shared>, name: String, cancel: CancellationToken) {
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let mut tick = tokio::time::interval(shared.config.heartbeat);
    let mut was_paused = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if shared.paused.lock().expect("lock").contains(&name) {
            was_paused = true;
            continue;
        }
        if let Err(e) =
            registration::renew_lease(&shared.client, &name, registration::LEASE_DURATION).await
        {
            tracing::debug!(node = %name, error = %e, "hollow lease renewal failed");
        }
        // Post Ready (the node lifecycle controller may have marked it Unknown).
        if let Ok(node) = nodes.get(&name).await {
            let cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.clone());
            if let Some(st) = shared.nodes.lock().expect("lock").get_mut(&name) {
                st.cidr = cidr;
            }
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if !ready {
                let patch = json!({"status": {"conditions": [ready_condition()]}});
                let _ = nodes
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await;
            }
        }
        if was_paused {
            was_paused = false;
            resync_node(&shared, &name).await;
        }
    }
}

/// After a pause, handle everything bound to the node that changed meanwhile.
async fn resync_node(shared: &Arc<Shared>, node: &str) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let lp = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
    if let Ok(list) = api.list(&lp).await {
        for p in list.items {
            handle(shared, &p).await;
        }
    }
}

async fn pods(shared: Arc<Shared>, cancel: CancellationToken) {
    let api: Api<Pod> = Api::all(shared.client.clone());
    let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = events.next() => ev,
        };
        let pod = match ev {
            None => return,
            Some(Ok(Event::Apply(p) | Event::InitApply(p))) => p,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "hollow node pod watch restarting");
                continue;
            }
        };
        let permit = limit.clone().acquire_owned().await.expect("semaphore open");
        let shared = shared.clone();
        tokio::spawn(async move {
            handle(&shared, &pod).await;
            drop(permit);
        });
    }
}

/// What a kubelet would do with this pod, minus running it.
async fn handle(shared: &Arc<Shared>, pod: &Pod) {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return;
    };
    if !shared.nodes.lock().expect("lock").contains_key(&node)
        || shared.paused.lock().expect("lock").contains(&node)
    {
        return;
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
    if pod.metadata.deletion_timestamp.is_some() {
        let _ = api
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await;
        if let Some(st) = shared.nodes.lock().expect("lock").get_mut(&node) {
            st.ips.remove(&format!("{ns}/{name}"));
        }
        return;
    }
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    if running {
        return;
    }
    // A node learns its podCIDR from IPAM shortly after registering.
    for _ in 0..40 {
        if shared
            .nodes
            .lock()
            .expect("lock")
            .get(&node)
            .is_some_and(|st| st.cidr.is_some())
        {
            break;
        }
        let nodes: Api<Node> = Api::all(shared.client.clone());
        if let Ok(n) = nodes.get(&node).await
            && let Some(cidr) = n.spec.and_then(|s| s.pod_cidr)
        {
            if let Some(st) = shared.nodes.lock().expect("lock").get_mut(&node) {
                st.cidr = Some(cidr);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ip = {
        let mut nodes = shared.nodes.lock().expect("lock");
        let Some(st) = nodes.get_mut(&node) else {
            return;
        };
        let Some(base) = st
            .cidr
            .as_ref()
            .and_then(|c| c.split('/').next()?.parse::<Ipv4Addr>().ok())
        else {
            return;
        };
        let key = format!("{ns}/{name}");
        if let Some(ip) = st.ips.get(&key) {
            *ip
        } else {
            let ip = Ipv4Addr::from(u32::from(base) + st.next_ip);
            st.next_ip = if st.next_ip >= 254 { 2 } else { st.next_ip + 1 };
            st.ips.insert(key, ip);
            ip
        }
    };
    let now = tinykube_api::format::now_rfc3339();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let statuses: Vec<serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "ready": true, "started": true, "restartCount": 0,
                        "containerID": format!("hollow://{ns}/{name}/{}", c.name), "state": {"running": {"startedAt": now}}}))
        .collect();
    let status = json!({"status": {
        "phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}], "hostIP": "127.0.0.1",
        "startTime": now, "qosClass": pod.spec.as_ref().map_or("BestEffort", tinykube_api::qos::qos_class),
        "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
        "containerStatuses": statuses,
    }});
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await
    {
        tracing::debug!(pod = %name, error = %e, "hollow status update failed");
    }
}
