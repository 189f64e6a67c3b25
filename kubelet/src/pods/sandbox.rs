//! A pod's sandbox: its address from the node's podCIDR, its network namespace wired
//! to `cni0` by a veth pair, its hosts/hostname/resolv.conf, and the pause container
//! that holds the namespaces every container of the pod joins.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tinykube_net::link::host_if_name;
use tinykube_net::netns::NetNs;
use tokio::time::Instant;

use super::logs::pod_dir;
use super::state::{Sandbox, SandboxId, uid};
use super::{PodContext, files, labels};
use crate::runtime::container::NewContainer;
use crate::runtime::spec::ContainerSpec;

/// The pod's network namespace, under /var/run/netns.
pub fn netns_name(uid: &str) -> String {
    format!("tk-{uid}")
}

pub(super) fn cgroup(ctx: &PodContext, uid: &str, leaf: &str) -> String {
    ctx.container_cgroup(uid, leaf)
}

/// The network namespace, its wiring and the pause container.
pub(super) async fn create_sandbox(
    ctx: &Arc<PodContext>,
    pod: &Pod,
    retry: bool,
) -> Result<Sandbox, String> {
    let uid = uid(pod);
    let name = pod.metadata.name.clone().unwrap_or_default();
    let t0 = Instant::now();
    let ip = ctx.ipam.allocate(&uid).map_err(|e| e.to_string())?;
    let nsname = netns_name(&uid);
    let netns = match NetNs::open(&nsname) {
        Ok(n) => n,
        Err(_) => NetNs::create(&nsname).map_err(|e| e.to_string())?,
    };
    let dir = pod_dir(&ctx.pods_dir, &uid);
    let hostname = files::hostname(pod);
    let write_files = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
        std::fs::write(dir.join("hosts"), files::hosts(pod, &ip.to_string()))?;
        let host = std::fs::read_to_string(&ctx.resolv_conf).unwrap_or_default();
        std::fs::write(dir.join("resolv.conf"), files::resolv_conf(pod, &host))
    };
    write_files().map_err(|e| format!("cannot write the pod's files in {}: {e}", dir.display()))?;
    let id = SandboxId::for_pod(&uid);
    let cid = id.container_id();
    if retry {
        // A sandbox left by an earlier attempt is replaced.
        ctx.runtime.remove_container(&cid).await;
    }
    let image = ctx.pause_image.clone();
    let spec = ContainerSpec {
        args: image.entrypoint(),
        env: image.env(),
        cwd: "/".into(),
        hostname: hostname.clone(),
        netns: netns.path().to_string_lossy().into_owned(),
        cgroups_path: cgroup(ctx, &uid, "sandbox"),
        shim_group: Some(cid.clone()),
        cpu_shares: Some(2),
        ..Default::default()
    };
    let new = NewContainer {
        id: cid.clone(),
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
        ctx.runtime.start_task(&cid).await?;
        Ok::<u32, crate::runtime::RuntimeError>(pid)
    };
    let ((wired, t_net), paused) = tokio::join!(wire, pause);
    let failed = match (&wired, &paused) {
        (Err(e), _) => Some(crate::error_chain(e)),
        (_, Err(e)) => Some(crate::error_chain(e)),
        _ => None,
    };
    if let Some(e) = failed {
        ctx.runtime.remove_container(&cid).await;
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
