//! Cluster DNS, served by every node agent itself: the records of the Kubernetes DNS
//! specification for the cluster's Services and pods, answered from the node's own
//! watch caches (so a lookup never leaves the node, and keeps working while the master
//! is down), and every other name forwarded to the node's own resolvers.
//!
//! The server listens on the cluster DNS address (10.96.0.10, the `kube-dns` Service's
//! ClusterIP) held by a dummy link `tinykube-dns` (on `lo` where the kernel has no dummy
//! driver) in the node's network namespace, with
//! its packets exempt from connection tracking (NodeLocal DNSCache's arrangement): a
//! pod's question goes to its own node, is never DNAT-ed by the service rules, and does
//! not add a conntrack entry per query (nor meet conntrack's UDP insertion races).
//!
//! `zone` answers (pure), `cache` fills the zone from the informers, `forward` asks
//! upstream, `server` speaks UDP and TCP, `metrics` counts.

pub mod cache;
pub mod forward;
pub mod metrics;
pub mod server;
pub mod stub;
pub mod zone;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tinykube_api::error_chain;
use tinykube_client::Informer;
use tinykube_net::iptables::{self, IptablesError};
use tokio_util::sync::CancellationToken;

use crate::forward::Forwarder;
use crate::metrics::Metrics;
use crate::server::Handler;
use crate::zone::Zone;

/// The dummy link that holds the cluster DNS address on each node.
pub const DNS_LINK: &str = "tinykube-dns";
/// Where CoreDNS serves its metrics; here too, on the cluster DNS address.
pub const METRICS_PORT: u16 = 9153;

#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The address to serve on (the cluster DNS address).
    pub address: Ipv4Addr,
    pub port: u16,
    pub domain: String,
    pub ttl: u32,
    /// Where the upstream resolvers are listed.
    pub resolv_conf: PathBuf,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            address: tinykube_api::constants::CLUSTER_DNS_IP
                .parse()
                .unwrap_or(Ipv4Addr::UNSPECIFIED),
            port: 53,
            domain: tinykube_api::constants::CLUSTER_DOMAIN.to_string(),
            ttl: 5,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot put the cluster DNS address {address} on this node")]
    Address {
        address: Ipv4Addr,
        #[source]
        source: tinykube_net::link::LinkError,
    },
    #[error("cannot exempt cluster DNS traffic from connection tracking")]
    Rules(#[source] IptablesError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running DNS server.
pub struct Dns {
    pub metrics: Arc<Metrics>,
    pub zone: Arc<RwLock<Zone>>,
    pub addr: SocketAddr,
    pub forwarder: Arc<Forwarder>,
}

impl Dns {
    /// The server's metrics in Prometheus' text format.
    pub fn prometheus(&self) -> String {
        let services = self
            .zone
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .service_count();
        self.metrics.prometheus(services)
    }

    /// The server and its counters, for `tinykube ctl inspect node`.
    pub fn describe(&self) -> serde_json::Value {
        let services = self
            .zone
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .service_count();
        let mut v = self.metrics.describe();
        v["address"] = serde_json::json!(self.addr.to_string());
        v["services"] = serde_json::json!(services);
        v
    }

    /// Sets the address up, binds, and serves until `cancel`.
    pub async fn start(
        cfg: DnsConfig,
        services: Arc<Informer<Service>>,
        slices: Arc<Informer<EndpointSlice>>,
        cancel: CancellationToken,
    ) -> Result<Self, DnsError> {
        own_address(cfg.address, cfg.port).await?;
        let addr = SocketAddr::new(IpAddr::V4(cfg.address), cfg.port);
        let (udp, tcp) = server::bind(addr)
            .await
            .map_err(|source| DnsError::Bind { addr, source })?;
        let addr = udp.local_addr().unwrap_or(addr);
        let forwarder = Arc::new(Forwarder::new(
            cfg.resolv_conf.clone(),
            vec![IpAddr::V4(cfg.address)],
        ));
        if forwarder.upstreams().is_empty() {
            tracing::warn!(resolv_conf = %cfg.resolv_conf.display(), "no upstream DNS servers; names outside the cluster will fail");
        }
        let zone = Arc::new(RwLock::new(Zone::new(&cfg.domain, cfg.ttl)));
        let metrics = Arc::new(Metrics::default());
        tokio::spawn(cache::follow(
            zone.clone(),
            services,
            slices,
            cancel.clone(),
        ));
        let handler = Arc::new(Handler {
            zone: zone.clone(),
            forwarder: forwarder.clone(),
            metrics: metrics.clone(),
        });
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        tokio::spawn(server::serve_udp(
            handler.clone(),
            Arc::new(udp),
            workers,
            cancel.clone(),
        ));
        tokio::spawn(server::serve_tcp(handler, tcp, cancel.clone()));
        let f = forwarder.clone();
        tokio::spawn(async move { f.detect_loops().await });
        tracing::info!(%addr, upstreams = ?forwarder.upstreams(), "cluster DNS serving");
        Ok(Self {
            metrics,
            zone,
            addr,
            forwarder,
        })
    }
}

/// The cluster DNS address on the dummy link, and its traffic (DNS and metrics ports)
/// exempt from connection tracking both ways, in the calling thread's namespace.
async fn own_address(address: Ipv4Addr, port: u16) -> Result<(), DnsError> {
    let bad = |source| DnsError::Address { address, source };
    let h = tinykube_net::link::connect().map_err(bad)?;
    if let Err(e) = tinykube_net::link::ensure_dummy(&h, DNS_LINK, address).await {
        // A kernel without the dummy driver: loopback holds a local address as well.
        tracing::info!(error = %error_chain(&e), "no dummy link; the cluster DNS address goes on lo");
        let lo = tinykube_net::link::link_index(&h, "lo")
            .await
            .map_err(bad)?
            .unwrap_or(1);
        tinykube_net::link::add_address(&h, lo, address, 32)
            .await
            .map_err(bad)?;
    }
    let ip = format!("{address}/32");
    let comment = "tinykube cluster DNS: not tracked";
    // (protocol, port, this address as destination or source): packets to it come in
    // through PREROUTING (pods) or OUTPUT (the node itself); its answers leave by OUTPUT.
    let rules = tokio::task::spawn_blocking(move || -> Result<(), IptablesError> {
        let (dns, metrics) = (port.to_string(), METRICS_PORT.to_string());
        for (proto, p) in [("udp", &dns), ("tcp", &dns), ("tcp", &metrics)] {
            for (chain, addr, port_flag) in [
                ("PREROUTING", "-d", "--dport"),
                ("OUTPUT", "-d", "--dport"),
                ("OUTPUT", "-s", "--sport"),
            ] {
                let rule = [
                    addr,
                    &ip,
                    "-p",
                    proto,
                    port_flag,
                    p,
                    "-m",
                    "comment",
                    "--comment",
                    comment,
                    "-j",
                    "NOTRACK",
                ];
                iptables::ensure_rule("raw", chain, &rule, false)?;
            }
        }
        Ok(())
    })
    .await;
    match rules {
        Ok(r) => r.map_err(DnsError::Rules),
        Err(e) => Err(DnsError::Rules(IptablesError::Failed {
            program: "iptables",
            stderr: e.to_string(),
        })),
    }
}
