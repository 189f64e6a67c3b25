//! LoadBalancer pool addresses on the wire (MetalLB's layer-2 mode): each address a
//! LoadBalancer service got from the master's `--lb-pool` is held by one node at a
//! time, which puts it on its uplink (so its kernel answers ARP for it and the service
//! rules take it in) and sends gratuitous ARPs when it takes it over.
//!
//! Who holds an address: the eligible nodes are ranked by the SHA-256 of
//! `node#address` (MetalLB's election, so the addresses of a pool spread over the
//! nodes); a node holds an address through a Lease `kube-system/tinykube-lb-<address>`
//! it renews every second. When the holder stops renewing (its Lease unchanged for
//! `LEASE` as each node observes it, so clocks need not agree), the best-ranked node
//! takes it, the next ones waiting one second per rank: a stopped node's addresses
//! move within `LEASE` plus a few seconds.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tinykube_api::lbpool::eligible_nodes;
use tinykube_client::Informer;
use tokio_util::sync::CancellationToken;

use crate::registration::now_micro;

/// How long a holder may go without renewing before another node takes over.
const LEASE: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_secs(1);
const LEASE_NAMESPACE: &str = "kube-system";
pub const LEASE_PREFIX: &str = tinykube_api::constants::LB_LEASE_PREFIX;

pub fn lease_name(ip: Ipv4Addr) -> String {
    format!("{LEASE_PREFIX}{}", ip.to_string().replace('.', "-"))
}

/// Nodes ranked for `ip`, best first (MetalLB: sha256 of `node#ip`).
pub fn ranking(nodes: &[String], ip: Ipv4Addr) -> Vec<String> {
    let mut v: Vec<(Vec<u8>, String)> = nodes
        .iter()
        .map(|n| {
            let h = ring::digest::digest(&ring::digest::SHA256, format!("{n}#{ip}").as_bytes());
            (h.as_ref().to_vec(), n.clone())
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// The nodes that may announce addresses (those the ServiceLB controller would give
/// addresses to), and every node address (an ingress address that is one is not a pool
/// address).
fn eligible(nodes: &[Arc<Node>]) -> (Vec<String>, BTreeSet<String>) {
    let names = eligible_nodes(nodes)
        .into_iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let addrs = nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.addresses.clone())
        .flatten()
        .map(|a| a.address)
        .collect();
    (names, addrs)
}

/// The pool addresses LoadBalancer services hold: their ingress addresses that are no
/// node's own.
fn pool_addresses(services: &[Arc<Service>], node_addrs: &BTreeSet<String>) -> BTreeSet<Ipv4Addr> {
    services
        .iter()
        .filter(|s| s.spec.as_ref().and_then(|sp| sp.type_.as_deref()) == Some("LoadBalancer"))
        .filter_map(|s| s.status.as_ref()?.load_balancer.as_ref()?.ingress.clone())
        .flatten()
        .filter_map(|i| i.ip)
        .filter(|ip| !node_addrs.contains(ip))
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

/// What this node last saw of each address's Lease: its resourceVersion and when it
/// last changed (by this node's clock).
struct Seen {
    version: String,
    since: Instant,
}

pub async fn run(
    client: kube::Client,
    services: Arc<Informer<Service>>,
    node: String,
    node_ip: Ipv4Addr,
    cancel: CancellationToken,
) {
    let nodes = Informer::<Node>::start(
        Api::all(client.clone()),
        watcher::Config::default(),
        cancel.clone(),
    );
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = async { services.ready().await; nodes.ready().await } => {}
    }
    let leases: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    let mut seen: HashMap<Ipv4Addr, Seen> = HashMap::new();
    let mut held: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (eligible, node_addrs) = eligible(&nodes.store.state());
        let wanted = pool_addresses(&services.store.state(), &node_addrs);
        let mut mine = BTreeSet::new();
        for ip in &wanted {
            let name = lease_name(*ip);
            let current = match leases.get_opt(&name).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(%ip, error = %e, "cannot read the address lease");
                    // Keep what we hold while the master cannot be asked.
                    if held.contains(ip) {
                        mine.insert(*ip);
                    }
                    continue;
                }
            };
            let holder = current
                .as_ref()
                .and_then(|l| l.spec.as_ref()?.holder_identity.clone());
            let version = current
                .as_ref()
                .and_then(|l| l.metadata.resource_version.clone())
                .unwrap_or_default();
            let s = seen.entry(*ip).or_insert_with(|| Seen {
                version: version.clone(),
                since: Instant::now(),
            });
            if s.version != version {
                s.version = version.clone();
                s.since = Instant::now();
            }
            let stale_for = s.since.elapsed().saturating_sub(LEASE);
            let take = match holder.as_deref() {
                Some(h) if h == node => true,
                Some(_) if current.is_some() && s.since.elapsed() < LEASE => false,
                _ => {
                    // Free, or its holder stopped renewing: the best-ranked live node
                    // first, the others one tick per rank later.
                    let rank = ranking(&eligible, *ip)
                        .into_iter()
                        .filter(|n| Some(n.as_str()) != holder.as_deref())
                        .position(|n| n == node);
                    match rank {
                        Some(r) => current.is_none() && r == 0 || stale_for >= TICK * r as u32,
                        None => false,
                    }
                }
            };
            if !take {
                continue;
            }
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": LEASE_NAMESPACE, "resourceVersion": current.as_ref().and_then(|l| l.metadata.resource_version.clone())},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE.as_secs(), "renewTime": now_micro()},
            });
            let Ok(lease) = serde_json::from_value::<Lease>(lease) else {
                continue;
            };
            let written = match &current {
                Some(_) => leases.replace(&name, &PostParams::default(), &lease).await,
                None => leases.create(&PostParams::default(), &lease).await,
            };
            match written {
                Ok(l) => {
                    let s = seen.get_mut(ip).expect("seen above");
                    s.version = l.metadata.resource_version.unwrap_or_default();
                    s.since = Instant::now();
                    mine.insert(*ip);
                }
                Err(e) => tracing::debug!(%ip, error = %e, "lost the address lease"),
            }
        }
        seen.retain(|ip, _| wanted.contains(ip));
        let gained: Vec<Ipv4Addr> = mine.difference(&held).copied().collect();
        let lost: Vec<Ipv4Addr> = held.difference(&mine).copied().collect();
        for ip in gained {
            match put(node_ip, ip, true).await {
                Ok(()) => {
                    tracing::info!(%ip, "announcing a LoadBalancer address");
                    held.insert(ip);
                }
                Err(e) => tracing::warn!(%ip, error = %e, "cannot announce a LoadBalancer address"),
            }
        }
        for ip in lost {
            if let Err(e) = put(node_ip, ip, false).await {
                tracing::warn!(%ip, error = %e, "cannot withdraw a LoadBalancer address");
            }
            tracing::info!(%ip, "no longer announcing a LoadBalancer address");
            held.remove(&ip);
        }
    }
    // Stopping: withdraw at once and free the leases, so another node takes over now.
    for ip in std::mem::take(&mut held) {
        let _ = put(node_ip, ip, false).await;
        let _ = leases
            .delete(&lease_name(ip), &DeleteParams::default())
            .await;
    }
}

/// Puts `ip` on (or takes it off) the link that holds the node's address, announcing
/// it with gratuitous ARPs when it arrives.
async fn put(node_ip: Ipv4Addr, ip: Ipv4Addr, on: bool) -> Result<(), String> {
    let h = tinykube_net::link::connect().map_err(|e| e.to_string())?;
    let index = tinykube_net::link::link_with_address(&h, node_ip)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no link holds the node's address {node_ip}"))?;
    if !on {
        return tinykube_net::link::remove_address(&h, index, ip)
            .await
            .map_err(|e| e.to_string());
    }
    tinykube_net::link::add_address(&h, index, ip, 32)
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || tinykube_net::arp::announce(index, ip, 3))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("gratuitous ARP: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_ranks_the_nodes_its_own_way() {
        let nodes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let r1 = ranking(&nodes, Ipv4Addr::new(192, 168, 56, 240));
        assert_eq!(r1.len(), 3);
        assert_eq!(
            r1,
            ranking(&nodes, Ipv4Addr::new(192, 168, 56, 240)),
            "stable"
        );
        // Over a pool, every node comes first for some address.
        let firsts: BTreeSet<String> = (240..=250)
            .map(|o| ranking(&nodes, Ipv4Addr::new(192, 168, 56, o))[0].clone())
            .collect();
        assert_eq!(firsts.len(), 3, "{firsts:?}");
        assert_eq!(
            lease_name(Ipv4Addr::new(192, 168, 56, 240)),
            "tinykube-lb-192-168-56-240"
        );
    }
}
