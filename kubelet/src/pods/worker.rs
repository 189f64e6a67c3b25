//! One task per pod: builds the sandbox (netns, veth, pause container), runs init
//! containers in order and then the app containers, restarts them by the pod's
//! restartPolicy with Kubernetes' back-off, posts the pod's status, and on deletion
//! stops everything (SIGTERM, grace period, SIGKILL) and removes every trace.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tinykube_net::link::host_if_name;
use tinykube_net::netns::NetNs;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::config::{self, PodFacts, Sources};
use super::probe::{self, Kind};
use super::{PodContext, labels};
use crate::runtime::container::NewContainer;
use crate::runtime::image::ResolvedImage;
use crate::runtime::spec::{ContainerSpec, Mount};

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Terminated {
    pub exit_code: i32,
    pub reason: String,
    pub started_at: String,
    pub finished_at: String,
    pub container_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Run {
    Waiting { reason: String, message: String },
    Running { started_at: String },
    Exited(Terminated),
}

#[derive(Debug, Clone)]
pub(crate) struct Ctr {
    pub run: Run,
    pub last: Option<Terminated>,
    /// Containers started so far (the next attempt's number).
    pub attempts: u32,
    pub id: Option<String>,
    pub image_id: String,
    pub backoff: Duration,
    /// The back-off of the pending restart (what CrashLoopBackOff reports).
    pub waiting: Duration,
    pub retry_at: Option<Instant>,
    /// Readiness (true without a readiness probe once running).
    pub ready: bool,
    pub probes: Option<tokio::task::AbortHandle>,
}

impl Ctr {
    pub(crate) fn new() -> Self {
        Self {
            run: Run::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last: None,
            attempts: 0,
            id: None,
            image_id: String::new(),
            backoff: Duration::ZERO,
            waiting: Duration::ZERO,
            retry_at: None,
            ready: false,
            probes: None,
        }
    }

    fn restarts(&self) -> u32 {
        self.attempts.saturating_sub(1)
    }

    fn exited(&self) -> Option<&Terminated> {
        match &self.run {
            Run::Exited(t) => Some(t),
            _ => None,
        }
    }
}

pub(crate) struct Sandbox {
    pub id: String,
    pub pid: u32,
    pub ip: Ipv4Addr,
}

/// What a worker knows of its pod's containers.
#[derive(Default)]
pub(crate) struct PodState {
    pub sandbox: Option<Sandbox>,
    pub sandbox_error: Option<String>,
    pub sandbox_retry_at: Option<Instant>,
    pub sandbox_backoff: Duration,
    pub containers: HashMap<String, Ctr>,
    pub start_time: Option<String>,
    pub posted: Option<Value>,
}

/// What a pod's worker hears about its containers besides pod updates.
pub(crate) enum Event {
    /// A container's task exited (from the task that waits on it).
    Exited { id: String, code: u32 },
    /// A probe changed state (or a liveness probe failed).
    Probe {
        id: String,
        kind: Kind,
        ok: bool,
        message: String,
    },
}

fn now() -> String {
    tinykube_api::format::now_rfc3339()
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

pub(crate) fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

pub(crate) fn netns_name(uid: &str) -> String {
    format!("tk-{uid}")
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn should_restart(policy: &str, code: i32) -> bool {
    policy == "Always" || (policy == "OnFailure" && code != 0)
}

/// Runs one pod until it is deleted (or the agent stops).
pub(crate) async fn run(
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
            teardown(&ctx, &mut state, None, Duration::ZERO).await;
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
            teardown(
                &ctx,
                &mut state,
                Some(&pod),
                Duration::from_secs(grace as u64),
            )
            .await;
            confirm_deletion(&ctx, &pod).await;
            return;
        }
        sync(&ctx, &pod, &mut state, &exits_tx).await;
        post_status(&ctx, &pod, &mut state).await;
        ctx.registry.set(&pod, &state);
        let wake = [state.sandbox_retry_at]
            .into_iter()
            .chain(state.containers.values().map(|c| c.retry_at))
            .flatten()
            .min();
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
                .unwrap_or_else(now),
        );
    }
    if st.sandbox.is_none() {
        if st.sandbox_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match create_sandbox(ctx, pod, st.sandbox_error.is_some()).await {
            Ok(s) => {
                st.sandbox = Some(s);
                st.sandbox_error = None;
                st.sandbox_retry_at = None;
            }
            Err(e) => {
                tracing::warn!(pod = %pod_key(pod), error = %e, "cannot create the pod sandbox");
                super::event(
                    &ctx.client,
                    pod,
                    "Warning",
                    "FailedCreatePodSandBox",
                    &format!("Failed to create pod sandbox: {e}"),
                )
                .await;
                st.sandbox_error = Some(e);
                st.sandbox_backoff =
                    (st.sandbox_backoff * 2).clamp(Duration::from_secs(1), ctx.backoff_max);
                st.sandbox_retry_at = Some(Instant::now() + st.sandbox_backoff);
                return;
            }
        }
    }
    let policy = restart_policy(pod).to_string();
    let mut sources = Sources::new(
        ctx.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    // Init containers, one at a time, each to success.
    for c in spec.init_containers.iter().flatten() {
        let ctr = st.containers.entry(c.name.clone()).or_insert_with(Ctr::new);
        match &ctr.run {
            Run::Exited(t) if t.exit_code == 0 => continue,
            Run::Running { .. } => return,
            // A failed init container is retried unless the pod's policy is Never.
            Run::Exited(_) if policy == "Never" => return,
            Run::Exited(_) | Run::Waiting { .. } => {
                if ctr.retry_at.is_some_and(|r| Instant::now() < r) {
                    return;
                }
                start(ctx, pod, c, st, exits, &mut sources).await;
                return;
            }
        }
    }
    for c in &spec.containers {
        let ctr = st.containers.entry(c.name.clone()).or_insert_with(Ctr::new);
        let go = match &ctr.run {
            Run::Running { .. } => false,
            Run::Waiting { .. } => ctr.retry_at.is_none_or(|r| Instant::now() >= r),
            Run::Exited(t) => {
                should_restart(&policy, t.exit_code)
                    && ctr.retry_at.is_none_or(|r| Instant::now() >= r)
            }
        };
        if go {
            start(ctx, pod, c, st, exits, &mut sources).await;
        }
    }
}

fn pod_dir(ctx: &PodContext, uid: &str) -> PathBuf {
    ctx.pods_dir.join(uid)
}

pub fn log_path(ctx: &PodContext, uid: &str, container: &str, attempt: u32) -> PathBuf {
    pod_dir(ctx, uid)
        .join("logs")
        .join(container)
        .join(format!("{attempt}.log"))
}

fn cgroup(ctx: &PodContext, uid: &str, leaf: &str) -> String {
    format!("{}/pod{uid}/{leaf}", ctx.cgroup_parent)
}

/// The network namespace, its wiring and the pause container.
async fn create_sandbox(ctx: &Arc<PodContext>, pod: &Pod, retry: bool) -> Result<Sandbox, String> {
    let uid = uid(pod);
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let t0 = Instant::now();
    let ip = ctx.ipam.allocate(&uid).map_err(|e| e.to_string())?;
    let nsname = netns_name(&uid);
    let netns = match NetNs::open(&nsname) {
        Ok(n) => n,
        Err(_) => NetNs::create(&nsname).map_err(|e| e.to_string())?,
    };
    let dir = pod_dir(ctx, &uid);
    let files = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("hostname"), format!("{name}\n"))?;
        std::fs::write(
            dir.join("hosts"),
            format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{name}\n"
            ),
        )?;
        let domain = tinykube_api::constants::CLUSTER_DOMAIN;
        std::fs::write(
            dir.join("resolv.conf"),
            format!(
                "search {ns}.svc.{domain} svc.{domain} {domain}\nnameserver {}\noptions ndots:5\n",
                tinykube_api::constants::CLUSTER_DNS_IP
            ),
        )
    };
    files().map_err(|e| format!("cannot write the pod's files in {}: {e}", dir.display()))?;
    let id = format!("{uid}-sandbox");
    if retry {
        // A sandbox left by an earlier attempt is replaced.
        ctx.runtime.remove_container(&id).await;
    }
    let image = ctx.pause_image.clone();
    let spec = ContainerSpec {
        args: image.entrypoint(),
        env: image.env(),
        cwd: "/".into(),
        hostname: name.clone(),
        netns: netns.path().to_string_lossy().into_owned(),
        cgroups_path: cgroup(ctx, &uid, "sandbox"),
        shim_group: Some(id.clone()),
        cpu_shares: Some(2),
        ..Default::default()
    };
    let new = NewContainer {
        id: id.clone(),
        image: &image,
        labels: labels(pod, "POD", "sandbox", 0),
        spec,
        log_path: dir.join("logs").join("sandbox.log"),
    };
    // The pause container only holds the namespace: it starts while the namespace is
    // wired, and app containers start only once both are done.
    let wire = async {
        let t = Instant::now();
        let r = ctx.bridge.attach(&netns, &host_if_name(&uid), ip).await;
        (r, t.elapsed())
    };
    let pause = async {
        let pid = ctx.runtime.create_container(&new).await?;
        ctx.runtime.start_task(&id).await?;
        Ok::<u32, crate::runtime::RuntimeError>(pid)
    };
    let ((wired, t_net), paused) = tokio::join!(wire, pause);
    let failed = match (&wired, &paused) {
        (Err(e), _) => Some(crate::error_chain(e)),
        (_, Err(e)) => Some(crate::error_chain(e)),
        _ => None,
    };
    if let Some(e) = failed {
        ctx.runtime.remove_container(&id).await;
        return Err(e);
    }
    let pid = paused.expect("checked above");
    // Hairpin only matters once the pod talks to its own service: set off the start-up
    // path, where one more link change per pod would queue behind every other pod's.
    let (c, host) = (ctx.clone(), host_if_name(&uid));
    tokio::spawn(async move {
        if let Err(e) = c.bridge.hairpin(&host).await {
            tracing::warn!(port = %host, error = %crate::error_chain(&e), "cannot turn on hairpin");
        }
    });
    tracing::debug!(
        pod = %name,
        network_ms = t_net.as_millis() as u64,
        total_ms = t0.elapsed().as_millis() as u64,
        "sandbox started"
    );
    Ok(Sandbox { id, pid, ip })
}

/// Starts (or restarts) container `c`.
async fn start(
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
            super::event(
                &ctx.client,
                pod,
                "Warning",
                "Failed",
                &format!(
                    "Failed to pull image {:?}: {message}",
                    c.image.as_deref().unwrap_or("")
                ),
            )
            .await;
            let was_pull_error = matches!(&ctr.run, Run::Waiting { reason, .. } if reason == "ErrImagePull" || reason == "ImagePullBackOff");
            ctr.run = Run::Waiting {
                reason: if was_pull_error && reason == "ErrImagePull" {
                    "ImagePullBackOff".into()
                } else {
                    reason
                },
                message,
            };
            ctr.backoff = next_backoff(ctx, ctr.backoff);
            ctr.retry_at = Some(Instant::now() + ctr.backoff);
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
            ctr.run = Run::Waiting {
                reason: "CreateContainerConfigError".into(),
                message: message.clone(),
            };
            super::event(
                &ctx.client,
                pod,
                "Warning",
                "Failed",
                &format!("Error: {message}"),
            )
            .await;
            ctr.retry_at = Some(Instant::now() + Duration::from_secs(2));
            return;
        }
    };
    if let Some(old) = ctr.id.take() {
        ctx.runtime.remove_container(&old).await;
    }
    let attempt = ctr.attempts;
    let id = format!("{uid}-{}-{attempt}", c.name);
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
    let started_at = now();
    let mut l = labels(pod, &c.name, kind, attempt);
    l.insert(super::LABEL_STARTED.into(), started_at.clone());
    let new = NewContainer {
        id: id.clone(),
        image: &image,
        labels: l,
        spec,
        log_path: log_path(ctx, &uid, &c.name, attempt),
    };
    let _ = std::fs::remove_file(&new.log_path);
    ctr.image_id = format!(
        "{}@{}",
        crate::runtime::image::repository(&image.name),
        image.manifest_digest
    );
    let fail = |ctr: &mut Ctr, message: String| {
        ctr.run = Run::Waiting {
            reason: "CreateContainerError".into(),
            message,
        };
        ctr.retry_at = Some(Instant::now() + Duration::from_secs(2));
    };
    if let Err(e) = ctx.runtime.create_container(&new).await {
        fail(ctr, crate::error_chain(&e));
        return;
    }
    ctr.attempts += 1;
    ctr.id = Some(id.clone());
    ctr.retry_at = None;
    super::wait_for_exit(ctx.runtime.clone(), id.clone(), exits.clone());
    if let Err(e) = ctx.runtime.start_task(&id).await {
        ctr.run = Run::Waiting {
            reason: "RunContainerError".into(),
            message: crate::error_chain(&e),
        };
        ctx.runtime.remove_container(&id).await;
        ctr.id = None;
        ctr.retry_at = Some(Instant::now() + Duration::from_secs(2));
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
    super::event(
        &ctx.client,
        pod,
        "Normal",
        "Started",
        &format!("Started container {}", c.name),
    )
    .await;
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
    let dir = pod_dir(ctx, &uid);
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
    let paths = config::prepare_volumes(&volumes, &dir, sources)
        .await
        .map_err(|e| e.0)?;
    let read_only: Vec<String> = volumes
        .iter()
        .filter(|v| v.config_map.is_some() || v.secret.is_some())
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
        hostname: pod.metadata.name.clone().unwrap_or_default(),
        netns: format!("/proc/{pause_pid}/ns/net"),
        ipc: Some(format!("/proc/{pause_pid}/ns/ipc")),
        uts: Some(format!("/proc/{pause_pid}/ns/uts")),
        mounts,
        memory_limit,
        cpu_shares,
        cpu_quota,
        cgroups_path: cgroup(ctx, &uid, &c.name),
        oom_score_adj: None,
        shim_group: Some(format!("{uid}-sandbox")),
    })
}

fn next_backoff(ctx: &PodContext, current: Duration) -> Duration {
    if current.is_zero() {
        ctx.backoff_base
    } else {
        (current * 2).min(ctx.backoff_max)
    }
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

/// Handles a container exit or a probe result.
pub(crate) async fn on_event(ctx: &Arc<PodContext>, pod: &Pod, st: &mut PodState, e: Event) {
    match e {
        Event::Exited { id, code } => on_exit(ctx, pod, st, id, code).await,
        Event::Probe {
            id,
            kind,
            ok,
            message,
        } => {
            let Some((name, ctr)) = st
                .containers
                .iter_mut()
                .find(|(_, c)| c.id.as_deref() == Some(&id))
            else {
                return;
            };
            let name = name.clone();
            if !ok {
                super::event(
                    &ctx.client,
                    pod,
                    "Warning",
                    "Unhealthy",
                    &format!("{} probe failed: {message}", kind.name()),
                )
                .await;
            }
            match kind {
                Kind::Readiness => ctr.ready = ok,
                Kind::Liveness if !ok => {
                    super::event(
                        &ctx.client,
                        pod,
                        "Normal",
                        "Killing",
                        &format!("Container {name} failed liveness probe, will be restarted"),
                    )
                    .await;
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
                Kind::Liveness => {}
            }
        }
    }
}

/// Records a container's exit and removes its task and container (its log stays).
async fn on_exit(
    ctx: &Arc<PodContext>,
    pod: &Pod,
    st: &mut PodState,
    exited_id: String,
    exit_code: u32,
) {
    let e = (exited_id, exit_code);
    let uid = uid(pod);
    let policy = restart_policy(pod).to_string();
    let Some((name, ctr)) = st
        .containers
        .iter_mut()
        .find(|(_, c)| c.id.as_deref() == Some(&e.0))
    else {
        return;
    };
    if let Some(p) = ctr.probes.take() {
        p.abort();
    }
    ctr.ready = false;
    let started_at = match &ctr.run {
        Run::Running { started_at } => started_at.clone(),
        _ => now(),
    };
    let oom = oom_killed(&cgroup(ctx, &uid, name));
    let code = e.1 as i32;
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
        finished_at: now(),
        container_id: format!("containerd://{}", e.0),
    };
    ctx.runtime.remove_container(&e.0).await;
    ctr.id = None;
    ctr.last = Some(t.clone());
    if should_restart(&policy, code) {
        // Kubernetes restarts a container at once the first time, then backs off
        // 10 s, 20 s, ... up to 5 minutes.
        ctr.waiting = ctr.backoff;
        ctr.retry_at = Some(Instant::now() + ctr.backoff);
        ctr.backoff = next_backoff(ctx, ctr.backoff);
    }
    ctr.run = Run::Exited(t);
}

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
pub(crate) fn status(ctx: &PodContext, pod: &Pod, st: &PodState) -> Value {
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
    let t = now();
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
        "hostIP": ctx.node_ip, "hostIPs": [{"ip": ctx.node_ip}],
        "startTime": st.start_time,
        "qosClass": qos(&spec),
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

fn qos(spec: &k8s_openapi::api::core::v1::PodSpec) -> &'static str {
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let has = |c: &Container, limits: bool, k: &str| {
        c.resources
            .as_ref()
            .and_then(|r| {
                if limits {
                    r.limits.as_ref()
                } else {
                    r.requests.as_ref()
                }
            })
            .is_some_and(|m| m.contains_key(k))
    };
    if all.iter().all(|c| {
        !has(c, true, "cpu")
            && !has(c, true, "memory")
            && !has(c, false, "cpu")
            && !has(c, false, "memory")
    }) {
        return "BestEffort";
    }
    let guaranteed = all.iter().all(|c| {
        ["cpu", "memory"].iter().all(|k| {
            let r = c.resources.as_ref();
            let l = r.and_then(|r| r.limits.as_ref()).and_then(|m| m.get(*k));
            let q = r
                .and_then(|r| r.requests.as_ref())
                .and_then(|m| m.get(*k))
                .or(l);
            l.is_some() && l == q
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Patches the pod's status when it changed (transition times aside).
async fn post_status(ctx: &Arc<PodContext>, pod: &Pod, st: &mut PodState) {
    let s = status(ctx, pod, st);
    let comparable = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v["conditions"].as_array_mut() {
            for c in cs {
                c["lastTransitionTime"] = Value::Null;
            }
        }
        v
    };
    if st.posted.as_ref().map(comparable) == Some(comparable(&s)) {
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

/// Stops the pod's containers (SIGTERM, up to `grace`, then SIGKILL) and removes its
/// sandbox, network wiring, address and files.
pub(crate) async fn teardown(
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
            super::event(
                &ctx.client,
                p,
                "Normal",
                "Killing",
                &format!("Stopping container {n}"),
            )
            .await;
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
    let uid = pod.map(uid).or_else(|| {
        st.sandbox
            .as_ref()
            .map(|s| s.id.trim_end_matches("-sandbox").to_string())
    });
    if let Some(s) = st.sandbox.take() {
        ctx.runtime.remove_container(&s.id).await;
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
    let _ = std::fs::remove_dir_all(pod_dir(ctx, uid));
}

/// Tells the API server the pod is gone from the node (a delete with grace 0 and the
/// pod's UID as precondition, as the kubelet's status manager does).
async fn confirm_deletion(ctx: &Arc<PodContext>, pod: &Pod) {
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
