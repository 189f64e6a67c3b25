//! Reading the proxy's rules back from the kernel with their counters: the path a
//! packet for one Service takes through this node's nat table (`KUBE-SERVICES` or
//! `KUBE-NODEPORTS` -> `KUBE-SVC/SVL/EXT-*` -> each `KUBE-SEP-*` -> DNAT), and how many
//! rules the node holds. Each counter counts connections: the nat table sees only the
//! first packet of each.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tinykube_net::iptables::SavedRule;

use crate::rules::{NODEPORTS, SERVICES};

/// Whether a rule's comment names service `ns/name` (any of its ports).
fn names(rule: &SavedRule, service: &str) -> bool {
    rule.comment.as_deref().is_some_and(|c| {
        c.strip_prefix(service)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', ' ']))
    })
}

fn own_chain(name: &str) -> bool {
    [
        "KUBE-SVC-",
        "KUBE-SVL-",
        "KUBE-EXT-",
        "KUBE-FW-",
        "KUBE-SEP-",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// One endpoint as the rules see it: the jump to its `KUBE-SEP-*` chain from a
/// `KUBE-SVC-*` (or `SVL`) chain, the probability written on that jump (conditional on
/// the jumps before it not being taken) and how many connections took it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPath {
    pub from: String,
    pub chain: String,
    pub endpoint: String,
    pub probability: Option<f64>,
    /// The chance of this endpoint for a new connection, all jumps considered.
    pub share: f64,
    pub connections: u64,
}

/// The rules service `ns/name` has in this node's nat table.
pub fn service_path(rules: &[SavedRule], ns: &str, name: &str) -> Value {
    let service = format!("{ns}/{name}");
    let entries: Vec<&SavedRule> = rules
        .iter()
        .filter(|r| (r.chain == SERVICES || r.chain == NODEPORTS) && names(r, &service))
        .collect();
    // Every own chain reachable from the entries, in the order first met.
    let mut order: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue: Vec<String> = entries
        .iter()
        .map(|r| r.target.clone())
        .filter(|t| own_chain(t))
        .collect();
    while let Some(c) = queue.first().cloned() {
        queue.remove(0);
        if !seen.insert(c.clone()) {
            continue;
        }
        order.push(c.clone());
        for r in rules.iter().filter(|r| r.chain == c) {
            if own_chain(&r.target) && !seen.contains(&r.target) {
                queue.push(r.target.clone());
            }
        }
    }
    let chains: Vec<Value> = order
        .iter()
        .map(|c| {
            let rs: Vec<&SavedRule> = rules.iter().filter(|r| &r.chain == c).collect();
            json!({"name": c, "rules": rs})
        })
        .collect();
    json!({
        "entries": entries,
        "chains": chains,
        "endpoints": endpoints(rules, &order),
    })
}

/// The endpoint jumps of the given chains, with each endpoint's overall chance.
pub fn endpoints(rules: &[SavedRule], chains: &[String]) -> Vec<EndpointPath> {
    let mut out = Vec::new();
    for c in chains
        .iter()
        .filter(|c| c.starts_with("KUBE-SVC-") || c.starts_with("KUBE-SVL-"))
    {
        let mut left = 1.0;
        for r in rules
            .iter()
            .filter(|r| &r.chain == c && r.target.starts_with("KUBE-SEP-"))
        {
            // Affinity rules (`-m recent --rcheck`) send returning clients back; they
            // carry no probability and are not a choice of their own.
            if r.spec.contains("--rcheck") {
                continue;
            }
            let p = r.probability.unwrap_or(1.0);
            let share = left * p;
            left -= share;
            let endpoint = rules
                .iter()
                .find(|d| d.chain == r.target && d.to_destination.is_some())
                .and_then(|d| d.to_destination.clone())
                .unwrap_or_default();
            out.push(EndpointPath {
                from: c.clone(),
                chain: r.target.clone(),
                endpoint,
                probability: r.probability,
                share,
                connections: r.packets,
            });
        }
    }
    out
}

/// How many service rules and chains the node holds, and its masquerade rules.
pub fn node_rules(nat: &[SavedRule]) -> Value {
    let kube: Vec<&SavedRule> = nat
        .iter()
        .filter(|r| r.chain.starts_with("KUBE-"))
        .collect();
    let svc: BTreeSet<&str> = nat
        .iter()
        .filter(|r| r.chain.starts_with("KUBE-SVC-"))
        .map(|r| r.chain.as_str())
        .collect();
    let sep: BTreeSet<&str> = nat
        .iter()
        .filter(|r| r.chain.starts_with("KUBE-SEP-"))
        .map(|r| r.chain.as_str())
        .collect();
    let masquerade: Vec<&SavedRule> = nat
        .iter()
        .filter(|r| r.target == "MASQUERADE" || r.chain == tinykube_net::overlay::masquerade::CHAIN)
        .collect();
    json!({
        "natRules": kube.len(),
        "serviceChains": svc.len(),
        "endpointChains": sep.len(),
        "masquerade": masquerade,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinykube_net::iptables::parse_save;

    const SAVE: &str = "*nat
[0:0] -A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-WEB
[0:0] -A KUBE-SERVICES -d 10.96.0.30/32 -p tcp -m comment --comment \"default/webby cluster IP\" -m tcp --dport 80 -j KUBE-SVC-OTHER
[5:300] -A KUBE-NODEPORTS -p tcp -m comment --comment \"default/web:http\" -m tcp --dport 30000 -j KUBE-EXT-WEB
[5:300] -A KUBE-EXT-WEB -m comment --comment \"masquerade traffic for default/web:http external destinations\" -j KUBE-MARK-MASQ
[5:300] -A KUBE-EXT-WEB -j KUBE-SVC-WEB
[20:1200] -A KUBE-SVC-WEB -m comment --comment \"default/web:http -> 10.244.1.2:8080\" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-A
[22:1320] -A KUBE-SVC-WEB -m comment --comment \"default/web:http -> 10.244.2.2:8080\" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-B
[18:1080] -A KUBE-SVC-WEB -m comment --comment \"default/web:http -> 10.244.2.3:8080\" -j KUBE-SEP-C
[20:1200] -A KUBE-SEP-A -p tcp -m comment --comment \"default/web:http\" -m tcp -j DNAT --to-destination 10.244.1.2:8080
[22:1320] -A KUBE-SEP-B -p tcp -m comment --comment \"default/web:http\" -m tcp -j DNAT --to-destination 10.244.2.2:8080
[18:1080] -A KUBE-SEP-C -p tcp -m comment --comment \"default/web:http\" -m tcp -j DNAT --to-destination 10.244.2.3:8080
[0:0] -A KUBE-SVC-OTHER -j KUBE-SEP-Z
[9:540] -A TINYKUBE-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully
COMMIT
";

    #[test]
    fn the_path_follows_the_service_s_own_chains_to_each_endpoint() {
        let rules = parse_save(SAVE);
        let v = service_path(&rules, "default", "web");
        assert_eq!(v["entries"].as_array().unwrap().len(), 2, "{v}");
        let chains: Vec<&str> = v["chains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            chains,
            [
                "KUBE-SVC-WEB",
                "KUBE-EXT-WEB",
                "KUBE-SEP-A",
                "KUBE-SEP-B",
                "KUBE-SEP-C"
            ]
        );
        let eps = endpoints(&rules, &["KUBE-SVC-WEB".to_string()]);
        let conns: u64 = eps.iter().map(|e| e.connections).sum();
        assert_eq!(conns, 60);
        assert_eq!(eps[1].endpoint, "10.244.2.2:8080");
        for e in &eps {
            assert!((e.share - 1.0 / 3.0).abs() < 1e-6, "{e:?}");
        }
        // "default/webby" is another service.
        assert!(!chains.contains(&"KUBE-SVC-OTHER"));
    }

    #[test]
    fn node_rules_count_chains_and_find_the_masquerade() {
        let v = node_rules(&parse_save(SAVE));
        assert_eq!(v["serviceChains"], 2);
        assert_eq!(v["endpointChains"], 3);
        assert_eq!(v["masquerade"].as_array().unwrap().len(), 1);
    }
}
