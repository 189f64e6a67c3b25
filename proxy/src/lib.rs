//! The service proxy of a node, in kube-proxy's iptables mode: it follows Services and
//! EndpointSlices (the node agent's shared informers) and keeps this network namespace's
//! nat and filter rules in step, so a connection to a ClusterIP or a NodePort is sent to
//! one of the service's ready pods.

pub mod conntrack;
pub mod health;
pub mod inspect;
pub mod metrics;
pub mod rules;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use tinykube_api::error_chain;
use tinykube_client::Informer;
use tinykube_net::Ipv4Cidr;
use tinykube_net::iptables::{self, IptablesError};
use tokio_util::sync::CancellationToken;

pub use metrics::Metrics;

/// How often the rules in the kernel are checked against ours, and written again whole
/// if something outside changed them (kube-proxy's periodic sync). Rules left intact
/// are not rewritten, so their packet counters keep counting, as kube-proxy's do
/// between its hourly full syncs.
const RESYNC: Duration = Duration::from_secs(30);
/// Changes arriving within this window are applied together.
const SETTLE: Duration = Duration::from_millis(50);

/// The jumps from the built-in chains into ours: table, chain, comment, target, and
/// whether only new connections take it (filter), as kube-proxy installs them.
#[rustfmt::skip]
const HOOKS: [(&str, &str, &str, &str, bool); 9] = [
    ("nat", "PREROUTING", "kubernetes service portals", rules::SERVICES, false),
    ("nat", "OUTPUT", "kubernetes service portals", rules::SERVICES, false),
    ("nat", "POSTROUTING", "kubernetes postrouting rules", rules::POSTROUTING, false),
    ("filter", "FORWARD", "kubernetes service portals", rules::SERVICES, true),
    ("filter", "OUTPUT", "kubernetes service portals", rules::SERVICES, true),
    ("filter", "INPUT", "kubernetes externally-visible service portals", rules::EXTERNAL_SERVICES, true),
    ("filter", "INPUT", "kubernetes load balancer firewall", rules::PROXY_FIREWALL, true),
    ("filter", "FORWARD", "kubernetes load balancer firewall", rules::PROXY_FIREWALL, true),
    ("filter", "OUTPUT", "kubernetes load balancer firewall", rules::PROXY_FIREWALL, true),
];

/// What a write did: how many bytes iptables-restore was given, how many per-port
/// chains it wrote, and whether it was a full write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub bytes: usize,
    pub chains: usize,
    pub full: bool,
}

/// Writes `new` into the calling thread's network namespace. `last` is what the
/// previous write left, if it succeeded: then only the dispatch chains and the chains of
/// the ports whose rules changed are written, and the chains those ports no longer use
/// are deleted. Without it (the first write, after a failure, the periodic resync) every
/// chain is written, the tables are read back to find stale chains, and the jumps from
/// the built-in chains are made sure of.
pub fn apply(new: &rules::Synced, last: Option<&rules::Synced>) -> Result<Written, IptablesError> {
    let (text, save, written_chains) = match last {
        Some(last) => {
            let changed = rules::changed_ports(last, new);
            let stale = rules::stale_after(last, new, &changed);
            let n = changed
                .iter()
                .filter_map(|k| new.rules_of(k))
                .map(|r| r.chains.len())
                .sum::<usize>();
            (rules::render(new, &stale, Some(&changed)), None, n)
        }
        None => {
            let save = iptables::must("iptables-save", &[], None)?;
            let owned = new.owned_chains();
            let stale: BTreeSet<String> = rules::existing_chains(&save)
                .into_iter()
                .filter(|c| !owned.contains(c))
                .collect();
            (rules::render(new, &stale, None), Some(save), owned.len())
        }
    };
    // The chains first, so the jumps never point at nothing.
    iptables::restore(&text)?;
    let written = Written {
        bytes: text.len(),
        chains: written_chains,
        full: save.is_some(),
    };
    let Some(save) = save else {
        return Ok(written);
    };
    for (table, chain, comment, target, new_only) in HOOKS {
        if hook_present(&save, table, chain, comment, target) {
            continue;
        }
        let mut rule = vec!["-m", "comment", "--comment", comment, "-j", target];
        if new_only {
            rule.splice(0..0, ["-m", "conntrack", "--ctstate", "NEW"]);
        }
        iptables::ensure_rule(table, chain, &rule, false)?;
    }
    Ok(written)
}

/// The number of rules of each (table, chain) in iptables-save or -restore text.
fn rule_counts(text: &str) -> std::collections::BTreeMap<(String, String), usize> {
    let mut table = String::new();
    let mut out = std::collections::BTreeMap::new();
    for l in text.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t.to_string();
            continue;
        }
        let l = l
            .strip_prefix('[')
            .and_then(|l| l.split_once("] ").map(|(_, r)| r))
            .unwrap_or(l);
        if let Some(rest) = l.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or_default();
            *out.entry((table.clone(), chain.to_string())).or_default() += 1;
        }
    }
    out
}

/// Whether the kernel still holds every rule last written (each of our chains with as
/// many rules as written) and the jumps into them: if so, the periodic sync leaves the
/// rules, and their counters, alone.
fn intact(applied: &rules::Synced) -> Result<bool, IptablesError> {
    let save = iptables::must("iptables-save", &[], None)?;
    let want = rule_counts(&rules::render(applied, &BTreeSet::new(), None));
    let have = rule_counts(&save);
    let chains_intact = want
        .iter()
        .all(|(k, n)| have.get(k).copied().unwrap_or(0) == *n);
    let hooks_intact = HOOKS.iter().all(|(table, chain, comment, target, _)| {
        hook_present(&save, table, chain, comment, target)
    });
    Ok(chains_intact && hooks_intact)
}

/// Whether an `iptables-save` dump has, in `table`, a rule of `chain` with `comment`
/// that jumps to `target` (so the common sync spawns no `iptables -C`).
fn hook_present(save: &str, table: &str, chain: &str, comment: &str, target: &str) -> bool {
    let mut in_table = false;
    let (head, comment, jump) = (
        format!("-A {chain} "),
        format!("--comment \"{comment}\""),
        format!("-j {target}"),
    );
    save.lines().any(|l| {
        if let Some(t) = l.strip_prefix('*') {
            in_table = t == table;
        }
        in_table && l.starts_with(&head) && l.contains(&comment) && l.ends_with(&jump)
    })
}

/// Follows the node's Service and EndpointSlice informers until `cancel`, keeping the
/// rules of the calling process's network namespace in step, and serving the health
/// check node ports of `externalTrafficPolicy: Local` services.
pub async fn run(
    services: Arc<Informer<Service>>,
    slices: Arc<Informer<EndpointSlice>>,
    node: String,
    cluster: Ipv4Cidr,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    // Until both lists are in, missing objects would read as "no service".
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = async { services.ready().await; slices.ready().await } => {}
    }
    let mut events = futures::stream::select(
        services.subscribe().map(|_| ()),
        slices.subscribe().map(|_| ()),
    )
    .boxed();
    let mut resync = tokio::time::interval(RESYNC);
    let health = health::HealthChecks::new(node.clone(), cancel.clone());
    let mut applied: Option<rules::Synced> = None;
    loop {
        let force = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = resync.tick() => true,
            ev = events.next() => match ev {
                None => return,
                Some(()) => false,
            },
        };
        // Let a burst of changes (a scale-up, a rollout) land before writing.
        tokio::time::sleep(SETTLE).await;
        while let Some(Some(())) = events.next().now_or_never() {}
        let want = wanted(&services.store, &slices.store, &node);
        health.set(&want);
        let started = std::time::Instant::now();
        // The rules of the ports that changed are built again; the others' are reused.
        let synced = rules::Synced::build(want, applied.as_ref(), cluster);
        if !force
            && applied
                .as_ref()
                .is_some_and(|a| rules::changed_ports(a, &synced).is_empty())
        {
            continue;
        }
        // The periodic sync rewrites everything only if the kernel's rules were changed
        // from outside; otherwise only what changed since the last write is written.
        let unchanged = applied
            .as_ref()
            .is_some_and(|a| rules::changed_ports(a, &synced).is_empty());
        if force
            && unchanged
            && let Some(last) = applied.take()
        {
            match tokio::task::spawn_blocking(move || (intact(&last), last)).await {
                Ok((Ok(true), last)) => {
                    applied = Some(last);
                    continue;
                }
                Ok((_, last)) => applied = Some(last),
                Err(_) => {}
            }
        }
        let last = if force { None } else { applied.take() };
        let gone = last.as_ref().map(|l| {
            let old: Vec<&rules::ServicePort> = l.service_ports().collect();
            let new: Vec<&rules::ServicePort> = synced.service_ports().collect();
            conntrack::stale_udp(&old, &new)
        });
        let result = tokio::task::spawn_blocking(move || {
            let w = apply(&synced, last.as_ref())?;
            let gone = gone.unwrap_or_default();
            match conntrack::forget(&gone) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(entries = n, "stale UDP conntrack entries deleted"),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot delete stale UDP conntrack entries")
                }
            }
            Ok::<_, IptablesError>((w, synced))
        })
        .await;
        match result {
            Ok(Ok((w, synced))) => {
                metrics.synced(started.elapsed(), &w, synced.rule_counts());
                tracing::debug!(
                    ports = synced.ports.len(),
                    bytes = w.bytes,
                    full = w.full,
                    ms = started.elapsed().as_millis() as u64,
                    "service rules written"
                );
                applied = Some(synced);
            }
            Ok(Err(e)) => {
                metrics.failed();
                tracing::warn!(error = %error_chain(&e), "cannot write the service rules");
                applied = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                metrics.failed();
                tracing::warn!(error = %e, "the service rules writer failed");
                applied = None;
            }
        }
    }
}

fn wanted(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    node: &str,
) -> Vec<rules::ServicePort> {
    let (s, e) = (services.state(), slices.state());
    rules::service_ports(
        s.iter().map(|s| s.as_ref()),
        e.iter().map(|e| e.as_ref()),
        node,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_counted_per_table_and_chain_with_or_without_counters() {
        let text = "*nat\n:KUBE-SERVICES - [0:0]\n[4:240] -A KUBE-SERVICES -j A\n-A KUBE-SERVICES -j B\nCOMMIT\n*filter\n-A KUBE-SERVICES -j REJECT\nCOMMIT\n";
        let c = rule_counts(text);
        assert_eq!(c[&("nat".to_string(), "KUBE-SERVICES".to_string())], 2);
        assert_eq!(c[&("filter".to_string(), "KUBE-SERVICES".to_string())], 1);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn hooks_are_found_in_their_own_table_only() {
        let save = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n*nat\n-A OUTPUT -j OTHER\nCOMMIT\n";
        for (table, chain, found) in [
            ("filter", "FORWARD", true),
            ("nat", "FORWARD", false),
            ("filter", "OUTPUT", false),
            ("nat", "OUTPUT", false),
        ] {
            let got = hook_present(
                save,
                table,
                chain,
                "kubernetes service portals",
                "KUBE-SERVICES",
            );
            assert_eq!(got, found, "{table} {chain}");
        }
    }
}
