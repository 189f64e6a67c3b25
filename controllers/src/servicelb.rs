//! LoadBalancer services on bare metal, as k3s' ServiceLB does it: a LoadBalancer
//! service's `status.loadBalancer.ingress` lists the addresses of the eligible nodes
//! (their ExternalIP, else InternalIP), and every node's service proxy forwards the
//! service's ports on those addresses to its endpoints (no extra pods). Eligible: the
//! Ready, schedulable nodes, or, once any node carries the label
//! `svccontroller.tinykube.io/enablelb=true`, only the nodes that do.
//!
//! Every eligible node serves a port for one service only: a later service asking for a
//! port (and protocol) already taken stays without ingress, with a Warning Event saying
//! which service holds it. Services with a `spec.loadBalancerClass` belong to another
//! controller and are left alone.
//!
//! With an address pool (`--lb-pool`), each service gets one address of its own from the
//! pool instead (its `loadBalancerIP` if it asks for one), which one node at a time
//! announces (`node/src/announce.rs`); an address already taken, or an empty pool, is a
//! Warning Event.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tinykube_api::lbpool::{LbPool, eligible_nodes};
use tinykube_client::Recorder;
use tinykube_client::recorder::EventType;
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::owner::{name, namespace};

/// Changes arriving within this window are handled in one pass.
const SETTLE: Duration = Duration::from_millis(20);
/// A full pass even when nothing changed (a failed status write is retried).
const RESYNC: Duration = Duration::from_secs(30);

/// What one LoadBalancer service should get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub namespace: String,
    pub name: String,
    /// The ingress addresses, sorted.
    pub ingress: Vec<String>,
    /// Why it gets none, if a port is taken.
    pub conflict: Option<String>,
}

impl Decision {
    fn granted(namespace: String, name: String, ingress: Vec<String>) -> Self {
        Self {
            namespace,
            name,
            ingress,
            conflict: None,
        }
    }

    fn refused(namespace: String, name: String, why: String) -> Self {
        Self {
            namespace,
            name,
            ingress: Vec::new(),
            conflict: Some(why),
        }
    }
}

/// The addresses LoadBalancer services get: those of the eligible nodes.
pub fn eligible_addresses(nodes: &[Arc<Node>]) -> Vec<String> {
    let mut out: Vec<String> = eligible_nodes(nodes)
        .into_iter()
        .filter_map(|n| {
            let addrs = n.status.as_ref()?.addresses.as_ref()?;
            addrs
                .iter()
                .find(|a| a.type_ == "ExternalIP")
                .or_else(|| addrs.iter().find(|a| a.type_ == "InternalIP"))
                .map(|a| a.address.clone())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn is_ours(s: &Service) -> bool {
    s.spec.as_ref().is_some_and(|sp| {
        sp.type_.as_deref() == Some("LoadBalancer") && sp.load_balancer_class.is_none()
    })
}

/// The ingress of every LoadBalancer service this controller owns, oldest first: a
/// port (and protocol) goes to the first service that asks for it; from a pool, an
/// address to the first that asks for it (or already has it).
pub fn plan(services: &[Arc<Service>], nodes: &[Arc<Node>], pool: Option<LbPool>) -> Vec<Decision> {
    let addresses = eligible_addresses(nodes);
    let mut lbs: Vec<&Arc<Service>> = services.iter().filter(|s| is_ours(s)).collect();
    lbs.sort_by(|a, b| {
        let key = |s: &Service| {
            (
                s.metadata.creation_timestamp.as_ref().map(|t| t.0),
                namespace(&s.metadata).to_string(),
                name(&s.metadata).to_string(),
            )
        };
        key(a).cmp(&key(b))
    });
    if let Some(pool) = pool {
        return plan_pool(&lbs, pool);
    }
    let mut taken: HashMap<(i32, String), String> = HashMap::new();
    let mut out = Vec::new();
    for s in lbs {
        let (ns, n) = (
            namespace(&s.metadata).to_string(),
            name(&s.metadata).to_string(),
        );
        let ports: BTreeSet<(i32, String)> = s
            .spec
            .as_ref()
            .and_then(|sp| sp.ports.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.port, p.protocol.unwrap_or_else(|| "TCP".into())))
            .collect();
        let clash = ports
            .iter()
            .find_map(|p| taken.get(p).map(|holder| (p.clone(), holder.clone())));
        if let Some(((port, proto), holder)) = clash {
            out.push(Decision::refused(ns, n, format!(
                    "port {port}/{proto} is already used by LoadBalancer service {holder} on every eligible node; this service gets no address until it is free"
                )));
            continue;
        }
        for p in ports {
            taken.insert(p, format!("{ns}/{n}"));
        }
        out.push(Decision::granted(ns, n, addresses.clone()));
    }
    out
}

fn plan_pool(lbs: &[&Arc<Service>], pool: LbPool) -> Vec<Decision> {
    let mut holders: HashMap<Ipv4Addr, String> = HashMap::new();
    // What each service asks for, or holds: the first claims come first.
    let asked = |s: &Service| -> Option<Ipv4Addr> {
        s.spec
            .as_ref()?
            .load_balancer_ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
    };
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for s in lbs {
        let (ns, n) = (
            namespace(&s.metadata).to_string(),
            name(&s.metadata).to_string(),
        );
        let key = format!("{ns}/{n}");
        let want = asked(s).or_else(|| {
            current_ingress(s)
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .find(|ip| pool.contains(*ip))
        });
        match want {
            Some(ip) if !pool.contains(ip) => out.push(Decision::refused(
                ns,
                n,
                format!("address {ip} is not in the pool {pool}"),
            )),
            Some(ip) => match holders.get(&ip) {
                Some(holder) => out.push(Decision::refused(
                    ns,
                    n,
                    format!("address {ip} is already used by LoadBalancer service {holder}"),
                )),
                None => {
                    holders.insert(ip, key);
                    out.push(Decision::granted(ns, n, vec![ip.to_string()]));
                }
            },
            None => pending.push((ns, n, key)),
        }
    }
    // Then the services that need an address, oldest first, the lowest free one each.
    for (ns, n, key) in pending {
        let free = pool.addresses().find(|ip| !holders.contains_key(ip));
        match free {
            Some(ip) => {
                holders.insert(ip, key);
                out.push(Decision::granted(ns, n, vec![ip.to_string()]));
            }
            None => out.push(Decision::refused(
                ns,
                n,
                format!("no free address in the pool {pool}"),
            )),
        }
    }
    out
}

fn current_ingress(s: &Service) -> Vec<String> {
    let mut v: Vec<String> = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect();
    v.sort();
    v
}

pub async fn run(
    client: kube::Client,
    inf: Arc<Informers>,
    pool: Option<LbPool>,
    cancel: CancellationToken,
) {
    let recorder = Recorder::new(client.clone(), "service-lb-controller", None);
    let mut changes = futures::stream::select(
        inf.services.subscribe_as("servicelb").map(|_| ()),
        inf.nodes.subscribe_as("servicelb").map(|_| ()),
    )
    .boxed();
    let mut resync = tokio::time::interval(RESYNC);
    // The conflict last reported per service, so an Event is not repeated every pass.
    let mut reported: BTreeMap<(String, String), String> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = resync.tick() => {}
            c = changes.next() => if c.is_none() { return },
        }
        tokio::time::sleep(SETTLE).await;
        while let Some(Some(())) = futures::FutureExt::now_or_never(changes.next()) {}
        let services = inf.services.store.state();
        let nodes = inf.nodes.store.state();
        let by_key: HashMap<(String, String), &Arc<Service>> = services
            .iter()
            .map(|s| {
                (
                    (
                        namespace(&s.metadata).to_string(),
                        name(&s.metadata).to_string(),
                    ),
                    s,
                )
            })
            .collect();
        for d in plan(&services, &nodes, pool) {
            let key = (d.namespace.clone(), d.name.clone());
            let Some(svc) = by_key.get(&key) else {
                continue;
            };
            if current_ingress(svc) != d.ingress {
                let api: Api<Service> = Api::namespaced(client.clone(), &d.namespace);
                let ingress: Vec<_> = d
                    .ingress
                    .iter()
                    .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
                    .collect();
                let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
                if let Err(e) = api
                    .patch_status(&d.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::debug!(service = %d.name, error = %e, "cannot set the load balancer ingress");
                }
            }
            match &d.conflict {
                Some(msg) if reported.get(&key) != Some(msg) => {
                    recorder
                        .record(
                            svc.as_ref(),
                            EventType::Warning,
                            if pool.is_some() {
                                "AllocationFailed"
                            } else {
                                "PortInUse"
                            },
                            msg,
                        )
                        .await;
                    reported.insert(key, msg.clone());
                }
                Some(_) => {}
                None => {
                    if reported.remove(&key).is_some() {
                        recorder
                            .record(
                                svc.as_ref(),
                                EventType::Normal,
                                "EnsuredLoadBalancer",
                                &format!("ports free again; ingress {}", d.ingress.join(",")),
                            )
                            .await;
                    }
                }
            }
        }
        // A service that stopped being a LoadBalancer loses its ingress.
        for s in services.iter().filter(|s| {
            s.spec
                .as_ref()
                .is_some_and(|sp| sp.type_.as_deref() != Some("LoadBalancer"))
                && !current_ingress(s).is_empty()
        }) {
            let api: Api<Service> = Api::namespaced(client.clone(), namespace(&s.metadata));
            let patch = json!({"status": {"loadBalancer": {"ingress": null}}});
            let _ = api
                .patch_status(
                    name(&s.metadata),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await;
        }
        reported.retain(|k, _| by_key.contains_key(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tinykube_api::lbpool::ENABLE_LB_LABEL;

    fn node(name: &str, ip: &str, ready: bool, extra: serde_json::Value) -> Arc<Node> {
        let mut n = json!({
            "metadata": {"name": name, "labels": {}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}],
                       "addresses": [{"type": "InternalIP", "address": ip}]},
        });
        json_patch::merge(&mut n, &extra);
        Arc::new(serde_json::from_value(n).unwrap())
    }

    fn lb(name: &str, created: &str, port: i32, class: Option<&str>) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
                "spec": {"type": "LoadBalancer", "loadBalancerClass": class,
                         "ports": [{"port": port, "protocol": "TCP"}]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn ready_schedulable_nodes_or_the_labelled_ones() {
        let nodes = vec![
            node("a", "192.168.56.11", true, json!({})),
            node("b", "192.168.56.12", false, json!({})),
            node(
                "c",
                "192.168.56.13",
                true,
                json!({"spec": {"unschedulable": true}}),
            ),
            node(
                "d",
                "192.168.56.14",
                true,
                json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.4"}, {"type": "ExternalIP", "address": "203.0.113.4"}]}}),
            ),
        ];
        assert_eq!(
            eligible_addresses(&nodes),
            vec!["192.168.56.11", "203.0.113.4"]
        );
        let mut labelled = nodes.clone();
        labelled[0] = node(
            "a",
            "192.168.56.11",
            true,
            json!({"metadata": {"labels": {ENABLE_LB_LABEL: "true"}}}),
        );
        assert_eq!(eligible_addresses(&labelled), vec!["192.168.56.11"]);
    }

    #[test]
    fn the_older_service_keeps_a_port_and_other_classes_are_left_alone() {
        let nodes = vec![node("a", "192.168.56.11", true, json!({}))];
        let services = vec![
            lb("second", "2026-01-02T00:00:00Z", 80, None),
            lb("first", "2026-01-01T00:00:00Z", 80, None),
            lb("other", "2026-01-01T00:00:00Z", 8080, None),
            lb(
                "metallb",
                "2026-01-01T00:00:00Z",
                80,
                Some("example.com/lb"),
            ),
        ];
        let d = plan(&services, &nodes, None);
        let get = |n: &str| d.iter().find(|d| d.name == n).unwrap();
        assert_eq!(get("first").ingress, vec!["192.168.56.11"]);
        assert_eq!(get("other").ingress, vec!["192.168.56.11"]);
        assert!(get("second").ingress.is_empty());
        assert!(
            get("second")
                .conflict
                .as_ref()
                .unwrap()
                .contains("port 80/TCP is already used by LoadBalancer service default/first")
        );
        assert!(d.iter().all(|d| d.name != "metallb"));
    }

    #[test]
    fn a_pool_gives_each_service_its_own_address() {
        let nodes = vec![node("a", "192.168.56.11", true, json!({}))];
        let pool: LbPool = "192.168.56.240-192.168.56.241".parse().unwrap();
        let mut asks = (*lb("asks", "2026-01-03T00:00:00Z", 80, None)).clone();
        asks.spec.as_mut().unwrap().load_balancer_ip = Some("192.168.56.241".into());
        let services = vec![
            lb("old", "2026-01-01T00:00:00Z", 80, None),
            lb("new", "2026-01-02T00:00:00Z", 80, None),
            Arc::new(asks),
        ];
        let d = plan(&services, &nodes, Some(pool));
        let get = |n: &str| d.iter().find(|d| d.name == n).unwrap();
        assert_eq!(get("asks").ingress, vec!["192.168.56.241"], "asked for");
        assert_eq!(
            get("old").ingress,
            vec!["192.168.56.240"],
            "the same port is fine"
        );
        assert!(get("new").ingress.is_empty());
        assert_eq!(
            get("new").conflict.as_deref(),
            Some("no free address in the pool 192.168.56.240-192.168.56.241")
        );
    }
}
