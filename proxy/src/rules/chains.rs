//! kube-proxy's chain layout for one service port: its lines in the dispatch chains
//! and its own `KUBE-SVC/SVL/EXT/FW/SEP-*` chains.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use tinykube_net::Ipv4Cidr;

use super::*;

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

pub(crate) fn svc_chain(p: &ServicePort) -> String {
    chain_name("KUBE-SVC-", &p.key())
}

pub(crate) fn svl_chain(p: &ServicePort) -> String {
    chain_name("KUBE-SVL-", &p.key())
}

pub(crate) fn ext_chain(p: &ServicePort) -> String {
    chain_name("KUBE-EXT-", &p.key())
}

pub(crate) fn sep_chain(p: &ServicePort, ep: &SocketAddrV4) -> String {
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
