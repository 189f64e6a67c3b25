//! The rules as text: what kube-proxy writes for each kind of service port.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tinykube_net::Ipv4Cidr;

use super::chains::{ext_chain, sep_chain, svc_chain, svl_chain};
use super::ports::slice_endpoints;
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
        assert!(
            text.contains(&format!(
                "\"default/web:http loadbalancer IP\" -m tcp -p tcp -d {ip}/32 --dport 80 -j {ext}"
            )),
            "{text}"
        );
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
