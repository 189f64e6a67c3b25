//! The node agent: one process per node that registers the Node, waits for its
//! podCIDR, sets up the overlay, and then starts and stops the node's parts: the
//! kubelet (pods, the kubelet API), the service proxy and the overlay's peer list,
//! while renewing the node's Lease and posting its status.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use tinykube_api::error_chain;
use tinykube_client::Informer;
use tinykube_dns::{Dns, DnsConfig};
use tinykube_kubelet::images::node_images;
use tinykube_kubelet::runtime::Runtime;
use tinykube_kubelet::runtime::daemon::{CONTAINERD_SOCKET, OwnContainerd};
use tinykube_kubelet::{Kubelet, KubeletConfig};
use tinykube_net::Ipv4Cidr;
use tinykube_net::overlay::{Local, Overlay, OverlayError};
use tokio_util::sync::CancellationToken;

use crate::network;
use crate::registration::{self, LEASE_DURATION, NodeFacts};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    /// The join token (`K10<CA hash>::server:<secret>`), used only to join.
    pub token: String,
    /// The cluster CA (PEM), when it is not to be fetched and checked against the
    /// token's hash.
    pub ca_file: Option<PathBuf>,
    pub node_name: String,
    pub node_ip: Option<IpAddr>,
    pub data_dir: PathBuf,
    pub containerd_socket: PathBuf,
    /// Register as a control-plane node (the node-role label).
    pub control_plane: bool,
    /// And with the control plane's NoSchedule taint, so ordinary pods go elsewhere.
    pub taint_control_plane: bool,
    /// First container restart back-off (Kubernetes: 10 s).
    pub backoff_base: Duration,
    pub heartbeat: Duration,
    /// Registries (host:port) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The address peers send overlay traffic to (default: the node's address), or the
    /// interface whose address that is; never a NAT address every VM shares.
    pub public_ip: Option<Ipv4Addr>,
    pub iface: Option<String>,
    /// The node's own resolvers: DNS forwards to them, `dnsPolicy: Default` pods get them.
    pub resolv_conf: PathBuf,
    /// TTL of the cluster DNS answers.
    pub dns_ttl: u32,
}

impl AgentConfig {
    pub fn new(
        server: &str,
        token: &str,
        ca_file: Option<PathBuf>,
        node_name: &str,
        data_dir: PathBuf,
    ) -> Self {
        Self {
            server: server.to_string(),
            token: token.to_string(),
            ca_file,
            node_name: node_name.to_string(),
            node_ip: None,
            data_dir,
            containerd_socket: PathBuf::from(CONTAINERD_SOCKET),
            control_plane: false,
            taint_control_plane: false,
            backoff_base: Duration::from_secs(10),
            heartbeat: Duration::from_secs(10),
            insecure_registries: Vec::new(),
            public_ip: None,
            iface: None,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            dns_ttl: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot join the cluster")]
    Join(#[from] tinykube_client::join::JoinError),
    #[error("cannot make an API client for {server}: {message}")]
    Client { server: String, message: String },
    #[error("cannot register node {node}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Runtime(#[from] tinykube_kubelet::runtime::RuntimeError),
    #[error(transparent)]
    Kubelet(#[from] tinykube_kubelet::KubeletError),
    #[error("cannot start containerd")]
    Containerd(#[source] std::io::Error),
    #[error("cannot set up the pod network")]
    Network(#[from] tinykube_net::link::LinkError),
    #[error(transparent)]
    NetConf(#[from] network::NetworkError),
    #[error("cannot set up the overlay")]
    Overlay(#[from] OverlayError),
    #[error("{0}")]
    Other(String),
}

/// Joins (or finds the credentials of an earlier join) and makes the node's client,
/// with the renewal that keeps its certificate valid.
async fn client(
    cfg: AgentConfig,
) -> Result<(kube::Client, tinykube_client::rotation::Rotation), AgentError> {
    let token =
        tinykube_api::pki::JoinToken::parse(&cfg.token).map_err(|e| AgentError::Join(e.into()))?;
    let (path, _) = tinykube_client::join::join(
        &cfg.server,
        &token,
        &cfg.node_name,
        cfg.ca_file.as_deref(),
        &cfg.data_dir,
    )
    .await?;
    tinykube_client::rotation::node_client(&path)
        .await
        .map_err(|e| AgentError::Client {
            server: cfg.server.clone(),
            message: e.to_string(),
        })
}

fn server_addr(server: &str) -> Option<SocketAddr> {
    let hostport = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))?;
    let hostport = hostport.split('/').next()?;
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:443")
    };
    hostport.to_socket_addrs().ok()?.next()
}

/// Why a node's address cannot be used: another node has it (the Vagrant NAT pitfall:
/// every VM's first interface is 10.0.2.15), or it lies inside the pod or service
/// network. Pure.
pub fn address_conflict(
    name: &str,
    ip: IpAddr,
    nodes: &[Node],
    networks: &[(&str, Ipv4Cidr)],
) -> Option<String> {
    let taken = nodes.iter().find(|n| {
        n.metadata.name.as_deref() != Some(name)
            && n.status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .is_some_and(|a| {
                    a.iter()
                        .any(|a| a.type_ == "InternalIP" && a.address == ip.to_string())
                })
    });
    if let Some(other) = taken {
        return Some(format!(
            "node {} already has the address {ip}; every node needs its own (on Vagrant every VM's first, NAT interface has the same address): pass --node-ip with this machine's host-only address, and --iface for the overlay",
            other.metadata.name.as_deref().unwrap_or_default()
        ));
    }
    if let IpAddr::V4(v4) = ip {
        for (what, net) in networks {
            if net.contains(v4) {
                return Some(format!(
                    "this node's address {ip} is inside the {what} {net}; pick networks that do not overlap the machines' own (the master's --cluster-cidr), or pass --node-ip"
                ));
            }
        }
    }
    None
}

/// Runs the node agent until `cancel`.
pub async fn run(cfg: AgentConfig, cancel: CancellationToken) -> Result<(), AgentError> {
    run_via(cfg, None, cancel).await
}

/// The master's own node agent: it joins as any node does (its certificates serve the
/// kubelet's port and are renewed as usual) but speaks to the API server through `api`,
/// the master's in-process loopback client acting as this node's user.
pub async fn run_in_master(
    cfg: AgentConfig,
    api: kube::Client,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    run_via(cfg, Some(api), cancel).await
}

async fn run_via(
    cfg: AgentConfig,
    api: Option<kube::Client>,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| AgentError::Other(format!("cannot create {}: {e}", cfg.data_dir.display())))?;
    let (joined, rotation) = client(cfg.clone()).await?;
    let client = api.unwrap_or_else(|| joined.clone());
    // The node's address, checked against the other nodes' before anything is set up.
    let ip = cfg
        .node_ip
        .or_else(|| server_addr(&cfg.server).and_then(registration::address_towards))
        .ok_or_else(|| {
            AgentError::Other("cannot tell this node's address; pass --node-ip".into())
        })?;
    if let Ok(nodes) = Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await
        && let Some(why) = address_conflict(&cfg.node_name, ip, &nodes.items, &[])
    {
        return Err(AgentError::Other(why));
    }
    let namespace = format!("tinykube-{}", cfg.node_name);
    let (runtime, own) = match Runtime::connect(
        &cfg.containerd_socket,
        &namespace,
        Duration::from_secs(1),
    )
    .await
    {
        Ok(r) => (r, None),
        Err(_) => {
            tracing::info!(socket = %cfg.containerd_socket.display(), "no containerd answers; starting one");
            let own = OwnContainerd::start(&cfg.data_dir.join("containerd"))
                .await
                .map_err(AgentError::Containerd)?;
            let rt = Runtime::connect(&own.socket, &namespace, Duration::from_secs(20)).await?;
            (rt, Some(own))
        }
    };
    let renewing = cancel.child_token();
    let renewal = tokio::spawn(rotation.run(joined, renewing.clone()));
    let result = run_with(cfg, ip, client, runtime, cancel).await;
    renewing.cancel();
    let _ = renewal.await;
    if let Some(own) = own {
        own.stop().await;
    }
    result
}

async fn run_with(
    cfg: AgentConfig,
    ip: IpAddr,
    client: kube::Client,
    runtime: Runtime,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    runtime.ensure_namespace().await?;
    let version = runtime.version().await?;
    let binary = std::env::current_exe()
        .map_err(|e| AgentError::Other(format!("cannot find the tinykube binary: {e}")))?;
    let images =
        tinykube_kubelet::images::prepare(&runtime, &binary, &cfg.data_dir.join("images")).await?;
    release_free_memory();
    let facts = NodeFacts {
        name: cfg.node_name.clone(),
        ip,
        control_plane: cfg.control_plane,
        tainted: cfg.taint_control_plane,
        runtime_version: version,
        max_pods: 110,
    };
    let registered = registration::register(
        &client,
        &cfg.node_name,
        registration::labels(&facts),
        registration::taints(&facts),
        registration::status(&facts, &images.sizes, false),
    )
    .await
    .map_err(|source| AgentError::Register {
        node: cfg.node_name.clone(),
        source,
    })?;
    registration::renew_lease(&client, &cfg.node_name, LEASE_DURATION)
        .await
        .ok();
    tracing::info!(node = %cfg.node_name, %ip, "node registered");

    // The node IPAM controller hands out the podCIDR shortly after registration.
    let Some(cidr) = pod_cidr(&client, &cfg.node_name, registered, &cancel).await? else {
        return Ok(());
    };
    // The overlay first: its MTU is the pods'.
    let Some(conf) = network::net_conf(&client, &cancel).await? else {
        return Ok(());
    };
    let service_cidr: Ipv4Cidr = tinykube_api::constants::SERVICE_CIDR
        .parse()
        .map_err(|e: tinykube_net::cidr::CidrError| AgentError::Other(e.to_string()))?;
    if let Some(why) = address_conflict(
        &cfg.node_name,
        ip,
        &[],
        &[
            ("pod network", conf.network),
            ("service network", service_cidr),
        ],
    ) {
        return Err(AgentError::Other(why));
    }
    let public_ip = public_ip(&cfg, ip).await?;
    let overlay = Arc::new(
        Overlay::setup(
            conf.backend,
            Local {
                cluster: conf.network,
                subnet: cidr,
                public_ip,
            },
        )
        .await?,
    );
    network::publish(&client, &cfg.node_name, &overlay)
        .await
        .map_err(|e| AgentError::Other(format!("cannot publish the overlay annotations: {e}")))?;
    tracing::info!(backend = %conf.backend, %public_ip, mtu = overlay.pod_mtu(), "overlay ready");
    let peers = tokio::spawn(network::follow_peers(
        client.clone(),
        overlay.clone(),
        cfg.node_name.clone(),
        cancel.clone(),
    ));
    // Services and their endpoints, watched once for the proxy and DNS.
    let services = Informer::<Service>::start(
        Api::all(client.clone()),
        watcher::Config::default(),
        cancel.clone(),
    );
    let slices = Informer::<EndpointSlice>::start(
        Api::all(client.clone()),
        watcher::Config::default(),
        cancel.clone(),
    );
    // The service proxy: ClusterIP and NodePort rules in this node's namespace.
    let proxy_metrics = Arc::new(tinykube_proxy::Metrics::default());
    let proxy = tokio::spawn(tinykube_proxy::run(
        services.clone(),
        slices.clone(),
        cfg.node_name.clone(),
        conf.network,
        proxy_metrics.clone(),
        cancel.clone(),
    ));
    // LoadBalancer pool addresses this node is elected to announce.
    let announcer = match ip {
        IpAddr::V4(v4) => Some(tokio::spawn(crate::announce::run(
            client.clone(),
            services.clone(),
            cfg.node_name.clone(),
            v4,
            cancel.clone(),
        ))),
        IpAddr::V6(_) => None,
    };
    // Cluster DNS on the kube-dns address, answered on this node.
    let dns_config = DnsConfig {
        ttl: cfg.dns_ttl,
        resolv_conf: cfg.resolv_conf.clone(),
        ..DnsConfig::default()
    };
    let dns = match Dns::start(dns_config, services, slices, cancel.clone()).await {
        Ok(d) => Some(Arc::new(d)),
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "cluster DNS is not served on this node");
            None
        }
    };
    // The kubelet: pods, and the kubelet API with the overlay's and DNS's counters on
    // /metrics.
    let counters = overlay.clone();
    let kubelet = Kubelet::start(
        client.clone(),
        runtime.clone(),
        KubeletConfig {
            node: cfg.node_name.clone(),
            node_ip: ip.to_string(),
            data_dir: cfg.data_dir.clone(),
            pod_cidr: cidr,
            pod_mtu: Some(overlay.pod_mtu()),
            backoff_base: cfg.backoff_base,
            insecure_registries: cfg.insecure_registries.clone(),
            pause_image: images.pause,
            resolv_conf: cfg.resolv_conf.clone(),
        },
        Arc::new(Parts {
            overlay: counters,
            proxy: proxy_metrics,
            dns,
        }),
        cfg.heartbeat,
        cancel.clone(),
    )
    .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut tick = tokio::time::interval(cfg.heartbeat);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = registration::renew_lease(&client, &cfg.node_name, LEASE_DURATION).await {
            tracing::warn!(error = %e, "cannot renew the node lease");
        }
        let status = registration::status(&facts, &node_images(&runtime).await, true);
        if let Err(e) = nodes
            .patch_status(
                &cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            tracing::warn!(error = %e, "cannot post node status");
        }
    }
    kubelet.stopped().await;
    let _ = peers.await;
    let _ = proxy.await;
    if let Some(a) = announcer {
        let _ = a.await;
    }
    Ok(())
}

/// The node agent's parts outside the kubelet, as the kubelet API shows them.
struct Parts {
    overlay: Arc<Overlay>,
    proxy: Arc<tinykube_proxy::Metrics>,
    dns: Option<Arc<Dns>>,
}

impl tinykube_kubelet::server::NodeParts for Parts {
    fn metrics(&self) -> String {
        let mut m = self.overlay.stats().prometheus();
        m.push_str(&self.proxy.prometheus());
        if let Some(d) = &self.dns {
            m.push_str(&d.prometheus());
        }
        m
    }

    fn network(&self) -> serde_json::Value {
        let rules = tinykube_net::iptables::save("nat")
            .map(|t| tinykube_proxy::inspect::node_rules(&tinykube_net::iptables::parse_save(&t)))
            .unwrap_or_else(|e| json!({"error": error_chain(&e)}));
        json!({
            "overlay": self.overlay.describe(),
            "serviceRules": rules,
            "dns": self.dns.as_ref().map(|d| d.describe()),
        })
    }

    fn service(&self, ns: &str, name: &str) -> Result<serde_json::Value, String> {
        let text = tinykube_net::iptables::save("nat").map_err(|e| error_chain(&e))?;
        Ok(tinykube_proxy::inspect::service_path(
            &tinykube_net::iptables::parse_save(&text),
            ns,
            name,
        ))
    }
}

/// Waits for the podCIDR the node IPAM controller gives this node.
async fn pod_cidr(
    client: &kube::Client,
    name: &str,
    registered: Node,
    cancel: &CancellationToken,
) -> Result<Option<Ipv4Cidr>, AgentError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut cidr = registered.spec.and_then(|s| s.pod_cidr);
    while cidr.is_none() {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        cidr = nodes
            .get(name)
            .await
            .ok()
            .and_then(|n| n.spec)
            .and_then(|s| s.pod_cidr);
    }
    cidr.unwrap_or_default()
        .parse()
        .map(Some)
        .map_err(|e: tinykube_net::cidr::CidrError| AgentError::Other(e.to_string()))
}

/// The overlay's public address: `--public-ip`, else the address of `--iface`, else the
/// node's own.
async fn public_ip(cfg: &AgentConfig, node_ip: IpAddr) -> Result<Ipv4Addr, AgentError> {
    if let Some(ip) = cfg.public_ip {
        return Ok(ip);
    }
    if let Some(name) = &cfg.iface {
        let h = tinykube_net::link::connect()?;
        return tinykube_net::overlay::routes::address_of(&h, name)
            .await?
            .ok_or_else(|| AgentError::Other(format!("interface {name} has no IPv4 address")));
    }
    match node_ip {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => Err(AgentError::Other(
            "the overlay needs an IPv4 address; pass --public-ip".into(),
        )),
    }
}

/// Hands the heap's free pages back to the kernel. Importing the local images streams
/// tens of MB through gRPC buffers; glibc keeps what they freed in its arenas, and
/// the worker would carry it as resident memory for the rest of its life.
fn release_free_memory() {
    tinykube_api::memory::release_free_memory();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, ip: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_node_address_must_be_its_own_and_outside_the_cluster_networks() {
        let nodes = [
            node("master", "10.0.2.15"),
            node("worker-1", "192.168.56.11"),
        ];
        let nat: IpAddr = "10.0.2.15".parse().unwrap();
        let why = address_conflict("worker-2", nat, &nodes, &[]).unwrap();
        assert!(
            why.starts_with("node master already has the address 10.0.2.15"),
            "{why}"
        );
        assert!(why.contains("--node-ip"), "{why}");
        // Its own Node (a restart) is no conflict.
        assert_eq!(address_conflict("master", nat, &nodes, &[]), None);
        let pods: Ipv4Cidr = "10.244.0.0/16".parse().unwrap();
        let inside: IpAddr = "10.244.3.7".parse().unwrap();
        let why = address_conflict("w", inside, &[], &[("pod network", pods)]).unwrap();
        assert!(
            why.contains("inside the pod network 10.244.0.0/16"),
            "{why}"
        );
        let fine: IpAddr = "192.168.56.12".parse().unwrap();
        assert_eq!(
            address_conflict("w", fine, &nodes, &[("pod network", pods)]),
            None
        );
    }
}
