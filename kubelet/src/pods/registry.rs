//! What the kubelet API (logs, exec) needs to know of each pod on this node, kept
//! current by the pods' workers.

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
}

#[derive(Debug, Clone)]
pub struct PodView {
    pub uid: String,
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
                uid: uid(pod),
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
