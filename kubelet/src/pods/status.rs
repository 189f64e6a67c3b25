//! A pod's status as the kubelet posts it: phase, conditions, podIP, and each
//! container's state (CrashLoopBackOff while a restart waits), from the worker's state.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tinykube_api::format::now_rfc3339;
use tinykube_api::qos::qos_class;
use tokio::time::Instant;

use super::PodContext;
use super::state::{Ctr, PodState, Run, Terminated, pod_key, restart_policy, should_restart, uid};

fn state_json(run: &Run) -> Value {
    match run {
        Run::Waiting { reason, message } if message.is_empty() => {
            json!({"waiting": {"reason": reason}})
        }
        Run::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": message}})
        }
        Run::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        Run::Exited(t) => terminated_json(t),
    }
}

fn terminated_json(t: &Terminated) -> Value {
    json!({"terminated": {"exitCode": t.exit_code, "reason": t.reason, "startedAt": t.started_at,
                          "finishedAt": t.finished_at, "containerID": t.container_id}})
}

/// The pod's status from what the worker knows.
pub(super) fn status(node_ip: &str, pod: &Pod, st: &PodState) -> Value {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = restart_policy(pod).to_string();
    let key = format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or(""),
        uid(pod)
    );
    let container_status = |c: &Container, init: bool| {
        let ctr = st.containers.get(&c.name).cloned().unwrap_or_else(Ctr::new);
        let mut run = ctr.run.clone();
        // Waiting to restart after a crash is CrashLoopBackOff, as kubectl shows it.
        if let Run::Exited(t) = &run
            && should_restart(&policy, t.exit_code)
            && !(init && t.exit_code == 0)
            && ctr.retry_at.is_some_and(|r| Instant::now() < r)
        {
            run = Run::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!(
                    "back-off {} restarting failed container={} pod={key}",
                    tinykube_api::format::human_duration(ctr.waiting.as_secs() as i64),
                    c.name
                ),
            };
        }
        let running = matches!(run, Run::Running { .. });
        let last = match (&run, &ctr.last) {
            (Run::Exited(_), _) => json!({}),
            (_, Some(t)) => terminated_json(t),
            _ => json!({}),
        };
        let container_id = match (&ctr.id, &ctr.run) {
            (Some(id), _) => json!(format!("containerd://{id}")),
            (None, Run::Exited(t)) => json!(t.container_id),
            _ => Value::Null,
        };
        let mut s = json!({
            "name": c.name, "image": c.image, "imageID": ctr.image_id,
            "ready": running && !init && ctr.ready, "started": running, "restartCount": ctr.restarts(),
            "state": state_json(&run), "lastState": last,
        });
        if !container_id.is_null() {
            s["containerID"] = container_id;
        }
        s
    };
    let inits: Vec<&Container> = spec.init_containers.iter().flatten().collect();
    let init_done = inits.iter().all(|c| {
        st.containers
            .get(&c.name)
            .and_then(|x| x.exited())
            .is_some_and(|t| t.exit_code == 0)
    });
    let init_failed = policy == "Never"
        && inits.iter().any(|c| {
            st.containers
                .get(&c.name)
                .and_then(|x| x.exited())
                .is_some_and(|t| t.exit_code != 0)
        });
    let apps: Vec<Option<&Ctr>> = spec
        .containers
        .iter()
        .map(|c| st.containers.get(&c.name))
        .collect();
    let all_running = init_done
        && apps
            .iter()
            .all(|c| c.is_some_and(|c| matches!(c.run, Run::Running { .. }) && c.ready));
    let any_running = apps
        .iter()
        .any(|c| c.is_some_and(|c| matches!(c.run, Run::Running { .. })));
    let finished: Vec<Option<&Terminated>> =
        apps.iter().map(|c| c.and_then(|c| c.exited())).collect();
    let all_done = init_done
        && finished
            .iter()
            .all(|t| t.is_some_and(|t| !should_restart(&policy, t.exit_code)));
    let phase = if init_failed {
        "Failed"
    } else if all_done {
        if finished.iter().all(|t| t.is_some_and(|t| t.exit_code == 0)) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if init_done && (any_running || finished.iter().any(|t| t.is_some())) {
        "Running"
    } else {
        "Pending"
    };
    let t = now_rfc3339();
    let cond = |ty: &str, ok: bool, reason: &str| {
        let mut c = json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": t});
        if !ok && !reason.is_empty() {
            c["reason"] = json!(reason);
        }
        c
    };
    let ready_reason = if phase == "Succeeded" || phase == "Failed" {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let ready = all_running && phase == "Running";
    let mut status = json!({
        "phase": phase,
        "hostIP": node_ip, "hostIPs": [{"ip": node_ip}],
        "startTime": st.start_time,
        "qosClass": qos_class(&spec),
        "conditions": [
            cond("PodReadyToStartContainers", st.sandbox.is_some(), ""),
            cond("Initialized", init_done, "ContainersNotInitialized"),
            cond("Ready", ready, ready_reason),
            cond("ContainersReady", ready, ready_reason),
            cond("PodScheduled", true, ""),
        ],
        "containerStatuses": spec.containers.iter().map(|c| container_status(c, false)).collect::<Vec<_>>(),
    });
    if !inits.is_empty() {
        status["initContainerStatuses"] = json!(
            inits
                .iter()
                .map(|c| container_status(c, true))
                .collect::<Vec<_>>()
        );
    }
    if let Some(s) = &st.sandbox {
        status["podIP"] = json!(s.ip.to_string());
        status["podIPs"] = json!([{"ip": s.ip.to_string()}]);
    }
    if let Some(e) = &st.sandbox_error {
        status["message"] = json!(e);
    }
    status
}

/// The pod's Ready condition as the API has it ("True", "False", or none).
pub(super) fn api_ready(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str())
}

fn posted_ready(s: &Value) -> Option<&str> {
    s["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
}

/// Patches the pod's status when it changed (transition times aside), or when the
/// API's readiness is not what we would post.
pub(super) async fn post_status(ctx: &Arc<PodContext>, pod: &Pod, st: &mut PodState) {
    let s = status(&ctx.node_ip, pod, st);
    let comparable = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v["conditions"].as_array_mut() {
            for c in cs {
                c["lastTransitionTime"] = Value::Null;
            }
        }
        v
    };
    // Posted again when the API says otherwise of readiness than we do (the node
    // controller marks a silent node's pods not ready; a reboot leaves them ready).
    if st.posted.as_ref().map(comparable) == Some(comparable(&s))
        && api_ready(pod) == posted_ready(&s)
    {
        return;
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let name = pod.metadata.name.clone().unwrap_or_default();
    match api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": s})),
        )
        .await
    {
        Ok(_) => st.posted = Some(s),
        Err(e) => tracing::debug!(pod = %pod_key(pod), error = %e, "status update failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "app", "image": "toolbox"}]},
        }))
        .unwrap()
    }

    fn exited(code: i32) -> Ctr {
        let t = Terminated {
            exit_code: code,
            reason: "Error".into(),
            started_at: "t0".into(),
            finished_at: "t1".into(),
            container_id: "containerd://c".into(),
        };
        let mut c = Ctr::new();
        c.attempts = 1;
        c.last = Some(t.clone());
        c.run = Run::Exited(t);
        c
    }

    #[test]
    fn a_pod_without_its_sandbox_is_pending() {
        let s = status("192.168.56.11", &pod("Always"), &PodState::default());
        assert_eq!(s["phase"], "Pending");
        assert_eq!(s["hostIP"], "192.168.56.11");
        assert_eq!(s["qosClass"], "BestEffort");
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
    }

    #[test]
    fn finished_containers_decide_the_phase_by_restart_policy() {
        for (policy, code, phase) in [
            ("Never", 0, "Succeeded"),
            ("Never", 3, "Failed"),
            ("OnFailure", 0, "Succeeded"),
        ] {
            let mut st = PodState::default();
            st.containers.insert("app".into(), exited(code));
            let s = status("n", &pod(policy), &st);
            assert_eq!(s["phase"], phase, "{policy} {code}");
            assert_eq!(
                s["containerStatuses"][0]["state"]["terminated"]["exitCode"],
                code
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_that_waits_shows_crash_loop_back_off() {
        let mut st = PodState::default();
        let mut c = exited(1);
        c.waiting = Duration::from_secs(10);
        c.retry_at = Some(Instant::now() + Duration::from_secs(10));
        st.containers.insert("app".into(), c);
        let s = status("n", &pod("Always"), &st);
        let waiting = &s["containerStatuses"][0]["state"]["waiting"];
        assert_eq!(waiting["reason"], "CrashLoopBackOff");
        assert!(
            waiting["message"]
                .as_str()
                .unwrap()
                .starts_with("back-off 10s restarting failed container=app pod=web_default(u1)"),
            "{waiting}"
        );
        assert_eq!(
            s["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
            1
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        let s = status("n", &pod("Always"), &st);
        assert!(s["containerStatuses"][0]["state"]["terminated"].is_object());
    }
}
