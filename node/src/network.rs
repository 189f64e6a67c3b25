//! The node's side of the cluster network: reads the cluster's overlay choice, sets up
//! the backend, publishes what peers need on the Node, and keeps the peer list in step
//! with the Nodes (joining, leaving, changing address) without restarts.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;
use tinykube_api::constants::{CLUSTER_CIDR, NETWORK_CONFIG_KEY, NETWORK_CONFIGMAP};
use tinykube_net::Ipv4Cidr;
use tinykube_net::overlay::{
    ANNOTATION_BACKEND, ANNOTATION_BACKEND_DATA, ANNOTATION_PUBLIC_IP, Backend, Overlay, Peer,
    vtep_mac_of,
};
use tokio_util::sync::CancellationToken;

/// The cluster's network settings could not be read.
#[derive(Debug, thiserror::Error)]
#[error("kube-system/{NETWORK_CONFIGMAP}: {0}")]
pub struct NetworkError(String);

/// The cluster's network settings, from `kube-system/tinykube-network` (flannel keeps
/// the same `net-conf.json` in `kube-flannel-cfg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConf {
    pub network: Ipv4Cidr,
    pub backend: Backend,
}

/// Parses `net-conf.json`: `{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}`.
pub fn parse_net_conf(text: &str) -> Result<NetConf, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("{NETWORK_CONFIG_KEY}: {e}"))?;
    let network = v["Network"]
        .as_str()
        .unwrap_or(CLUSTER_CIDR)
        .parse()
        .map_err(|e: tinykube_net::cidr::CidrError| format!("{NETWORK_CONFIG_KEY}: {e}"))?;
    let backend = v["Backend"]["Type"]
        .as_str()
        .unwrap_or("udp")
        .parse()
        .map_err(|e: tinykube_net::overlay::BackendError| format!("{NETWORK_CONFIG_KEY}: {e}"))?;
    Ok(NetConf { network, backend })
}

/// Reads the cluster's network settings, waiting for the master to publish them.
pub async fn net_conf(
    client: &kube::Client,
    cancel: &CancellationToken,
) -> Result<Option<NetConf>, NetworkError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    loop {
        match api.get_opt(NETWORK_CONFIGMAP).await {
            Ok(Some(cm)) => {
                let text = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get(NETWORK_CONFIG_KEY))
                    .cloned()
                    .unwrap_or_default();
                return parse_net_conf(&text).map(Some).map_err(NetworkError);
            }
            Ok(None) => tracing::info!("waiting for kube-system/{NETWORK_CONFIGMAP}"),
            Err(e) => tracing::warn!(error = %e, "cannot read the cluster's network settings"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Publishes the overlay's annotations on this node's Node.
pub async fn publish(
    client: &kube::Client,
    node: &str,
    overlay: &Overlay,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": overlay.annotations()}})),
        )
        .await
        .map(|_| ())
}

/// The peers of node `me` among `nodes`: every other node with a podCIDR that runs the
/// same backend, at its published address (else its InternalIP).
pub fn peers(nodes: &[Arc<Node>], me: &str, backend: Backend) -> Vec<Peer> {
    let mut out: Vec<Peer> = nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.as_deref()?;
            if name == me {
                return None;
            }
            let ann = n.metadata.annotations.as_ref();
            let theirs = ann.and_then(|a| a.get(ANNOTATION_BACKEND))?;
            if theirs.parse::<Backend>().ok()? != backend {
                tracing::debug!(node = name, backend = %theirs, "peer runs another backend; skipped");
                return None;
            }
            let subnet: Ipv4Cidr = n.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
            let public_ip: Ipv4Addr = ann
                .and_then(|a| a.get(ANNOTATION_PUBLIC_IP))
                .and_then(|s| s.parse().ok())
                .or_else(|| internal_ip(n))?;
            let vtep_mac = ann
                .and_then(|a| a.get(ANNOTATION_BACKEND_DATA))
                .and_then(|d| vtep_mac_of(d));
            Some(Peer {
                node: name.to_string(),
                subnet,
                public_ip,
                vtep_mac,
            })
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

fn internal_ip(n: &Node) -> Option<Ipv4Addr> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()
}

/// Keeps the overlay's peers equal to the Nodes' until `cancel`: on every change of a
/// Node, and every 30 s (which also repairs routes removed by hand).
pub async fn follow_peers(
    client: kube::Client,
    overlay: Arc<Overlay>,
    me: String,
    cancel: CancellationToken,
) {
    let (reader, writer) = reflector::store::<Node>();
    let api: Api<Node> = Api::all(client);
    let mut events = reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .boxed();
    let mut resync = tokio::time::interval(Duration::from_secs(30));
    let mut applied: Option<Vec<Peer>> = None;
    let mut listed = false;
    loop {
        let force = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = resync.tick() => true,
            ev = events.next() => match ev {
                None => return,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "node watch restarting");
                    continue;
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    listed = true;
                    false
                }
                Some(Ok(_)) => false,
            },
        };
        // Until the first full list, an empty store would mean "no peers".
        if !listed {
            continue;
        }
        let want = peers(&reader.state(), &me, overlay.backend());
        if !force && applied.as_ref() == Some(&want) {
            continue;
        }
        if applied.as_ref() != Some(&want) {
            let names: Vec<String> = want
                .iter()
                .map(|p| format!("{}={}@{}", p.node, p.subnet, p.public_ip))
                .collect();
            tracing::info!(peers = %names.join(" "), "overlay peers");
        }
        match overlay.sync(&want).await {
            Ok(()) => applied = Some(want),
            Err(e) => {
                tracing::warn!(error = %tinykube_api::error_chain(&e), "cannot apply the overlay peers");
                applied = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: &str, backend: &str, ip: &str) -> Arc<Node> {
        let v = json!({
            "metadata": {"name": name, "annotations": {
                ANNOTATION_BACKEND: backend,
                ANNOTATION_PUBLIC_IP: ip,
                ANNOTATION_BACKEND_DATA: "{\"VNI\":1,\"VtepMAC\":\"0a:58:0a:f4:02:00\"}",
            }},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.56.99"}]},
        });
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn net_conf_reads_flannel_style_json() {
        let c =
            parse_net_conf(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.backend, Backend::Vxlan);
        assert_eq!(c.network.to_string(), "10.244.0.0/16");
        assert_eq!(parse_net_conf("{}").unwrap().backend, Backend::Udp);
        let e = parse_net_conf(r#"{"Backend":{"Type":"gre"}}"#).unwrap_err();
        assert!(e.contains("unknown overlay backend"), "{e}");
        assert!(parse_net_conf("not json").is_err());
    }

    #[test]
    fn peers_leave_out_self_other_backends_and_nodes_without_a_subnet() {
        let nodes = vec![
            node("worker-2", "10.244.2.0/24", "udp", "192.168.56.12"),
            node("worker-1", "10.244.1.0/24", "udp", "192.168.56.11"),
            node("odd", "10.244.3.0/24", "vxlan", "192.168.56.13"),
            node("fresh", "", "udp", "192.168.56.14"),
        ];
        let p = peers(&nodes, "worker-1", Backend::Udp);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].node, "worker-2");
        assert_eq!(p[0].public_ip, Ipv4Addr::new(192, 168, 56, 12));
        assert_eq!(p[0].vtep_mac, Some([0x0a, 0x58, 10, 244, 2, 0]));
        let v = peers(&nodes, "worker-1", Backend::Vxlan);
        assert_eq!(v.iter().map(|p| &p.node[..]).collect::<Vec<_>>(), ["odd"]);
    }

    #[test]
    fn the_internal_ip_stands_in_for_a_missing_public_ip() {
        let mut n = (*node("w", "10.244.5.0/24", "host-gw", "x")).clone();
        n.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(ANNOTATION_PUBLIC_IP);
        let p = peers(&[Arc::new(n)], "me", Backend::HostGw);
        assert_eq!(p[0].public_ip, Ipv4Addr::new(192, 168, 56, 99));
    }
}
