//! What a pod and this node are made of, read from the kernel and containerd: for
//! `tinykube ctl inspect pod|node` through the kubelet API. A pod: the pause container
//! and the namespaces every container shares with it (or not), each container's pid,
//! image, snapshot, cgroup and limits, logs and restarts, the pod's `eth0` with its
//! routes, and the veth peer on the node with the bridge it is a port of. The node: its
//! podCIDR, the bridge and its ports, its routes.

use std::sync::Arc;

use serde_json::{Value, json};
use tinykube_net::inspect::{self as netinspect, Link};
use tinykube_net::link::{connect, connect_in, host_if_name};
use tinykube_net::netns::NetNs;

use crate::pods::sandbox::netns_name;
use crate::pods::{PodContext, PodView, SandboxId, log_path};
use crate::stats::{self, Hierarchy};

/// Why a pod cannot be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("pod {0} is not on node {1}")]
    NotHere(String, String),
    #[error("pod {0} is not running yet: its sandbox is not up")]
    NoSandbox(String),
    #[error("cannot read the pod's network")]
    Network(#[from] tinykube_net::link::LinkError),
    #[error("cannot open the pod's network namespace")]
    Netns(#[from] tinykube_net::netns::NetnsError),
    #[error("the probe from pod {0} did not finish")]
    Probe(String),
}

/// The namespaces a pod's containers can share with its pause container.
const NAMESPACES: [&str; 6] = ["net", "ipc", "uts", "pid", "mnt", "cgroup"];
/// The ones Kubernetes shares across a pod (pid only with shareProcessNamespace).
const SHARED: [&str; 3] = ["net", "ipc", "uts"];

/// The inode of namespace `kind` of process `pid` (`readlink /proc/PID/ns/net` gives
/// `net:[4026532281]`).
pub fn ns_inode(pid: u32, kind: &str) -> Option<u64> {
    let l = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
    let s = l.to_string_lossy();
    s.split_once('[')?.1.strip_suffix(']')?.parse().ok()
}

fn namespaces(pid: u32) -> serde_json::Map<String, Value> {
    NAMESPACES
        .iter()
        .map(|k| (k.to_string(), json!(ns_inode(pid, k))))
        .collect()
}

/// The upper (writable) directory of the overlay mount at `/` of process `pid`: where
/// the container's own changes to its image land.
fn rootfs_upperdir(pid: u32) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    upperdir_of(&info)
}

fn upperdir_of(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        let mut r = right.split_whitespace();
        let (fstype, _source, options) = (r.next()?, r.next()?, r.next()?);
        if mount_point != "/" || fstype != "overlay" {
            return None;
        }
        options
            .split(',')
            .find_map(|o| o.strip_prefix("upperdir=").map(String::from))
    })
}

/// A pod of this node, whole.
pub async fn pod(ctx: &Arc<PodContext>, ns: &str, name: &str) -> Result<Value, InspectError> {
    let key = format!("{ns}/{name}");
    let view = ctx
        .registry
        .get(ns, name)
        .ok_or_else(|| InspectError::NotHere(key.clone(), ctx.node.clone()))?;
    let sandbox = view.sandbox.ok_or(InspectError::NoSandbox(key))?;
    let h = Hierarchy::detect();
    let pause_ns = namespaces(sandbox.pid);
    let sandbox_id = SandboxId::for_pod(&view.uid).container_id();
    let netns_path = NetNs::open(&netns_name(&view.uid))
        .map(|n| n.path().to_path_buf())
        .ok();
    let netns_inode = netns_path.as_ref().and_then(|p| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).ok().map(|m| m.ino())
    });
    let sandbox_cgroup = ctx.container_cgroup(&view.uid, "sandbox");
    let mut containers = Vec::new();
    let mut names: Vec<&String> = view.containers.keys().collect();
    names.sort();
    for cname in names {
        containers.push(container(ctx, h, &view, cname, &pause_ns).await);
    }
    let (eth0, routes, veth) = network(&view).await?;
    Ok(json!({
        "pod": {"namespace": ns, "name": name, "uid": view.uid, "ip": sandbox.ip.to_string(),
                "node": ctx.node, "startTime": view.start_time},
        "sandbox": {
            "id": sandbox_id,
            "pid": sandbox.pid,
            "image": ctx.pause_image.name,
            "netns": {"path": netns_path, "inode": netns_inode},
            "namespaces": pause_ns,
            "cgroup": {"path": sandbox_cgroup, "hierarchy": format!("{h:?}").to_lowercase()},
        },
        "podCgroup": {
            "path": ctx.pod_cgroup(&view.uid),
            "limits": stats::limits(h, &ctx.pod_cgroup(&view.uid)),
        },
        "containers": containers,
        "eth0": eth0,
        "routes": routes,
        "veth": veth,
    }))
}

async fn container(
    ctx: &Arc<PodContext>,
    h: Hierarchy,
    view: &PodView,
    name: &str,
    pause_ns: &serde_json::Map<String, Value>,
) -> Value {
    let c = &view.containers[name];
    let pid = match &c.id {
        Some(id) => ctx
            .runtime
            .task_state(id)
            .await
            .ok()
            .flatten()
            .filter(|t| t.running)
            .map(|t| t.pid),
        None => None,
    };
    let own = pid.map(namespaces).unwrap_or_default();
    let ns: serde_json::Map<String, Value> = own
        .iter()
        .map(|(k, v)| {
            let shared = !v.is_null() && pause_ns.get(k) == Some(v);
            let pod_wide = SHARED.contains(&k.as_str());
            (
                k.clone(),
                json!({"inode": v, "sharedWithPause": shared, "sharedByKubernetes": pod_wide}),
            )
        })
        .collect();
    let cgroup = ctx.container_cgroup(&view.uid, name);
    let logs: Vec<String> = (0..c.attempts)
        .rev()
        .take(2)
        .map(|a| log_path(&ctx.pods_dir, &view.uid, name, a))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    let state = if c.running {
        "running".to_string()
    } else if let Some(w) = &c.waiting {
        format!("waiting ({w})")
    } else {
        "terminated".to_string()
    };
    json!({
        "name": name,
        "init": c.init,
        "id": c.id,
        "pid": pid,
        "state": state,
        "restarts": c.restarts,
        "image": c.image,
        "imageID": c.image_id,
        "snapshot": c.id.as_ref().map(|id| json!({
            "snapshotter": crate::runtime::SNAPSHOTTER,
            "key": id,
            "upperdir": pid.and_then(rootfs_upperdir),
        })),
        "namespaces": ns,
        "cgroup": {
            "path": cgroup,
            "limits": stats::limits(h, &cgroup),
            "usage": stats::usage(h, &cgroup).map(|u| json!({
                "cpuNanoseconds": u.cpu_ns, "memoryBytes": u.memory_bytes,
                "workingSetBytes": u.working_set_bytes, "rssBytes": u.rss_bytes})),
        },
        "logs": logs,
    })
}

/// The pod's eth0 and routes (read inside its namespace) and its veth peer on the node.
async fn network(view: &PodView) -> Result<(Value, Value, Value), InspectError> {
    let netns = NetNs::open(&netns_name(&view.uid))?;
    let inside = connect_in(&netns)?;
    let pod_links = netinspect::links(&inside).await?;
    let routes = netinspect::routes(&inside, &pod_links).await?;
    let eth0 = pod_links.into_iter().find(|l| l.name == "eth0");
    let host = connect()?;
    let host_links = netinspect::links(&host).await?;
    let peer = eth0
        .as_ref()
        .and_then(|e| e.peer_index)
        .and_then(|i| host_links.iter().find(|l| l.index == i))
        .or_else(|| {
            let n = host_if_name(&view.uid);
            host_links.iter().find(|l| l.name == n)
        });
    let veth = peer.map(|p| {
        let bridge = p
            .master
            .and_then(|m| host_links.iter().find(|l| l.index == m))
            .map(|b| json!({"name": b.name, "index": b.index, "addresses": b.addresses, "mac": b.mac}));
        let mut v = json!(p);
        v["bridge"] = json!(bridge);
        v
    });
    Ok((json!(eth0), json!(routes), json!(veth)))
}

/// Opens one TCP connection from inside pod `ns/name`'s network namespace to `to` and
/// closes it: the real packets `tinykube ctl trace --probe` follows through the
/// counters. Whether it connected, and how long it took.
pub async fn probe(
    ctx: &Arc<PodContext>,
    ns: &str,
    name: &str,
    to: std::net::SocketAddr,
) -> Result<Value, InspectError> {
    let key = format!("{ns}/{name}");
    let view = ctx
        .registry
        .get(ns, name)
        .ok_or_else(|| InspectError::NotHere(key.clone(), ctx.node.clone()))?;
    if view.sandbox.is_none() {
        return Err(InspectError::NoSandbox(key));
    }
    let netns = NetNs::open(&netns_name(&view.uid))?;
    let t0 = std::time::Instant::now();
    let r = tokio::task::spawn_blocking(move || {
        netns.run(move || {
            std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(3))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    })
    .await
    .map_err(|_| InspectError::Probe(key))??;
    Ok(json!({
        "to": to.to_string(),
        "connected": r.is_ok(),
        "error": r.err(),
        "millis": t0.elapsed().as_secs_f64() * 1000.0,
    }))
}

/// Which pod each `cni0` port belongs to, by its host-side veth name.
fn port_owner<'a>(pods: &'a [PodView], port: &Link) -> Option<&'a PodView> {
    pods.iter().find(|p| host_if_name(&p.uid) == port.name)
}

/// The node's own pod networking: podCIDR, the bridge and its ports, the routes.
pub async fn node(ctx: &Arc<PodContext>) -> Result<Value, InspectError> {
    let host = connect()?;
    let links = netinspect::links(&host).await?;
    let routes = netinspect::routes(&host, &links).await?;
    let pods = ctx.registry.all();
    let bridge = links.iter().find(|l| l.name == ctx.bridge.name());
    let ports: Vec<Value> = bridge
        .map(|b| {
            links
                .iter()
                .filter(|l| l.master == Some(b.index))
                .map(|l| {
                    let mut v = json!(l);
                    if let Some(p) = port_owner(&pods, l) {
                        v["pod"] = json!(format!("{}/{}", p.namespace, p.name));
                        v["podIP"] = json!(p.sandbox.map(|s| s.ip.to_string()));
                    }
                    v
                })
                .collect()
        })
        .unwrap_or_default();
    let allocated: Vec<Value> = ctx
        .ipam
        .owners()
        .into_iter()
        .map(|(ip, owner)| json!({"ip": ip.to_string(), "podUID": owner}))
        .collect();
    Ok(json!({
        "node": ctx.node,
        "nodeIP": ctx.node_ip,
        "podCIDR": ctx.bridge.cidr().to_string(),
        "podCIDRFrom": "spec.podCIDR, given by the master's node IPAM controller (one /24 per node from the cluster network, in order)",
        "gateway": ctx.bridge.cidr().gateway().to_string(),
        "bridge": bridge,
        "ports": ports,
        "addresses": allocated,
        "routes": routes,
        "pods": pods.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_overlay_s_upper_directory_is_found() {
        let info = "\
1522 1480 0:130 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/containerd/snapshots/3/fs,upperdir=/var/lib/containerd/snapshots/9/fs,workdir=/var/lib/containerd/snapshots/9/work
1523 1522 0:132 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
";
        assert_eq!(
            upperdir_of(info).as_deref(),
            Some("/var/lib/containerd/snapshots/9/fs")
        );
        assert_eq!(
            upperdir_of("1523 1522 0:132 / /proc rw - proc proc rw\n"),
            None
        );
    }

    #[test]
    fn this_process_namespaces_have_inodes() {
        let me = std::process::id();
        assert!(ns_inode(me, "net").is_some());
        assert!(ns_inode(me, "nosuch").is_none());
    }
}
