//! A pod's app and init containers: the image by its pull policy, the OCI spec from
//! the container's spec (joined to the pause container's namespaces), start, and
//! exits (with the reason Kubernetes shows: Completed, Error, OOMKilled).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use tinykube_api::format::now_rfc3339;
use tinykube_client::recorder::EventType;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::{self, PodFacts, Sources};
use super::logs::{log_path, pod_dir};
use super::sandbox::cgroup;
use super::state::{
    Event, PodState, Run, SandboxId, Terminated, container_id, pod_key, restart_policy, uid,
};
use super::{LABEL_STARTED, PodContext, labels, probe};
use crate::runtime::Runtime;
use crate::runtime::container::NewContainer;
use crate::runtime::image::ResolvedImage;
use crate::runtime::spec::{ContainerSpec, Mount};

/// How long a container that could not be created waits before the next try.
const RETRY: Duration = Duration::from_secs(2);

/// Starts (or restarts) container `c`.
pub(super) async fn start(
    ctx: &Arc<PodContext>,
    pod: &Pod,
    c: &Container,
    st: &mut PodState,
    exits: &mpsc::UnboundedSender<Event>,
    sources: &mut Sources,
) {
    let Some(sandbox) = st.sandbox.as_ref() else {
        return;
    };
    let (pid, ip) = (sandbox.pid, sandbox.ip);
    let uid = uid(pod);
    let t0 = Instant::now();
    let policy = c.image_pull_policy.clone();
    let image = match ctx
        .images
        .ensure(
            &ctx.runtime,
            &c.image.clone().unwrap_or_default(),
            policy.as_deref(),
        )
        .await
    {
        Ok(i) => i,
        Err((reason, message)) => {
            let ctr = st.containers.get_mut(&c.name).expect("entry made by sync");
            ctx.recorder.record_later(
                pod,
                EventType::Warning,
                "Failed",
                &format!(
                    "Failed to pull image {:?}: {message}",
                    c.image.as_deref().unwrap_or("")
                ),
            );
            ctr.image_failed(reason, message, &ctx.backoff);
            return;
        }
    };
    let facts = PodFacts {
        pod,
        pod_ip: ip.to_string(),
        host_ip: ctx.node_ip.clone(),
    };
    let built = build_spec(ctx, pod, c, &image, &facts, sources, pid).await;
    let ctr = st.containers.get_mut(&c.name).expect("entry made by sync");
    let spec = match built {
        Ok(s) => s,
        Err(message) => {
            ctx.recorder.record_later(
                pod,
                EventType::Warning,
                "Failed",
                &format!("Error: {message}"),
            );
            ctr.fail_to_start("CreateContainerConfigError", message, RETRY);
            return;
        }
    };
    if let Some(old) = ctr.id.take() {
        ctx.runtime.remove_container(&old).await;
    }
    let attempt = ctr.attempts;
    let id = container_id(&uid, &c.name, attempt);
    let kind = if pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|ics| ics.iter().any(|i| i.name == c.name))
    {
        "init"
    } else {
        "app"
    };
    let started_at = now_rfc3339();
    let mut l = labels(pod, &c.name, kind, attempt);
    l.insert(LABEL_STARTED.into(), started_at.clone());
    let new = NewContainer {
        id: id.clone(),
        image: &image,
        labels: l,
        spec,
        log_path: log_path(&ctx.pods_dir, &uid, &c.name, attempt),
    };
    let _ = std::fs::remove_file(&new.log_path);
    ctr.image_id = format!(
        "{}@{}",
        crate::runtime::image::repository(&image.name),
        image.manifest_digest
    );
    if let Err(e) = ctx.runtime.create_container(&new).await {
        ctr.fail_to_start("CreateContainerError", crate::error_chain(&e), RETRY);
        return;
    }
    ctr.attempts += 1;
    ctr.id = Some(id.clone());
    ctr.retry_at = None;
    wait_for_exit(ctx.runtime.clone(), id.clone(), exits.clone());
    if let Err(e) = ctx.runtime.start_task(&id).await {
        ctr.fail_to_start("RunContainerError", crate::error_chain(&e), RETRY);
        ctx.runtime.remove_container(&id).await;
        ctr.id = None;
        return;
    }
    ctr.run = Run::Running { started_at };
    ctr.ready = c.readiness_probe.is_none();
    ctr.probes = probe::spawn(
        ctx.runtime.clone(),
        id.clone(),
        c.clone(),
        ip.to_string(),
        ctx.pods_dir.join("exec"),
        exits.clone(),
    )
    .map(|h| h.abort_handle());
    tracing::debug!(pod = %pod_key(pod), container = %c.name, total_ms = t0.elapsed().as_millis() as u64, "container started");
    ctx.recorder.record_later(
        pod,
        EventType::Normal,
        "Started",
        &format!("Started container {}", c.name),
    );
}

async fn build_spec(
    ctx: &Arc<PodContext>,
    pod: &Pod,
    c: &Container,
    image: &ResolvedImage,
    facts: &PodFacts<'_>,
    sources: &mut Sources,
    pause_pid: u32,
) -> Result<ContainerSpec, String> {
    let uid = uid(pod);
    let dir = pod_dir(&ctx.pods_dir, &uid);
    let env = config::environment(c, image, facts, sources)
        .await
        .map_err(|e| e.0)?;
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    let args = config::argv(c, image, &vars);
    if args.is_empty() {
        return Err("no command specified".into());
    }
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let paths = config::prepare_volumes(pod, &volumes, &dir, sources, &ctx.tokens)
        .await
        .map_err(|e| e.0)?;
    let read_only: Vec<String> = volumes
        .iter()
        .filter(|v| v.config_map.is_some() || v.secret.is_some() || v.projected.is_some())
        .map(|v| v.name.clone())
        .collect();
    let mut mounts = vec![
        Mount::bind(&dir.join("hosts").to_string_lossy(), "/etc/hosts", false),
        Mount::bind(
            &dir.join("hostname").to_string_lossy(),
            "/etc/hostname",
            false,
        ),
        Mount::bind(
            &dir.join("resolv.conf").to_string_lossy(),
            "/etc/resolv.conf",
            false,
        ),
    ];
    mounts.extend(config::volume_mounts(c, &paths, &read_only).map_err(|e| e.0)?);
    let (memory_limit, cpu_shares, cpu_quota) = config::resources(c);
    let sc = c.security_context.as_ref();
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let (mut uid_n, mut gid_n) = (0u32, 0u32);
    if let Some(u) = image.user() {
        let mut parts = u.split(':');
        uid_n = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        gid_n = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    }
    if let Some(u) = sc
        .and_then(|s| s.run_as_user)
        .or(psc.and_then(|s| s.run_as_user))
    {
        uid_n = u as u32;
    }
    if let Some(g) = sc
        .and_then(|s| s.run_as_group)
        .or(psc.and_then(|s| s.run_as_group))
    {
        gid_n = g as u32;
    }
    Ok(ContainerSpec {
        args,
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd: c
            .working_dir
            .clone()
            .or_else(|| image.working_dir())
            .unwrap_or_else(|| "/".into()),
        uid: uid_n,
        gid: gid_n,
        hostname: super::files::hostname(pod),
        netns: format!("/proc/{pause_pid}/ns/net"),
        ipc: Some(format!("/proc/{pause_pid}/ns/ipc")),
        uts: Some(format!("/proc/{pause_pid}/ns/uts")),
        mounts,
        memory_limit,
        cpu_shares,
        cpu_quota,
        cgroups_path: cgroup(ctx, &uid, &c.name),
        oom_score_adj: None,
        shim_group: Some(SandboxId::for_pod(&uid).container_id()),
    })
}

/// Whether the kernel OOM-killed something in a container's memory cgroup (v1 hosts:
/// `oom_kill` in memory.oom_control; v2: `oom_kill` in memory.events).
fn oom_killed(cgroups_path: &str) -> bool {
    let count = |path: String| {
        std::fs::read_to_string(path).ok().and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
        })
    };
    count(format!(
        "/sys/fs/cgroup/memory{cgroups_path}/memory.oom_control"
    ))
    .or_else(|| count(format!("/sys/fs/cgroup{cgroups_path}/memory.events")))
    .is_some_and(|n| n > 0)
}

/// Records a container's exit and removes its task and container (its log stays).
pub(super) async fn on_exit(
    ctx: &Arc<PodContext>,
    pod: &Pod,
    st: &mut PodState,
    exited_id: String,
    exit_code: u32,
) {
    let uid = uid(pod);
    let policy = restart_policy(pod).to_string();
    let Some((name, ctr)) = st.by_id(&exited_id) else {
        return;
    };
    let started_at = match &ctr.run {
        Run::Running { started_at } => started_at.clone(),
        _ => now_rfc3339(),
    };
    let oom = oom_killed(&cgroup(ctx, &uid, name));
    let code = exit_code as i32;
    let reason = if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let t = Terminated {
        exit_code: code,
        reason: reason.into(),
        started_at,
        finished_at: now_rfc3339(),
        container_id: format!("containerd://{exited_id}"),
    };
    ctr.exited_with(t, &policy, &ctx.backoff);
    ctx.runtime.remove_container(&exited_id).await;
}

/// Waits for container `id` to exit and reports it; rides out containerd restarts.
pub(super) fn wait_for_exit(rt: Runtime, id: String, tx: mpsc::UnboundedSender<Event>) {
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
