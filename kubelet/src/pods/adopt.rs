//! After an agent restart: what containerd still runs for a pod is adopted (running
//! containers kept as they are, exited ones reported), and what the API remembers of
//! containers that no longer exist (restart counts, last terminations) is restored.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

use super::containers::wait_for_exit;
use super::state::{Ctr, Event, PodState, Run, Sandbox, SandboxId, Terminated, uid};
use super::{
    LABEL_ATTEMPT, LABEL_CONTAINER_NAME, LABEL_KIND, LABEL_POD_UID, LABEL_STARTED, PodContext,
    probe,
};
use crate::runtime::container::ContainerRecord;
use crate::runtime::{Runtime, RuntimeError};

/// Containers in containerd, by pod UID.
pub(super) async fn containers_by_pod(
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
pub(super) async fn adopt(
    ctx: &Arc<PodContext>,
    pod: &Pod,
    records: Vec<ContainerRecord>,
    exits: &mpsc::UnboundedSender<Event>,
) -> PodState {
    let mut st = PodState::default();
    let uid = uid(pod);
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
            id: SandboxId::for_pod(&uid),
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
pub(super) fn with_api_history(pod: &Pod, mut st: PodState) -> PodState {
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
