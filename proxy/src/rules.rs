//! The service rules in kube-proxy's iptables layout, as iptables-restore input, from
//! the cluster's Services and EndpointSlices. Pure: no I/O.
//!
//! nat: `KUBE-SERVICES` (from PREROUTING and OUTPUT) sends each ClusterIP:port to its
//! `KUBE-SVC-*` chain, which picks one `KUBE-SEP-*` endpoint chain at random (rule i
//! of n matches with probability 1/(n-i)), which DNATs to the pod. NodePorts go
//! through `KUBE-NODEPORTS` (the last rule of `KUBE-SERVICES`, for addresses of this
//! node) and `KUBE-EXT-*`, which marks the connection for masquerade so the answer
//! comes back through this node. `KUBE-POSTROUTING` masquerades what was marked.
//! filter: a service port with no endpoints rejects new connections at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tinykube_net::Ipv4Cidr;

pub const SERVICES: &str = "KUBE-SERVICES";
pub const EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const NODEPORTS: &str = "KUBE-NODEPORTS";
pub const POSTROUTING: &str = "KUBE-POSTROUTING";
pub const MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The packet mark that asks `KUBE-POSTROUTING` to masquerade (kube-proxy's bit).
const MASQ_MARK: &str = "0x4000";
/// Prefixes of the per-service and per-endpoint chains this proxy owns.
pub const OWNED_PREFIXES: [&str; 3] = ["KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-"];

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
    /// Ready endpoints, sorted.
    pub endpoints: Vec<SocketAddrV4>,
}

/// The endpoints of one service port in its EndpointSlices, as kube-proxy picks them:
/// the ready ones, or when none is ready, those still serving while they terminate (so
/// a rollout's last old pod finishes its connections' successors instead of refusing).
fn slice_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port_name: &str,
    protocol: &str,
) -> Vec<SocketAddrV4> {
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
            for a in &e.addresses {
                let Ok(ip) = a.parse() else { continue };
                if is_ready {
                    ready.push(SocketAddrV4::new(ip, port));
                } else if serving && is_terminating {
                    terminating.push(SocketAddrV4::new(ip, port));
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
                endpoints: slice_endpoints(slices.iter().copied(), &port_name, proto_name),
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
    chain_name("KUBE-SVC-", &format!("{}{}", p.name, p.protocol))
}

fn ext_chain(p: &ServicePort) -> String {
    chain_name("KUBE-EXT-", &format!("{}{}", p.name, p.protocol))
}

fn sep_chain(p: &ServicePort, ep: &SocketAddrV4) -> String {
    chain_name("KUBE-SEP-", &format!("{}{}{ep}", p.name, p.protocol))
}

/// The whole rule set, for iptables-restore --noflush: every chain we own is declared
/// (so flushed) and written again; chains in `existing` (owned chains present now)
/// that are no longer wanted are flushed and deleted.
pub fn render(ports: &[ServicePort], cluster: Ipv4Cidr, existing: &BTreeSet<String>) -> String {
    let owned = owned_chains(ports);
    let stale: Vec<&String> = existing.difference(&owned).collect();
    let mut rules = String::new();
    let r = &mut rules;
    let _ = writeln!(
        r,
        "-A {POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(r, "-A {POSTROUTING} -j MARK --xor-mark {MASQ_MARK}");
    let _ = writeln!(
        r,
        "-A {POSTROUTING} -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
    );
    let _ = writeln!(r, "-A {MARK_MASQ} -j MARK --or-mark {MASQ_MARK}");
    let mut rejects = String::new();
    for p in ports.iter().filter(|p| !p.endpoints.is_empty()) {
        let (name, proto) = (&p.name, p.protocol);
        let svc = svc_chain(p);
        let _ = writeln!(
            r,
            "-A {SERVICES} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} -j {svc}",
            p.cluster_ip, p.port
        );
        // Callers from outside the pod network are masqueraded, so the answer returns
        // through this node rather than straight from the pod.
        let _ = writeln!(
            r,
            "-A {svc} -m comment --comment \"{name} cluster IP\" ! -s {cluster} -d {}/32 -m {proto} -p {proto} --dport {} -j {MARK_MASQ}",
            p.cluster_ip, p.port
        );
        if let Some(np) = p.node_port {
            let ext = ext_chain(p);
            let _ = writeln!(
                r,
                "-A {NODEPORTS} -m comment --comment \"{name}\" -m {proto} -p {proto} --dport {np} -j {ext}"
            );
            let _ = writeln!(
                r,
                "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j {MARK_MASQ}"
            );
            let _ = writeln!(r, "-A {ext} -j {svc}");
        }
        let n = p.endpoints.len();
        for (i, ep) in p.endpoints.iter().enumerate() {
            let sep = sep_chain(p, ep);
            let pick = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                r,
                "-A {svc} -m comment --comment \"{name} -> {ep}\"{pick} -j {sep}"
            );
            // A pod reaching itself through its service: masqueraded, or its own
            // answer would bypass the DNAT.
            let _ = writeln!(
                r,
                "-A {sep} -m comment --comment \"{name}\" -s {}/32 -j {MARK_MASQ}",
                ep.ip()
            );
            let _ = writeln!(
                r,
                "-A {sep} -m comment --comment \"{name}\" -m {proto} -p {proto} -j DNAT --to-destination {ep}"
            );
        }
    }
    for p in ports.iter().filter(|p| p.endpoints.is_empty()) {
        let (name, proto) = (&p.name, p.protocol);
        let _ = writeln!(
            rejects,
            "-A {SERVICES} -m comment --comment \"{name} has no endpoints\" -m {proto} -p {proto} -d {}/32 --dport {} -j REJECT",
            p.cluster_ip, p.port
        );
        if let Some(np) = p.node_port {
            let _ = writeln!(
                rejects,
                "-A {EXTERNAL_SERVICES} -m comment --comment \"{name} has no endpoints\" -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {np} -j REJECT"
            );
        }
    }
    let _ = writeln!(
        r,
        "-A {SERVICES} -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j {NODEPORTS}"
    );
    let mut out = String::from("*nat\n");
    let fixed = [SERVICES, NODEPORTS, POSTROUTING, MARK_MASQ].map(String::from);
    for c in fixed.iter().chain(&owned).chain(stale.iter().copied()) {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str(&rules);
    for c in &stale {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n*filter\n");
    let _ = writeln!(out, ":{SERVICES} - [0:0]\n:{EXTERNAL_SERVICES} - [0:0]");
    out.push_str(&rejects);
    out.push_str("COMMIT\n");
    out
}

/// The per-service and per-endpoint chains `render` writes for `ports`.
pub fn owned_chains(ports: &[ServicePort]) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for p in ports.iter().filter(|p| !p.endpoints.is_empty()) {
        set.insert(svc_chain(p));
        if p.node_port.is_some() {
            set.insert(ext_chain(p));
        }
        for ep in &p.endpoints {
            set.insert(sep_chain(p, ep));
        }
    }
    set
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

    fn slice(name: &str, ips: &[&str], ports: serde_json::Value) -> EndpointSlice {
        let mut endpoints: Vec<_> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
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
        let eps = [slice(
            "web",
            &["10.244.2.3", "10.244.1.7", "10.244.1.5"],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        )];
        service_ports(&svcs, &eps)
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
        let eps: Vec<String> = web.endpoints.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            eps,
            ["10.244.1.5:8080", "10.244.1.7:8080", "10.244.2.3:8080"]
        );
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
        let got = slice_endpoints([&mk(json!([old, gone, new]))], "", "TCP");
        assert_eq!(got, vec!["10.244.1.2:80".parse().unwrap()]);
        let got = slice_endpoints([&mk(json!([old, gone]))], "", "TCP");
        assert_eq!(got, vec!["10.244.1.1:80".parse().unwrap()]);
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
        let text = render(&ports, "10.244.0.0/16".parse().unwrap(), &BTreeSet::new());
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
        assert_eq!(owned_chains(&ports).len(), 1 + 1 + 3);
    }

    #[test]
    fn stale_chains_are_flushed_then_deleted() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-OLDOLDOLDOLDOLD1 - [0:0]\n:KUBE-SEP-OLDOLDOLDOLDOLD2 - [0:0]\n:TINYKUBE-POSTRTG - [0:0]\nCOMMIT\n";
        let existing = existing_chains(save);
        assert_eq!(existing.len(), 2);
        let text = render(&[], "10.244.0.0/16".parse().unwrap(), &existing);
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
}
