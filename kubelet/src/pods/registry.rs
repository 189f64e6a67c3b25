//! What the kubelet API (logs, exec, stats, inspect) needs to know of each pod on this
//! node, kept current by the pods' workers.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;

use super::state::{PodState, Run, uid};

/// A container as the kubelet API sees it.
#[derive(Debug, Clone)]
pub struct ContainerView {
    /// Attempts started so far; the current (or last) one is `attempts - 1`.
    pub attempts: u32,
    pub id: Option<String>,
    pub running: bool,
    pub waiting: Option<String>,
    pub restarts: u32,
    /// The image as the spec names it, and the digest it resolved to.
    pub image: String,
    pub image_id: String,
    /// An init container (stats leave out the ones that are done).
    pub init: bool,
}

/// The pod's sandbox: the pause container's pid (whose namespaces the pod shares) and
/// the pod's address.
#[derive(Debug, Clone, Copy)]
pub struct SandboxView {
    pub pid: u32,
    pub ip: std::net::Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub sandbox: Option<SandboxView>,
    pub start_time: Option<String>,
    pub containers: HashMap<String, ContainerView>,
}

/// Pods of this node by namespace and name.
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

    /// Every pod on this node.
    pub fn all(&self) -> Vec<PodView> {
        self.0
            .lock()
            .expect("registry lock")
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn set(&self, pod: &Pod, st: &PodState) {
        let key = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        let spec = pod.spec.clone().unwrap_or_default();
        let image_of = |name: &str| {
            spec.containers
                .iter()
                .map(|c| (c, false))
                .chain(spec.init_containers.iter().flatten().map(|c| (c, true)))
                .find(|(c, _)| c.name == name)
                .map(|(c, init)| (c.image.clone().unwrap_or_default(), init))
                .unwrap_or_default()
        };
        let containers = st
            .containers
            .iter()
            .map(|(n, c)| {
                let (image, init) = image_of(n);
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
                        restarts: c.restarts(),
                        image,
                        image_id: c.image_id.clone(),
                        init,
                    },
                )
            })
            .collect();
        let view = PodView {
            namespace: key.0.clone(),
            name: key.1.clone(),
            uid: uid(pod),
            sandbox: st.sandbox.as_ref().map(|s| SandboxView {
                pid: s.pid,
                ip: s.ip,
            }),
            start_time: st.start_time.clone(),
            containers,
        };
        self.0.lock().expect("registry lock").insert(key, view);
    }

    pub(crate) fn remove(&self, uid: &str) {
        self.0
            .lock()
            .expect("registry lock")
            .retain(|_, v| v.uid != uid);
    }
}
