//! The service ports this node programs, from the cluster's Services and EndpointSlices.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tinykube_net::Ipv4Cidr;

use super::SERVICE_NAME_LABEL;

/// One endpoint of a service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: SocketAddrV4,
    /// On this node (its slice's `nodeName` is this node's name).
    pub local: bool,
}

/// One port of one service, with the endpoints that serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name:port-name` (the port name may be empty), as kube-proxy names it.
    pub name: String,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress` addresses.
    pub lb_ips: Vec<Ipv4Addr>,
    /// `spec.loadBalancerSourceRanges`: who may reach the LoadBalancer addresses.
    pub source_ranges: Vec<Ipv4Cidr>,
    /// `sessionAffinity: ClientIP`, with its timeout in seconds.
    pub affinity: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    pub health_check_node_port: Option<u16>,
    /// Ready endpoints (or serving terminating ones when none is ready), sorted.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// A port with no endpoints and nothing but its ClusterIP (the rest is filled in).
    pub fn new(name: &str, protocol: &'static str, cluster_ip: Ipv4Addr, port: u16) -> Self {
        Self {
            name: name.to_string(),
            protocol,
            cluster_ip,
            port,
            node_port: None,
            external_ips: Vec::new(),
            lb_ips: Vec::new(),
            source_ranges: Vec::new(),
            affinity: None,
            external_local: false,
            internal_local: false,
            health_check_node_port: None,
            endpoints: Vec::new(),
        }
    }

    /// `namespace/name`.
    pub fn service(&self) -> &str {
        self.name.split(':').next().unwrap_or_default()
    }

    pub fn local_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.local)
    }

    pub(crate) fn has_external(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty() || !self.lb_ips.is_empty()
    }

    pub(crate) fn key(&self) -> String {
        format!("{}{}", self.name, self.protocol)
    }
}

/// The endpoints of one service port in its EndpointSlices, as kube-proxy picks them:
/// the ready ones, or when none is ready, those still serving while they terminate (so
/// a rollout's last old pod finishes its connections' successors instead of refusing).
pub(crate) fn slice_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port_name: &str,
    protocol: &str,
    node: &str,
) -> Vec<Endpoint> {
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or_default() == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == protocol
        }) else {
            continue;
        };
        let Some(port) = target.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for e in &slice.endpoints {
            let c = e.conditions.as_ref();
            // Unset `ready` means ready; `serving` defaults to `ready`.
            let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let local = e.node_name.as_deref() == Some(node);
            for a in &e.addresses {
                let Ok(ip) = a.parse() else { continue };
                let ep = Endpoint {
                    addr: SocketAddrV4::new(ip, port),
                    local,
                };
                if is_ready {
                    ready.push(ep);
                } else if serving && is_terminating {
                    terminating.push(ep);
                }
            }
        }
    }
    let mut out = if ready.is_empty() { terminating } else { ready };
    out.sort();
    out.dedup();
    out
}

/// The service ports to program: every port of every Service with an IPv4 ClusterIP
/// (headless and ExternalName services have none), joined to the endpoints of its
/// EndpointSlices (by the `kubernetes.io/service-name` label) by port name.
pub fn service_ports<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &str,
) -> Vec<ServicePort> {
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let (Some(ns), Some(svc)) = (
            s.metadata.namespace.as_deref(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL)),
        ) else {
            continue;
        };
        by_service.entry((ns, svc.as_str())).or_default().push(s);
    }
    let mut out = Vec::new();
    for svc in services {
        let (Some(ns), Some(name), Some(spec)) = (
            svc.metadata.namespace.as_deref(),
            svc.metadata.name.as_deref(),
            svc.spec.as_ref(),
        ) else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        let slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let ips = |v: Option<&Vec<String>>| -> Vec<Ipv4Addr> {
            let mut v: Vec<Ipv4Addr> = v
                .into_iter()
                .flatten()
                .filter_map(|s| s.parse().ok())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let external_ips = ips(spec.external_ips.as_ref());
        let lb_ips = if spec.type_.as_deref() == Some("LoadBalancer") {
            let ingress: Vec<String> = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.clone())
                .collect();
            ips(Some(&ingress))
        } else {
            Vec::new()
        };
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(10800)
        });
        let has_external = node_ports || !external_ips.is_empty() || !lb_ips.is_empty();
        let external_local =
            has_external && spec.external_traffic_policy.as_deref() == Some("Local");
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let health_check_node_port = spec
            .health_check_node_port
            .filter(|_| external_local)
            .and_then(|p| u16::try_from(p).ok());
        for p in spec.ports.iter().flatten() {
            let proto_name = p.protocol.as_deref().unwrap_or("TCP");
            let protocol = match proto_name {
                "TCP" => "tcp",
                "UDP" => "udp",
                _ => continue,
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let port_name = p.name.clone().unwrap_or_default();
            out.push(ServicePort {
                name: format!("{ns}/{name}:{port_name}"),
                protocol,
                cluster_ip,
                port,
                node_port: p
                    .node_port
                    .filter(|_| node_ports)
                    .and_then(|n| u16::try_from(n).ok()),
                external_ips: external_ips.clone(),
                lb_ips: lb_ips.clone(),
                source_ranges: spec
                    .load_balancer_source_ranges
                    .iter()
                    .flatten()
                    .filter_map(|r| r.trim().parse().ok())
                    .collect(),
                affinity,
                external_local,
                internal_local,
                health_check_node_port,
                endpoints: slice_endpoints(slices.iter().copied(), &port_name, proto_name, node),
            });
        }
    }
    out.sort_by(|a, b| (&a.name, a.protocol).cmp(&(&b.name, b.protocol)));
    out
}
