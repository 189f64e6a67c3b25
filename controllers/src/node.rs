//! Node lifecycle and node IPAM. A node is healthy while its kubelet renews its Lease
//! (or posts status); past the grace period its Ready condition turns Unknown and it is
//! tainted `node.kubernetes.io/unreachable`; pods without a toleration for that taint
//! (or past its `tolerationSeconds`) are evicted so their ReplicaSets replace them, and
//! until then its pods are marked not ready, so they leave their Services' endpoints.
//! Every node also gets a /24 of the cluster CIDR as `spec.podCIDR`, never twice.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use tinykube_api::taint::{NOT_READY, UNREACHABLE};
use tokio_util::sync::CancellationToken;

use crate::owner::{name, namespace};
use crate::{Config, Informers};

pub async fn run(
    client: kube::Client,
    inf: Arc<Informers>,
    config: Config,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(config.node_monitor_period);
    let mut node_changes = inf.nodes.subscribe_as("node").boxed();
    let Some(ipam) = Ipam::parse(&config.cluster_cidr) else {
        tracing::error!(cidr = %config.cluster_cidr, "invalid cluster CIDR; node IPAM is off");
        return;
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {
                if let Err(e) = monitor(&client, &inf, &config).await {
                    tracing::debug!(error = %e, "node monitor pass failed");
                }
            }
            n = node_changes.next() => if n.is_none() { return },
        }
        if let Err(e) = assign_cidrs(&client, &inf, &ipam).await {
            tracing::debug!(error = %e, "node IPAM pass failed");
        }
    }
}

/// /24s of the cluster CIDR.
pub struct Ipam {
    base: u32,
    count: u32,
    /// CIDRs handed out that the watch cache may not show yet: node -> CIDR.
    in_flight: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl Ipam {
    pub fn parse(cidr: &str) -> Option<Self> {
        let (ip, len) = cidr.split_once('/')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let len: u32 = len.parse().ok()?;
        (len <= 24).then(|| Self {
            base: u32::from(ip) & !((1u64 << (32 - len)) - 1) as u32,
            count: 1 << (24 - len),
            in_flight: Default::default(),
        })
    }

    /// The first /24 not in `used`.
    pub fn next(&self, used: &BTreeSet<String>) -> Option<String> {
        (0..self.count)
            .map(|i| format!("{}/24", Ipv4Addr::from(self.base + (i << 8))))
            .find(|c| !used.contains(c))
    }
}

async fn assign_cidrs(
    client: &kube::Client,
    inf: &Informers,
    ipam: &Ipam,
) -> Result<(), kube::Error> {
    let nodes = inf.nodes.store.state();
    let mut used: BTreeSet<String> = nodes
        .iter()
        .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
        .collect();
    let pending: Vec<&Arc<Node>> = {
        let mut in_flight = ipam.in_flight.lock().expect("ipam lock");
        // Keep what the cache does not show yet (for a while), and count it as used.
        in_flight.retain(|node, (cidr, at)| {
            let shown = nodes.iter().any(|n| {
                name(&n.metadata) == node
                    && n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()) == Some(cidr)
            });
            !shown && at.elapsed() < std::time::Duration::from_secs(60)
        });
        used.extend(in_flight.values().map(|(c, _)| c.clone()));
        let mut p: Vec<&Arc<Node>> = nodes
            .iter()
            .filter(|n| {
                n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_none()
                    && !in_flight.contains_key(name(&n.metadata))
            })
            .collect();
        p.sort_by_key(|n| n.metadata.creation_timestamp.as_ref().map(|t| t.0));
        p
    };
    let api: Api<Node> = Api::all(client.clone());
    for n in pending {
        let Some(cidr) = ipam.next(&used) else {
            tracing::warn!(node = name(&n.metadata), "no /24 left in the cluster CIDR");
            return Ok(());
        };
        // The resourceVersion makes this a compare-and-swap: a node that got a CIDR in
        // the meantime is left alone.
        let patch = json!({"metadata": {"resourceVersion": n.metadata.resource_version},
                           "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
        match api
            .patch(
                name(&n.metadata),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => {
                used.insert(cidr.clone());
                ipam.in_flight.lock().expect("ipam lock").insert(
                    name(&n.metadata).to_string(),
                    (cidr, std::time::Instant::now()),
                );
            }
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn heartbeat(node: &Node, inf: &Informers) -> Option<jiff::Timestamp> {
    let lease = inf
        .leases
        .store
        .get(&ObjectRef::new(name(&node.metadata)).within("kube-node-lease"));
    let renewed = lease.and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
    let posted = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
    renewed.max(posted)
}

async fn monitor(
    client: &kube::Client,
    inf: &Informers,
    config: &Config,
) -> Result<(), kube::Error> {
    let now = jiff::Timestamp::now();
    let nodes_api: Api<Node> = Api::all(client.clone());
    let grace = config.node_monitor_grace.as_secs() as i64;
    for node in inf.nodes.store.state() {
        let n = name(&node.metadata).to_string();
        let conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let ready = conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.clone());
        let stale = heartbeat(&node, inf).is_none_or(|t| now.as_second() - t.as_second() > grace);
        // A node with a Ready condition but no heartbeat within the grace period is unknown.
        if stale && ready.as_deref().is_some_and(|s| s != "Unknown") {
            let mut conds: Vec<serde_json::Value> = conditions
                .iter()
                .map(|c| serde_json::to_value(c).unwrap())
                .collect();
            for c in conds.iter_mut() {
                if c["type"] == "Ready" {
                    c["status"] = json!("Unknown");
                    c["reason"] = json!("NodeStatusUnknown");
                    c["message"] = json!("Kubelet stopped posting node status.");
                    c["lastTransitionTime"] = json!(tinykube_api::format::rfc3339(now));
                }
            }
            nodes_api
                .patch_status(
                    &n,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"conditions": conds}})),
                )
                .await?;
            tracing::info!(node = %n, "node stopped renewing its lease: NotReady (Unknown)");
        }
        let effective = if stale {
            "Unknown"
        } else {
            ready.as_deref().unwrap_or("Unknown")
        };
        let wanted: Option<&str> = match effective {
            "True" => None,
            "False" => Some(NOT_READY),
            _ if ready.is_none() => None, // never reported: nothing to say yet
            _ => Some(UNREACHABLE),
        };
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let ours = tinykube_api::taint::is_not_ready;
        let current: BTreeSet<&str> = taints
            .iter()
            .filter(|t| ours(t))
            .map(|t| t.key.as_str())
            .collect();
        let desired: BTreeSet<&str> = wanted.into_iter().collect();
        if current != desired {
            let mut next: Vec<serde_json::Value> = taints
                .iter()
                .filter(|t| !ours(t))
                .map(|t| serde_json::to_value(t).unwrap())
                .collect();
            if let Some(key) = wanted {
                let at = tinykube_api::format::rfc3339(now);
                next.push(json!({"key": key, "effect": "NoSchedule", "timeAdded": at}));
                next.push(json!({"key": key, "effect": "NoExecute", "timeAdded": at}));
            }
            let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": next}});
            crate::owner::tolerate(
                nodes_api
                    .patch(&n, &PatchParams::default(), &Patch::Merge(patch))
                    .await,
                &[409],
            )?;
        }
        if wanted.is_some() {
            mark_pods_not_ready(client, inf, &n, now).await?;
        }
        evict(client, inf, &node, now).await?;
    }
    Ok(())
}

/// The pods bound to `node`, as the informer has them.
fn pods_on(inf: &Informers, node: &str) -> impl Iterator<Item = Arc<Pod>> + use<> {
    inf.pods.by_field(node).into_iter()
}

/// kube's MarkPodsNotReady: the pods of a node that is not Ready are not ready either,
/// so they leave their Services' endpoints now, not at their eviction (a powered-off
/// or rebooting node's pods would go on getting traffic that nobody answers). The
/// kubelet says otherwise once it runs them again.
async fn mark_pods_not_ready(
    client: &kube::Client,
    inf: &Informers,
    node: &str,
    now: jiff::Timestamp,
) -> Result<(), kube::Error> {
    for pod in pods_on(inf, node) {
        let Some(conditions) = pod.status.as_ref().and_then(|s| s.conditions.as_ref()) else {
            continue;
        };
        if !conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            continue;
        }
        let next: Vec<serde_json::Value> = conditions
            .iter()
            .map(|c| {
                let mut v = serde_json::to_value(c).unwrap_or_default();
                if c.type_ == "Ready" {
                    v["status"] = json!("False");
                    v["lastTransitionTime"] = json!(tinykube_api::format::rfc3339(now));
                }
                v
            })
            .collect();
        // Against the version read, so a status the kubelet has just posted wins (409).
        let patch = json!({"metadata": {"resourceVersion": pod.metadata.resource_version},
                           "status": {"conditions": next}});
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace(&pod.metadata));
        crate::owner::tolerate(
            api.patch_status(
                name(&pod.metadata),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await,
            &[404, 409],
        )?;
        tracing::info!(
            pod = name(&pod.metadata),
            node,
            "node not ready: pod marked not ready"
        );
    }
    Ok(())
}

/// The taint manager: evicts pods from a node with NoExecute taints they do not
/// tolerate, or tolerate for less time than the taint has been there.
async fn evict(
    client: &kube::Client,
    inf: &Informers,
    node: &Node,
    now: jiff::Timestamp,
) -> Result<(), kube::Error> {
    let taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.effect == "NoExecute")
        .collect();
    if taints.is_empty() {
        return Ok(());
    }
    let n = name(&node.metadata);
    for pod in pods_on(inf, n) {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if must_evict(&pod, &taints, now) {
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace(&pod.metadata));
            match api
                .delete(name(&pod.metadata), &DeleteParams::default())
                .await
            {
                Ok(_) => tracing::info!(
                    pod = name(&pod.metadata),
                    node = n,
                    "evicted from a tainted node"
                ),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

pub fn must_evict(pod: &Pod, taints: &[Taint], now: jiff::Timestamp) -> bool {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    taints.iter().any(|t| {
        let tol = tolerations
            .iter()
            .find(|tol| tinykube_api::taint::tolerates(tol, t));
        match tol {
            None => true,
            Some(tol) => match (tol.toleration_seconds, t.time_added.as_ref()) {
                (None, _) => false,
                (Some(secs), Some(added)) => now.as_second() - added.0.as_second() >= secs,
                (Some(_), None) => false,
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_hands_out_each_slash24_once() {
        let ipam = Ipam::parse("10.244.0.0/16").unwrap();
        let mut used = BTreeSet::new();
        let a = ipam.next(&used).unwrap();
        used.insert(a.clone());
        let b = ipam.next(&used).unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("10.244.0.0/24", "10.244.1.0/24"));
        used.remove(&a);
        assert_eq!(ipam.next(&used).unwrap(), "10.244.0.0/24");
        let tiny = Ipam::parse("10.0.0.0/24").unwrap();
        assert!(tiny.next(&["10.0.0.0/24".to_string()].into()).is_none());
    }

    #[test]
    fn tolerations_delay_eviction() {
        let added = jiff::Timestamp::from_second(1_000).unwrap();
        let taint: Taint = serde_json::from_value(
            json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "1970-01-01T00:16:40Z"}),
        )
        .unwrap();
        let pod = |secs: Option<i64>| -> Pod {
            let mut tol = json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"});
            if let Some(s) = secs {
                tol["tolerationSeconds"] = json!(s);
            }
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": [tol]}})).unwrap()
        };
        let later = |s: i64| jiff::Timestamp::from_second(added.as_second() + s).unwrap();
        assert!(!must_evict(
            &pod(Some(300)),
            std::slice::from_ref(&taint),
            later(299)
        ));
        assert!(must_evict(
            &pod(Some(300)),
            std::slice::from_ref(&taint),
            later(300)
        ));
        assert!(!must_evict(
            &pod(None),
            std::slice::from_ref(&taint),
            later(10_000)
        ));
        let bare: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}))
                .unwrap();
        assert!(must_evict(&bare, &[taint], later(0)));
    }
}
