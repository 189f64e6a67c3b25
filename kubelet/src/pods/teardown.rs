//! A pod's end on the node: its containers stopped (SIGTERM, the grace period,
//! SIGKILL), then its sandbox, veth, network namespace, address and files removed, and
//! the API server told (a delete with grace 0, as the kubelet's status manager does).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Preconditions};
use tinykube_client::recorder::EventType;
use tinykube_net::link::host_if_name;
use tinykube_net::netns::NetNs;

use super::PodContext;
use super::logs::pod_dir;
use super::sandbox::netns_name;
use super::state::{PodState, pod_key, uid};

/// Stops the pod's containers (SIGTERM, up to `grace`, then SIGKILL) and removes its
/// sandbox, network wiring, address and files.
pub(super) async fn teardown(
    ctx: &Arc<PodContext>,
    st: &mut PodState,
    pod: Option<&Pod>,
    grace: Duration,
) {
    let ids: Vec<String> = st
        .containers
        .values()
        .filter_map(|c| c.id.clone())
        .collect();
    if let Some(p) = pod {
        let names: Vec<String> = st
            .containers
            .iter()
            .filter(|(_, c)| c.id.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            ctx.recorder.record_later(
                p,
                EventType::Normal,
                "Killing",
                &format!("Stopping container {n}"),
            );
        }
    }
    let stops: Vec<_> = ids
        .iter()
        .map(|id| {
            let rt = ctx.runtime.clone();
            let id = id.clone();
            async move {
                let _ = rt.kill_task(&id, libc::SIGTERM as u32, false).await;
                if tokio::time::timeout(grace, rt.wait_task(&id))
                    .await
                    .is_err()
                {
                    let _ = rt.kill_task(&id, libc::SIGKILL as u32, true).await;
                }
                rt.remove_container(&id).await;
            }
        })
        .collect();
    for c in st.containers.values_mut() {
        if let Some(p) = c.probes.take() {
            p.abort();
        }
    }
    futures::future::join_all(stops).await;
    for c in st.containers.values_mut() {
        c.id = None;
    }
    let uid = pod
        .map(uid)
        .or_else(|| st.sandbox.as_ref().map(|s| s.id.pod_uid().to_string()));
    if let Some(s) = st.sandbox.take() {
        ctx.runtime.remove_container(&s.id.container_id()).await;
    }
    if let Some(uid) = uid {
        cleanup_pod(ctx, &uid).await;
    }
}

/// Removes what a pod leaves on the node besides containers: veth, netns, address,
/// files.
pub(crate) async fn cleanup_pod(ctx: &PodContext, uid: &str) {
    ctx.registry.remove(uid);
    if let Err(e) = ctx.bridge.detach(&host_if_name(uid)).await {
        tracing::warn!(pod = uid, error = %e, "cannot remove the pod's veth");
    }
    if let Ok(ns) = NetNs::open(&netns_name(uid))
        && let Err(e) = ns.delete()
    {
        tracing::warn!(pod = uid, error = %e, "cannot remove the pod's network namespace");
    }
    if let Err(e) = ctx.ipam.release(uid) {
        tracing::warn!(pod = uid, error = %e, "cannot release the pod's address");
    }
    let _ = std::fs::remove_dir_all(pod_dir(&ctx.pods_dir, uid));
}

/// Tells the API server the pod is gone from the node (a delete with grace 0 and the
/// pod's UID as precondition, as the kubelet's status manager does).
pub(super) async fn confirm_deletion(ctx: &Arc<PodContext>, pod: &Pod) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    if let Err(e) = api.delete(&name, &dp).await {
        tracing::debug!(pod = %pod_key(pod), error = %e, "deletion confirmation failed");
    }
}
