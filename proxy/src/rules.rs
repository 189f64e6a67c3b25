//! The service rules in kube-proxy's iptables layout, as iptables-restore input, from
//! the cluster's Services and EndpointSlices. Pure: no I/O.
//!
//! nat: `KUBE-SERVICES` (from PREROUTING and OUTPUT) sends each ClusterIP:port to its
//! `KUBE-SVC-*` chain, which picks one `KUBE-SEP-*` endpoint chain at random (rule i
//! of n matches with probability 1/(n-i)), which DNATs to the pod. Traffic from outside
//! (NodePorts through `KUBE-NODEPORTS`, the last rule of `KUBE-SERVICES`; LoadBalancer
//! ingress addresses and externalIPs straight from `KUBE-SERVICES`) goes through
//! `KUBE-EXT-*`, which marks the connection for masquerade so the answer comes back
//! through this node, or, with `externalTrafficPolicy: Local`, keeps the client's
//! address and picks among this node's endpoints only (`KUBE-SVL-*`, also what
//! `internalTrafficPolicy: Local` uses). `sessionAffinity: ClientIP` sends a client
//! back to the endpoint it had (`-m recent` per endpoint chain). `KUBE-POSTROUTING`
//! masquerades what was marked.
//! filter: a service port with no endpoints rejects new connections at once; one with
//! no local endpoint under a Local policy drops them.
//!
//! The rules come in per-port pieces (`PortRules`), so a change can rewrite only the
//! chains of the ports that changed plus the shared dispatch chains
//! (kube-proxy's `MinimizeIPTablesRestore`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tinykube_net::Ipv4Cidr;

pub const SERVICES: &str = "KUBE-SERVICES";
pub const EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const NODEPORTS: &str = "KUBE-NODEPORTS";
pub const POSTROUTING: &str = "KUBE-POSTROUTING";
pub const MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// filter: drops what a LoadBalancer's source ranges did not let through.
pub const PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The packet mark that asks `KUBE-POSTROUTING` to masquerade (kube-proxy's bit).
const MASQ_MARK: &str = "0x4000";
/// Prefixes of the per-service and per-endpoint chains this proxy owns.
pub const OWNED_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SEP-",
    "KUBE-EXT-",
    "KUBE-SVL-",
    "KUBE-FW-",
];

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

    fn has_external(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty() || !self.lb_ips.is_empty()
    }

    fn key(&self) -> String {
        format!("{}{}", self.name, self.protocol)
    }
}

/// The endpoints of one service port in its EndpointSlices, as kube-proxy picks them:
/// the ready ones, or when none is ready, those still serving while they terminate (so
/// a rollout's last old pod finishes its connections' successors instead of refusing).
fn slice_endpoints<'a>(
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

/// `prefix` + the first 16 characters of the base32 SHA-256 of `key`: kube-proxy's
/// chain names, stable across restarts and nodes.
pub fn chain_name(prefix: &str, key: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    // 16 characters of 5 bits = the first 10 bytes.
    let bits = hash.as_ref()[..10]
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    let mut name = prefix.to_string();
    for i in (0..16).rev() {
        name.push(ALPHABET[((bits >> (i * 5)) & 31) as usize] as char);
    }
    name
}

fn svc_chain(p: &ServicePort) -> String {
    chain_name("KUBE-SVC-", &p.key())
}

fn svl_chain(p: &ServicePort) -> String {
    chain_name("KUBE-SVL-", &p.key())
}

fn ext_chain(p: &ServicePort) -> String {
    chain_name("KUBE-EXT-", &p.key())
}

fn sep_chain(p: &ServicePort, ep: &SocketAddrV4) -> String {
    chain_name("KUBE-SEP-", &format!("{}{ep}", p.key()))
}

/// The rules of one service port: its lines in the shared dispatch chains, and its own
/// chains whole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortRules {
    /// nat `KUBE-SERVICES` lines (cluster IP, external IPs, LoadBalancer addresses).
    pub services: Vec<String>,
    /// nat `KUBE-NODEPORTS` lines.
    pub nodeports: Vec<String>,
    /// The port's own nat chains (`KUBE-SVC/SVL/EXT/SEP-*`) and their lines.
    pub chains: BTreeMap<String, Vec<String>>,
    /// filter `KUBE-SERVICES`, `KUBE-EXTERNAL-SERVICES` and `KUBE-PROXY-FIREWALL` lines.
    pub filter_services: Vec<String>,
    pub filter_external: Vec<String>,
    pub filter_firewall: Vec<String>,
}

/// Rules that pick one of `eps` from `chain`: with affinity, a client seen within the
/// timeout goes back to its endpoint first; then one at random.
fn pick(p: &ServicePort, chain: &str, eps: &[&Endpoint], out: &mut Vec<String>) {
    let name = &p.name;
    if let Some(t) = p.affinity {
        for ep in eps {
            let sep = sep_chain(p, &ep.addr);
            out.push(format!(
                "-A {chain} -m comment --comment \"{name} -> {}\" -m recent --name {sep} --mask 255.255.255.255 --rsource --rcheck --seconds {t} --reap -j {sep}",
                ep.addr
            ));
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let sep = sep_chain(p, &ep.addr);
        let chance = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        out.push(format!(
            "-A {chain} -m comment --comment \"{name} -> {}\"{chance} -j {sep}",
            ep.addr
        ));
    }
}

/// The rules of one service port (see the module's notes for the layout).
pub fn port_rules(p: &ServicePort, cluster: Ipv4Cidr) -> PortRules {
    let mut r = PortRules::default();
    let (name, proto) = (&p.name, p.protocol);
    let all: Vec<&Endpoint> = p.endpoints.iter().collect();
    let local: Vec<&Endpoint> = p.local_endpoints().collect();
    let (cip, port) = (p.cluster_ip, p.port);
    if all.is_empty() {
        r.filter_services.push(format!(
            "-A {SERVICES} -m comment --comment \"{name} has no endpoints\" -m {proto} -p {proto} -d {cip}/32 --dport {port} -j REJECT"
        ));
        for ip in p.external_ips.iter().chain(&p.lb_ips) {
            r.filter_external.push(format!(
                "-A {EXTERNAL_SERVICES} -m comment --comment \"{name} has no endpoints\" -m {proto} -p {proto} -d {ip}/32 --dport {port} -j REJECT"
            ));
        }
        if let Some(np) = p.node_port {
            r.filter_external.push(format!(
                "-A {EXTERNAL_SERVICES} -m comment --comment \"{name} has no endpoints\" -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {np} -j REJECT"
            ));
        }
        return r;
    }
    let svc = svc_chain(p);
    let svl = svl_chain(p);
    let needs_local = p.internal_local || p.external_local;
    // Traffic from inside the cluster (to the ClusterIP).
    let internal = if p.internal_local { &svl } else { &svc };
    let masq_internal = format!(
        "-A {internal} -m comment --comment \"{name} cluster IP\" ! -s {cluster} -d {cip}/32 -m {proto} -p {proto} --dport {port} -j {MARK_MASQ}"
    );
    if p.internal_local && local.is_empty() {
        r.filter_services.push(format!(
            "-A {SERVICES} -m comment --comment \"{name} has no local endpoints\" -m {proto} -p {proto} -d {cip}/32 --dport {port} -j DROP"
        ));
    } else {
        r.services.push(format!(
            "-A {SERVICES} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {cip}/32 --dport {port} -j {internal}"
        ));
    }
    let mut svc_lines = Vec::new();
    if !p.internal_local {
        svc_lines.push(masq_internal.clone());
    }
    pick(p, &svc, &all, &mut svc_lines);
    r.chains.insert(svc.clone(), svc_lines);
    if needs_local {
        let mut svl_lines = Vec::new();
        if p.internal_local {
            svl_lines.push(masq_internal);
        }
        pick(p, &svl, &local, &mut svl_lines);
        r.chains.insert(svl.clone(), svl_lines);
    }
    // Traffic from outside: node ports, external IPs, LoadBalancer addresses.
    if p.has_external() {
        let ext = ext_chain(p);
        let mut lines = Vec::new();
        if !p.external_local {
            lines.push(format!(
                "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j {MARK_MASQ}"
            ));
            lines.push(format!("-A {ext} -j {svc}"));
        } else {
            // Pods and the node itself are sent anywhere in the cluster; clients from
            // outside only to this node's endpoints, keeping their address.
            lines.push(format!(
                "-A {ext} -s {cluster} -m comment --comment \"pod traffic for {name} external destinations\" -j {svc}"
            ));
            lines.push(format!(
                "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j {MARK_MASQ}"
            ));
            lines.push(format!(
                "-A {ext} -m comment --comment \"route LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j {svc}"
            ));
            if !local.is_empty() {
                lines.push(format!("-A {ext} -j {svl}"));
            }
        }
        r.chains.insert(ext.clone(), lines);
        for ip in &p.external_ips {
            r.services.push(format!(
                "-A {SERVICES} -m comment --comment \"{name} external IP\" -m {proto} -p {proto} -d {ip}/32 --dport {port} -j {ext}"
            ));
        }
        // With source ranges, LoadBalancer traffic goes through `KUBE-FW-*`, which lets the
        // ranges on to `KUBE-EXT-*`; what falls through is not DNAT-ed and is dropped by
        // `KUBE-PROXY-FIREWALL` in filter (kube-proxy's layout since 1.28).
        let lb_target = if p.source_ranges.is_empty() {
            ext.clone()
        } else {
            let fw = chain_name("KUBE-FW-", &p.key());
            let mut lines: Vec<String> = p
                .source_ranges
                .iter()
                .map(|cidr| {
                    format!(
                        "-A {fw} -m comment --comment \"{name} loadbalancer IP\" -s {cidr} -j {ext}"
                    )
                })
                .collect();
            lines.push(format!(
                "-A {fw} -m comment --comment \"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL\""
            ));
            r.chains.insert(fw.clone(), lines);
            for ip in &p.lb_ips {
                r.filter_firewall.push(format!(
                    "-A {PROXY_FIREWALL} -m comment --comment \"{name} traffic not accepted by {fw}\" -m {proto} -p {proto} -d {ip}/32 --dport {port} -j DROP"
                ));
            }
            fw
        };
        for ip in &p.lb_ips {
            r.services.push(format!(
                "-A {SERVICES} -m comment --comment \"{name} loadbalancer IP\" -m {proto} -p {proto} -d {ip}/32 --dport {port} -j {lb_target}"
            ));
        }
        if let Some(np) = p.node_port {
            r.nodeports.push(format!(
                "-A {NODEPORTS} -m comment --comment \"{name}\" -m {proto} -p {proto} --dport {np} -j {ext}"
            ));
        }
        if p.external_local && local.is_empty() {
            for ip in p.external_ips.iter().chain(&p.lb_ips) {
                r.filter_external.push(format!(
                    "-A {EXTERNAL_SERVICES} -m comment --comment \"{name} has no local endpoints\" -m {proto} -p {proto} -d {ip}/32 --dport {port} -j DROP"
                ));
            }
            if let Some(np) = p.node_port {
                r.filter_external.push(format!(
                    "-A {EXTERNAL_SERVICES} -m comment --comment \"{name} has no local endpoints\" -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {np} -j DROP"
                ));
            }
        }
    }
    for ep in &all {
        let sep = sep_chain(p, &ep.addr);
        let recent = if p.affinity.is_some() {
            format!(" -m recent --name {sep} --mask 255.255.255.255 --rsource --set")
        } else {
            String::new()
        };
        r.chains.insert(
            sep.clone(),
            vec![
                // A pod reaching itself through its service: masqueraded, or its own
                // answer would bypass the DNAT.
                format!(
                    "-A {sep} -m comment --comment \"{name}\" -s {}/32 -j {MARK_MASQ}",
                    ep.addr.ip()
                ),
                format!(
                    "-A {sep} -m comment --comment \"{name}\" -m {proto} -p {proto}{recent} -j DNAT --to-destination {}",
                    ep.addr
                ),
            ],
        );
    }
    r
}

/// The rules of every port, by port key (`name` + protocol), each with the port it was
/// made from, so the next sync rebuilds only the ports that changed.
#[derive(Debug, Clone, Default)]
pub struct Synced {
    pub ports: BTreeMap<String, (ServicePort, Arc<PortRules>)>,
}

impl Synced {
    /// The rules of `want`, reusing `last`'s for every port that is the same.
    pub fn build(want: Vec<ServicePort>, last: Option<&Synced>, cluster: Ipv4Cidr) -> Self {
        let ports = want
            .into_iter()
            .map(|p| {
                let key = p.key();
                let rules = match last.and_then(|l| l.ports.get(&key)) {
                    Some((old, r)) if *old == p => r.clone(),
                    _ => Arc::new(port_rules(&p, cluster)),
                };
                (key, (p, rules))
            })
            .collect();
        Self { ports }
    }

    pub fn service_ports(&self) -> impl Iterator<Item = &ServicePort> {
        self.ports.values().map(|(p, _)| p)
    }

    fn rules(&self) -> impl Iterator<Item = &PortRules> {
        self.ports.values().map(|(_, r)| r.as_ref())
    }

    /// The per-port chains these rules use.
    pub fn owned_chains(&self) -> BTreeSet<String> {
        self.rules()
            .flat_map(|r| r.chains.keys().cloned())
            .collect()
    }

    pub fn rules_of(&self, key: &str) -> Option<&PortRules> {
        self.ports.get(key).map(|(_, r)| r.as_ref())
    }

    /// Rules in the nat and filter tables, for the metrics.
    pub fn rule_counts(&self) -> (usize, usize) {
        self.rules().fold((0, 0), |(n, f), r| {
            (
                n + r.services.len()
                    + r.nodeports.len()
                    + r.chains.values().map(Vec::len).sum::<usize>(),
                f + r.filter_services.len() + r.filter_external.len(),
            )
        })
    }
}

/// The ports whose rules differ between `old` and `new`: added, changed or removed.
pub fn changed_ports(old: &Synced, new: &Synced) -> BTreeSet<String> {
    let differs = |k: &String| match (old.ports.get(k), new.ports.get(k)) {
        (Some((_, a)), Some((_, b))) => !Arc::ptr_eq(a, b) && a != b,
        _ => true,
    };
    old.ports
        .keys()
        .chain(new.ports.keys())
        .filter(|k| differs(k))
        .cloned()
        .collect()
}

/// The chains the `changed` ports had in `old` and no longer have in `new`.
pub fn stale_after(old: &Synced, new: &Synced, changed: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for k in changed {
        let Some(before) = old.rules_of(k) else {
            continue;
        };
        let after = new.rules_of(k);
        for c in before.chains.keys() {
            if after.is_none_or(|a| !a.chains.contains_key(c)) {
                out.insert(c.clone());
            }
        }
    }
    out
}

/// iptables-restore --noflush input. Always: the dispatch chains (nat `KUBE-SERVICES`,
/// `KUBE-NODEPORTS`; filter `KUBE-SERVICES`, `KUBE-EXTERNAL-SERVICES`) whole, from
/// every port's pieces. With `changed` None (a full write), also the fixed chains and
/// every port's own chains; otherwise only the chains of the ports in `changed`. The
/// `stale` chains (no port wants them any more) are flushed and deleted.
pub fn render(
    synced: &Synced,
    stale: &BTreeSet<String>,
    changed: Option<&BTreeSet<String>>,
) -> String {
    let written: Vec<(&String, &Vec<String>)> = synced
        .ports
        .iter()
        .filter(|(k, _)| changed.is_none_or(|c| c.contains(*k)))
        .flat_map(|(_, (_, r))| r.chains.iter())
        .collect();
    let mut out = String::with_capacity(64 * 1024);
    out.push_str("*nat\n");
    let mut declare: Vec<&str> = vec![SERVICES, NODEPORTS];
    if changed.is_none() {
        declare.push(POSTROUTING);
        declare.push(MARK_MASQ);
    }
    declare.extend(written.iter().map(|(c, _)| c.as_str()));
    declare.extend(stale.iter().map(String::as_str));
    for c in &declare {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    if changed.is_none() {
        let _ = writeln!(
            out,
            "-A {POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
        );
        let _ = writeln!(out, "-A {POSTROUTING} -j MARK --xor-mark {MASQ_MARK}");
        let _ = writeln!(
            out,
            "-A {POSTROUTING} -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
        );
        let _ = writeln!(out, "-A {MARK_MASQ} -j MARK --or-mark {MASQ_MARK}");
    }
    for r in synced.rules() {
        for l in r.services.iter().chain(&r.nodeports) {
            out.push_str(l);
            out.push('\n');
        }
    }
    let _ = writeln!(
        out,
        "-A {SERVICES} -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j {NODEPORTS}"
    );
    for (_, lines) in &written {
        for l in *lines {
            out.push_str(l);
            out.push('\n');
        }
    }
    for c in stale {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n*filter\n");
    let _ = writeln!(
        out,
        ":{SERVICES} - [0:0]\n:{EXTERNAL_SERVICES} - [0:0]\n:{PROXY_FIREWALL} - [0:0]"
    );
    for r in synced.rules() {
        for l in r
            .filter_services
            .iter()
            .chain(&r.filter_external)
            .chain(&r.filter_firewall)
        {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// Owned chains present in an `iptables-save -t nat` dump.
pub fn existing_chains(save: &str) -> BTreeSet<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| OWNED_PREFIXES.iter().any(|p| c.starts_with(p)))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(name: &str, ip: &str, kind: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": name},
            "spec": {"clusterIP": ip, "type": kind, "ports": ports}
        }))
        .unwrap()
    }

    /// A slice of ready endpoints (ip, node), plus one not ready.
    fn slice(name: &str, eps: &[(&str, &str)], ports: serde_json::Value) -> EndpointSlice {
        let mut endpoints: Vec<_> = eps
            .iter()
            .map(|(ip, node)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true}}))
            .collect();
        endpoints.push(json!({"addresses": ["10.244.9.9"], "conditions": {"ready": false}}));
        serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": format!("{name}-x1"),
                         "labels": {SERVICE_NAME_LABEL: name}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        }))
        .unwrap()
    }

    fn cluster() -> Ipv4Cidr {
        "10.244.0.0/16".parse().unwrap()
    }

    fn web_eps() -> EndpointSlice {
        slice(
            "web",
            &[
                ("10.244.2.3", "w2"),
                ("10.244.1.7", "w1"),
                ("10.244.1.5", "w1"),
            ],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        )
    }

    fn web() -> Vec<ServicePort> {
        let svcs = [
            service(
                "web",
                "10.96.0.20",
                "NodePort",
                json!([{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}]),
            ),
            service(
                "empty",
                "10.96.0.21",
                "ClusterIP",
                json!([{"port": 53, "protocol": "UDP", "nodePort": 30053}]),
            ),
            service("headless", "None", "ClusterIP", json!([{"port": 80}])),
        ];
        service_ports(&svcs, &[web_eps()], "w1")
    }

    fn synced(ports: &[ServicePort]) -> Synced {
        Synced::build(ports.to_vec(), None, cluster())
    }

    fn text(ports: &[ServicePort]) -> String {
        render(&synced(ports), &BTreeSet::new(), None)
    }

    #[test]
    fn service_ports_join_ready_endpoints_by_port_name() {
        let ports = web();
        assert_eq!(
            ports.len(),
            2,
            "the headless service has no rules: {ports:?}"
        );
        let empty = &ports[0];
        assert_eq!(empty.name, "default/empty:");
        assert_eq!(empty.protocol, "udp");
        assert!(empty.endpoints.is_empty());
        assert_eq!(
            empty.node_port, None,
            "a ClusterIP service has no node port"
        );
        let web = &ports[1];
        assert_eq!(web.name, "default/web:http");
        assert_eq!(web.node_port, Some(30080));
        let eps: Vec<String> = web.endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(
            eps,
            ["10.244.1.5:8080", "10.244.1.7:8080", "10.244.2.3:8080"]
        );
        assert_eq!(web.local_endpoints().count(), 2, "two on this node (w1)");
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let mk = |eps: serde_json::Value| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"namespace": "default", "name": "w-1", "labels": {SERVICE_NAME_LABEL: "w"}},
                "addressType": "IPv4", "endpoints": eps, "ports": [{"port": 80, "protocol": "TCP"}],
            }))
            .unwrap()
        };
        let old = json!({"addresses": ["10.244.1.1"], "conditions": {"ready": false, "serving": true, "terminating": true}});
        let gone = json!({"addresses": ["10.244.1.3"], "conditions": {"ready": false, "serving": false, "terminating": true}});
        let new = json!({"addresses": ["10.244.1.2"], "conditions": {"ready": true}});
        let addrs = |v: Vec<Endpoint>| {
            v.into_iter()
                .map(|e| e.addr.to_string())
                .collect::<Vec<_>>()
        };
        let got = slice_endpoints([&mk(json!([old, gone, new]))], "", "TCP", "n");
        assert_eq!(addrs(got), vec!["10.244.1.2:80"]);
        let got = slice_endpoints([&mk(json!([old, gone]))], "", "TCP", "n");
        assert_eq!(addrs(got), vec!["10.244.1.1:80"]);
    }

    #[test]
    fn chain_names_are_kube_proxy_s_hashes() {
        let a = chain_name("KUBE-SVC-", "default/web:httptcp");
        assert_eq!(a.len(), "KUBE-SVC-".len() + 16);
        assert!(
            a["KUBE-SVC-".len()..]
                .chars()
                .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        );
        assert_eq!(a, chain_name("KUBE-SVC-", "default/web:httptcp"));
        assert_ne!(a, chain_name("KUBE-SVC-", "default/web:httpudp"));
        // The name kube-proxy gives the kubernetes service's chain on every cluster.
        assert_eq!(
            chain_name("KUBE-SVC-", "default/kubernetes:httpstcp"),
            "KUBE-SVC-NPX46M4PTMTKRN6Y"
        );
    }

    #[test]
    fn endpoints_are_picked_with_probability_one_in_the_remaining() {
        let ports = web();
        let text = text(&ports);
        let svc = svc_chain(&ports[1]);
        let picks: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc} ")) && l.contains("-j KUBE-SEP-"))
            .collect();
        assert_eq!(picks.len(), 3, "{text}");
        assert!(
            picks[0].contains("--probability 0.3333333333"),
            "{}",
            picks[0]
        );
        assert!(
            picks[1].contains("--probability 0.5000000000"),
            "{}",
            picks[1]
        );
        assert!(
            !picks[2].contains("statistic"),
            "the last endpoint takes the rest"
        );
        assert!(text.contains("-j DNAT --to-destination 10.244.2.3:8080"));
        // The cluster IP jump, the node port through KUBE-EXT, and NODEPORTS last.
        assert!(text.contains(&format!("-d 10.96.0.20/32 --dport 80 -j {svc}")));
        assert!(text.contains("--dport 30080 -j KUBE-EXT-"));
        let services: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES") && !l.contains("REJECT"))
            .collect();
        assert!(services.last().unwrap().ends_with("-j KUBE-NODEPORTS"));
        // No endpoints: rejected in filter, no nat chain of its own.
        let filter = &text[text.find("*filter").unwrap()..];
        assert!(
            filter.contains("-d 10.96.0.21/32 --dport 53 -j REJECT"),
            "{filter}"
        );
        assert!(!text[..text.find("*filter").unwrap()].contains("10.96.0.21"));
        assert_eq!(synced(&ports).owned_chains().len(), 1 + 1 + 3);
    }

    #[test]
    fn stale_chains_are_flushed_then_deleted() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-OLDOLDOLDOLDOLD1 - [0:0]\n:KUBE-SEP-OLDOLDOLDOLDOLD2 - [0:0]\n:TINYKUBE-POSTRTG - [0:0]\nCOMMIT\n";
        let existing = existing_chains(save);
        assert_eq!(existing.len(), 2);
        let text = render(&Synced::default(), &existing, None);
        for c in &existing {
            let declared = text.find(&format!(":{c} - [0:0]")).unwrap();
            let deleted = text.find(&format!("-X {c}")).unwrap();
            assert!(declared < deleted);
        }
        assert!(
            !text.contains("TINYKUBE"),
            "chains of others are left alone"
        );
    }

    fn with(spec: serde_json::Value, status: serde_json::Value) -> Vec<ServicePort> {
        let mut s = json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.20", "type": "LoadBalancer",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]},
            "status": status,
        });
        json_patch::merge(&mut s, &json!({"spec": spec}));
        let svc: Service = serde_json::from_value(s).unwrap();
        service_ports(&[svc], &[web_eps()], "w1")
    }

    #[test]
    fn load_balancer_addresses_lead_to_the_external_chain() {
        let ports = with(
            json!({"externalIPs": ["203.0.113.7"]}),
            json!({"loadBalancer": {"ingress": [{"ip": "192.168.56.11"}, {"ip": "192.168.56.12"}]}}),
        );
        assert_eq!(ports[0].lb_ips.len(), 2);
        let text = text(&ports);
        let ext = ext_chain(&ports[0]);
        for ip in ["192.168.56.11", "192.168.56.12"] {
            assert!(text.contains(&format!("\"default/web:http loadbalancer IP\" -m tcp -p tcp -d {ip}/32 --dport 80 -j {ext}")), "{text}");
        }
        assert!(text.contains(&format!(
            "\"default/web:http external IP\" -m tcp -p tcp -d 203.0.113.7/32 --dport 80 -j {ext}"
        )));
        // Cluster policy: masquerade, then any endpoint.
        assert!(text.contains(&format!("-A {ext} -m comment --comment \"masquerade traffic for default/web:http external destinations\" -j KUBE-MARK-MASQ")));
    }

    #[test]
    fn source_ranges_let_only_their_clients_through_the_firewall_chain() {
        let ports = with(
            json!({"loadBalancerSourceRanges": ["203.0.113.0/24"]}),
            json!({"loadBalancer": {"ingress": [{"ip": "192.168.56.11"}]}}),
        );
        let p = &ports[0];
        assert_eq!(p.source_ranges.len(), 1);
        let text = text(&ports);
        let fw = chain_name("KUBE-FW-", &p.key());
        let ext = ext_chain(p);
        assert!(
            text.contains(&format!("-d 192.168.56.11/32 --dport 80 -j {fw}")),
            "{text}"
        );
        assert!(text.contains(&format!("-A {fw} -m comment --comment \"default/web:http loadbalancer IP\" -s 203.0.113.0/24 -j {ext}")));
        assert!(text.contains(&format!("-A KUBE-PROXY-FIREWALL -m comment --comment \"default/web:http traffic not accepted by {fw}\" -m tcp -p tcp -d 192.168.56.11/32 --dport 80 -j DROP")));
        // The node port is not behind the firewall.
        assert!(text.contains(&format!("--dport 30080 -j {ext}")));
    }

    #[test]
    fn external_local_keeps_the_client_and_uses_local_endpoints() {
        let ports = with(
            json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": 32000}),
            json!({}),
        );
        let p = &ports[0];
        assert!(p.external_local);
        assert_eq!(p.health_check_node_port, Some(32000));
        let text = text(&ports);
        let (ext, svl) = (ext_chain(p), svl_chain(p));
        let ext_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {ext} ")))
            .collect();
        assert!(
            !ext_lines
                .iter()
                .any(|l| l.ends_with("-j KUBE-MARK-MASQ") && !l.contains("src-type LOCAL")),
            "{ext_lines:?}"
        );
        assert!(ext_lines.last().unwrap().ends_with(&format!("-j {svl}")));
        let local: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svl} ")) && l.contains("KUBE-SEP-"))
            .collect();
        assert_eq!(local.len(), 2, "only w1's two endpoints: {local:?}");
        // Another node with no local endpoint drops outside traffic instead.
        let svc: Vec<Service> = vec![serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.20", "type": "NodePort", "externalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]},
        })).unwrap()];
        let elsewhere = service_ports(&svc, &[web_eps()], "w3");
        let t = render(&synced(&elsewhere), &BTreeSet::new(), None);
        assert!(t.contains("\"default/web:http has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j DROP"), "{t}");
    }

    #[test]
    fn internal_local_sends_the_cluster_ip_to_local_endpoints_or_drops() {
        let ports = with(
            json!({"type": "ClusterIP", "internalTrafficPolicy": "Local"}),
            json!({}),
        );
        let text = text(&ports);
        let svl = svl_chain(&ports[0]);
        assert!(
            text.contains(&format!("-d 10.96.0.20/32 --dport 80 -j {svl}")),
            "{text}"
        );
        let svc: Vec<Service> = vec![
            serde_json::from_value(json!({
                "metadata": {"namespace": "default", "name": "web"},
                "spec": {"clusterIP": "10.96.0.20", "internalTrafficPolicy": "Local",
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
            }))
            .unwrap(),
        ];
        let elsewhere = service_ports(&svc, &[web_eps()], "w3");
        let t = render(&synced(&elsewhere), &BTreeSet::new(), None);
        assert!(t.contains("\"default/web:http has no local endpoints\" -m tcp -p tcp -d 10.96.0.20/32 --dport 80 -j DROP"), "{t}");
    }

    #[test]
    fn client_ip_affinity_checks_recent_clients_first() {
        let ports = with(
            json!({"type": "ClusterIP", "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}),
            json!({}),
        );
        assert_eq!(ports[0].affinity, Some(600));
        let text = text(&ports);
        let svc = svc_chain(&ports[0]);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc} ")) && l.contains("KUBE-SEP-"))
            .collect();
        assert_eq!(lines.len(), 6, "three checks, three picks: {lines:?}");
        assert!(
            lines[..3]
                .iter()
                .all(|l| l.contains("-m recent") && l.contains("--rcheck --seconds 600 --reap"))
        );
        assert!(lines[3..].iter().all(|l| !l.contains("-m recent")));
        assert_eq!(text.matches("--rsource --set -j DNAT").count(), 3);
    }

    #[test]
    fn a_partial_write_carries_the_dispatch_chains_and_the_changed_ports_only() {
        let mut svcs = Vec::new();
        let mut slices = Vec::new();
        for i in 0..50 {
            let name = format!("s{i}");
            svcs.push(service(
                &name,
                &format!("10.96.1.{i}"),
                "ClusterIP",
                json!([{"port": 80, "protocol": "TCP"}]),
            ));
            slices.push(slice(
                &name,
                &[(&format!("10.244.1.{i}"), "w1")],
                json!([{"port": 8080, "protocol": "TCP"}]),
            ));
        }
        let before = synced(&service_ports(&svcs, &slices, "w1"));
        // One endpoint moves; the other ports' rules are reused, not rebuilt.
        slices[7] = slice(
            "s7",
            &[("10.244.2.99", "w2")],
            json!([{"port": 8080, "protocol": "TCP"}]),
        );
        let after = Synced::build(
            service_ports(&svcs, &slices, "w1"),
            Some(&before),
            cluster(),
        );
        let changed = changed_ports(&before, &after);
        assert_eq!(changed.len(), 1, "{changed:?}");
        let k = changed.iter().next().unwrap();
        let reused = after
            .ports
            .iter()
            .filter(|(key, (_, r))| *key != k && Arc::ptr_eq(r, &before.ports[*key].1))
            .count();
        assert_eq!(reused, 49);
        let stale = stale_after(&before, &after, &changed);
        assert_eq!(stale.len(), 1, "the old endpoint's chain: {stale:?}");
        let partial = render(&after, &stale, Some(&changed));
        let full = render(&after, &stale, None);
        assert!(
            partial.len() * 2 < full.len(),
            "{} vs {}",
            partial.len(),
            full.len()
        );
        // The old endpoint's chain goes, the new one is written, the dispatch is whole.
        assert!(partial.contains("-j DNAT --to-destination 10.244.2.99:8080"));
        let old_sep = sep_chain(
            &service_ports(&svcs[7..8], &[], "w1")[0],
            &"10.244.1.7:8080".parse().unwrap(),
        );
        assert!(partial.contains(&format!("-X {old_sep}")), "{partial}");
        assert_eq!(partial.matches("cluster IP\" -m tcp").count(), 50);
        assert!(!partial.contains("--to-destination 10.244.1.8:8080"));
        assert!(!partial.contains(":KUBE-POSTROUTING"));
    }
}
