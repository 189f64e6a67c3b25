//! One task per pod: brings the pod's sandbox and containers towards its spec
//! (init containers in order, then the app containers, restarted by the pod's
//! restartPolicy), posts the pod's status, and on deletion tears everything down.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tinykube_api::format::now_rfc3339;
use tinykube_client::recorder::EventType;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::config::Sources;
use super::state::{Event, PodState, ProbeKind, Step, pod_key, restart_policy};
use super::{PodContext, containers, sandbox, status, teardown};

/// Runs one pod until it is deleted (or the agent stops).
pub(super) async fn run(
    ctx: Arc<PodContext>,
    mut pods: watch::Receiver<Option<Pod>>,
    mut state: PodState,
    exits_tx: mpsc::UnboundedSender<Event>,
    mut exits: mpsc::UnboundedReceiver<Event>,
) {
    loop {
        let current = pods.borrow_and_update().clone();
        let Some(pod) = current else {
            // Gone from the API without a graceful delete (force-deleted).
            teardown::teardown(&ctx, &mut state, None, Duration::ZERO).await;
            return;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30)
                .max(0);
            teardown::teardown(
                &ctx,
                &mut state,
                Some(&pod),
                Duration::from_secs(grace as u64),
            )
            .await;
            teardown::confirm_deletion(&ctx, &pod).await;
            return;
        }
        if state.sandbox.is_none() && status::api_ready(&pod) == Some("True") {
            // Nothing of the pod runs (the machine rebooted, or its sandbox went while
            // the agent was away) but the API still says it is ready: say otherwise
            // before starting it again, so its Services stop sending it traffic.
            status::post_status(&ctx, &pod, &mut state).await;
        }
        sync(&ctx, &pod, &mut state, &exits_tx).await;
        status::post_status(&ctx, &pod, &mut state).await;
        ctx.registry.set(&pod, &state);
        let wake = state.next_wake();
        let sleep = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = pods.changed() => if changed.is_err() { return },
            Some(e) = exits.recv() => {
                on_event(&ctx, &pod, &mut state, e).await;
                while let Ok(e) = exits.try_recv() {
                    on_event(&ctx, &pod, &mut state, e).await;
                }
                ctx.registry.set(&pod, &state);
            }
            _ = sleep => {}
        }
    }
}

/// Brings the pod's containers towards its spec.
async fn sync(
    ctx: &Arc<PodContext>,
    pod: &Pod,
    st: &mut PodState,
    exits: &mpsc::UnboundedSender<Event>,
) {
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    if st.start_time.is_none() {
        st.start_time = Some(
            pod.status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| tinykube_api::format::rfc3339(t.0))
                .unwrap_or_else(now_rfc3339),
        );
    }
    let policy = restart_policy(pod).to_string();
    let mut sources = Sources::new(
        ctx.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    loop {
        match st.next_step(spec, &policy, Instant::now()) {
            Step::Wait => return,
            Step::Sandbox => {
                match sandbox::create_sandbox(ctx, pod, st.sandbox_error.is_some()).await {
                    Ok(s) => st.sandbox_ready(s),
                    Err(e) => {
                        tracing::warn!(pod = %pod_key(pod), error = %e, "cannot create the pod sandbox");
                        ctx.recorder.record_later(
                            pod,
                            EventType::Warning,
                            "FailedCreatePodSandBox",
                            &format!("Failed to create pod sandbox: {e}"),
                        );
                        st.sandbox_failed(e, ctx.backoff.max);
                        return;
                    }
                }
            }
            Step::Start(names) => {
                for name in names {
                    let c = spec
                        .init_containers
                        .iter()
                        .flatten()
                        .chain(&spec.containers)
                        .find(|c| c.name == name)
                        .expect("planned from the spec");
                    containers::start(ctx, pod, c, st, exits, &mut sources).await;
                }
                return;
            }
        }
    }
}

/// Handles a container exit or a probe result.
async fn on_event(ctx: &Arc<PodContext>, pod: &Pod, st: &mut PodState, e: Event) {
    match e {
        Event::Exited { id, code } => containers::on_exit(ctx, pod, st, id, code).await,
        Event::Probe {
            id,
            kind,
            ok,
            message,
        } => {
            let Some((name, ctr)) = st.by_id(&id) else {
                return;
            };
            let name = name.clone();
            if !ok {
                ctx.recorder.record_later(
                    pod,
                    EventType::Warning,
                    "Unhealthy",
                    &format!("{} probe failed: {message}", kind.name()),
                );
            }
            match kind {
                ProbeKind::Readiness => ctr.ready = ok,
                ProbeKind::Liveness if !ok => {
                    ctx.recorder.record_later(
                        pod,
                        EventType::Normal,
                        "Killing",
                        &format!("Container {name} failed liveness probe, will be restarted"),
                    );
                    let grace = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                        .unwrap_or(30)
                        .max(0) as u64;
                    let rt = ctx.runtime.clone();
                    // The exit then comes through the container's waiter, as any exit.
                    tokio::spawn(async move {
                        let _ = rt.kill_task(&id, libc::SIGTERM as u32, false).await;
                        if tokio::time::timeout(Duration::from_secs(grace), rt.wait_task(&id))
                            .await
                            .is_err()
                        {
                            let _ = rt.kill_task(&id, libc::SIGKILL as u32, true).await;
                        }
                    });
                }
                ProbeKind::Liveness => {}
            }
        }
    }
}
