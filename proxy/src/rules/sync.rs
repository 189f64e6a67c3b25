//! The ports' pieces put together into iptables-restore input: everything, or only the
//! dispatch chains and the chains of the ports that changed since the last sync.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;

use tinykube_net::Ipv4Cidr;

use super::*;

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
