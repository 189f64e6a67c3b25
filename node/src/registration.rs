//! The node's own object: registration (addresses, capacity, nodeInfo, the
//! control-plane taint), the Lease renewed every 10 s, and status posted with the
//! conditions and the images the node holds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tinykube_api::constants::{
    KUBE_GIT_VERSION, KUBELET_PORT, LABEL_HOSTNAME, LABEL_NODE_ROLE_CONTROL_PLANE, arch,
};

/// How long a node's Lease holds without renewal (kubelet's default: 40 s).
pub const LEASE_DURATION: Duration = Duration::from_secs(40);

/// The Lease's renewTime, in the microsecond format Kubernetes writes.
pub fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// What the node reports about itself.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub name: String,
    pub ip: IpAddr,
    pub control_plane: bool,
    /// Registers with the control plane's NoSchedule taint (a master with workers;
    /// a master alone stays schedulable, as on kind and k3s).
    pub tainted: bool,
    pub runtime_version: String,
    pub max_pods: u32,
}

/// The local address the kernel would use to reach `server` (no packet is sent: a
/// UDP connect only picks the route). Never a NAT address unless that is the route.
pub fn address_towards(server: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(server).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

fn memory_ki() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn read_id(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The status a node posts: addresses, capacity, nodeInfo, conditions and images.
/// Ready only once the pod network is set up, as the kubelet waits for its CNI.
pub fn status(facts: &NodeFacts, images: &[(Vec<String>, i64)], ready: bool) -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let now = tinykube_api::format::now_rfc3339();
    let capacity = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", memory_ki()),
        "pods": facts.max_pods.to_string(),
        "ephemeral-storage": "0",
    });
    let cond = |t: &str, s: &str, reason: &str, message: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": facts.ip.to_string()},
            {"type": "Hostname", "address": facts.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
        "nodeInfo": {
            "machineID": read_id("/etc/machine-id"),
            "systemUUID": read_id("/sys/class/dmi/id/product_uuid"),
            "bootID": read_id("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": kernel_version(),
            "osImage": os_image(),
            "containerRuntimeVersion": format!("containerd://{}", facts.runtime_version),
            "kubeletVersion": KUBE_GIT_VERSION,
            "kubeProxyVersion": KUBE_GIT_VERSION,
            "operatingSystem": "linux",
            "architecture": arch(),
        },
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            if ready {
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status")
            } else {
                cond("Ready", "False", "KubeletNotReady", "container runtime network not ready: waiting for the node's podCIDR")
            },
        ],
        "images": images.iter().map(|(names, size)| json!({"names": names, "sizeBytes": size})).collect::<Vec<_>>(),
    })
}

/// The labels a node registers with (kubelet's well-known ones, and the
/// control-plane role on the master).
pub fn labels(facts: &NodeFacts) -> Value {
    let mut labels = json!({
        LABEL_HOSTNAME: facts.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch(),
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": arch(),
    });
    if facts.control_plane {
        labels[LABEL_NODE_ROLE_CONTROL_PLANE] = json!("");
    }
    labels
}

/// The taints a node registers with: the control plane's NoSchedule on a master that
/// asked for it (`--taint-master`).
pub fn taints(facts: &NodeFacts) -> Value {
    if facts.control_plane && facts.tainted {
        json!([{"key": LABEL_NODE_ROLE_CONTROL_PLANE, "effect": "NoSchedule"}])
    } else {
        json!([])
    }
}

/// Creates the Node, or refreshes its labels and status if it exists (a restart).
pub async fn register(
    client: &kube::Client,
    name: &str,
    labels: Value,
    taints: Value,
    status: Value,
) -> Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    // No taints is no field, as the kubelet registers.
    let spec = match taints.as_array() {
        Some(t) if !t.is_empty() => json!({"taints": taints}),
        _ => json!({}),
    };
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": status,
    });
    match api
        .create(
            &PostParams::default(),
            &serde_json::from_value(node).expect("node json"),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": labels}})),
            )
            .await?;
            // A restart asked for taints the Node lacks (a master given workers and
            // `--taint-master`): they are added; taints set by hand stay.
            let wanted = taints.as_array().cloned().unwrap_or_default();
            if !wanted.is_empty() {
                let current = api.get(name).await?;
                let mut have: Vec<Value> = current
                    .spec
                    .and_then(|s| s.taints)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|t| serde_json::to_value(t).ok())
                    .collect();
                let before = have.len();
                for t in wanted {
                    if !have
                        .iter()
                        .any(|h| h["key"] == t["key"] && h["effect"] == t["effect"])
                    {
                        have.push(t);
                    }
                }
                if have.len() != before {
                    api.patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"taints": have}})),
                    )
                    .await?;
                }
            }
        }
        Err(e) => return Err(e),
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
}

/// Renews the node's Lease (creating it if needed).
pub async fn renew_lease(
    client: &kube::Client,
    name: &str,
    duration: Duration,
) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = now_micro();
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": name, "namespace": "kube-node-lease"},
                       "spec": {"holderIdentity": name, "leaseDurationSeconds": duration.as_secs(), "renewTime": now}});
    match leases
        .patch(name, &PatchParams::default(), &Patch::Merge(lease.clone()))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => leases
            .create(
                &PostParams::default(),
                &serde_json::from_value(lease).expect("lease json"),
            )
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_fully_filled() {
        let facts = NodeFacts {
            name: "worker-1".into(),
            ip: "192.168.56.11".parse().unwrap(),
            control_plane: false,
            tainted: false,
            runtime_version: "1.6.20".into(),
            max_pods: 110,
        };
        let s = status(
            &facts,
            &[(vec!["tinykube.local/pause:latest".into()], 1000)],
            true,
        );
        let not_ready = status(&facts, &[], false);
        assert_eq!(not_ready["conditions"][3]["status"], "False");
        assert_eq!(s["addresses"][0]["address"], "192.168.56.11");
        assert_eq!(
            s["nodeInfo"]["containerRuntimeVersion"],
            "containerd://1.6.20"
        );
        assert!(!s["nodeInfo"]["kernelVersion"].as_str().unwrap().is_empty());
        assert!(s["capacity"]["memory"].as_str().unwrap().ends_with("Ki"));
        assert_eq!(s["images"][0]["sizeBytes"], 1000);
    }

    #[test]
    fn the_route_to_loopback_is_loopback() {
        assert_eq!(
            address_towards("127.0.0.1:6443".parse().unwrap()),
            Some("127.0.0.1".parse().unwrap())
        );
    }
}
