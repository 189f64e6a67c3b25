//! The service proxy of a node, in kube-proxy's iptables mode: it follows Services and
//! EndpointSlices (the node agent's shared informers) and keeps this network namespace's
//! nat and filter rules in step, so a connection to a ClusterIP or a NodePort is sent to
//! one of the service's ready pods.

pub mod rules;

use std::time::Duration;

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use tinykube_api::error_chain;
use tinykube_client::Informer;
use tinykube_net::Ipv4Cidr;
use tinykube_net::iptables::{self, IptablesError};
use tokio_util::sync::CancellationToken;

/// How often the rules are written again even if nothing changed (repairs outside
/// damage, like kube-proxy's periodic sync).
const RESYNC: Duration = Duration::from_secs(30);
/// Changes arriving within this window are applied together.
const SETTLE: Duration = Duration::from_millis(50);

/// The jumps from the built-in chains into ours: table, chain, comment, target, and
/// whether only new connections take it (filter), as kube-proxy installs them.
#[rustfmt::skip]
const HOOKS: [(&str, &str, &str, &str, bool); 6] = [
    ("nat", "PREROUTING", "kubernetes service portals", rules::SERVICES, false),
    ("nat", "OUTPUT", "kubernetes service portals", rules::SERVICES, false),
    ("nat", "POSTROUTING", "kubernetes postrouting rules", rules::POSTROUTING, false),
    ("filter", "FORWARD", "kubernetes service portals", rules::SERVICES, true),
    ("filter", "OUTPUT", "kubernetes service portals", rules::SERVICES, true),
    ("filter", "INPUT", "kubernetes externally-visible service portals", rules::EXTERNAL_SERVICES, true),
];

/// Writes `ports` into the calling thread's network namespace: our chains whole, the
/// per-service chains no longer wanted deleted. `last` is what the previous write
/// wrote, if it succeeded: its chains are the ones that may have to go. Without it (the
/// first write, after a failure, the periodic resync) the tables are read back to find
/// stale chains, and the jumps from the built-in chains are made sure of.
pub fn apply(
    ports: &[rules::ServicePort],
    cluster: Ipv4Cidr,
    last: Option<&[rules::ServicePort]>,
) -> Result<(), IptablesError> {
    let (existing, save) = match last {
        Some(last) => (rules::owned_chains(last), None),
        None => {
            let save = iptables::must("iptables-save", &[], None)?;
            (rules::existing_chains(&save), Some(save))
        }
    };
    // The chains first, so the jumps never point at nothing.
    iptables::restore(&rules::render(ports, cluster, &existing))?;
    let Some(save) = save else {
        return Ok(());
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
    Ok(())
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
/// rules of the calling process's network namespace in step.
pub async fn run(
    services: Arc<Informer<Service>>,
    slices: Arc<Informer<EndpointSlice>>,
    cluster: Ipv4Cidr,
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
    let mut applied: Option<Vec<rules::ServicePort>> = None;
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
        let want = wanted(&services.store, &slices.store);
        if !force && applied.as_ref() == Some(&want) {
            continue;
        }
        let started = std::time::Instant::now();
        // A resync reads the tables back; otherwise the last write's chains tell which
        // ones may have to go.
        let last = if force { None } else { applied.take() };
        let result = tokio::task::spawn_blocking({
            let want = want.clone();
            move || apply(&want, cluster, last.as_deref())
        })
        .await;
        match result {
            Ok(Ok(())) => {
                tracing::debug!(
                    ports = want.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "service rules written"
                );
                applied = Some(want);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %error_chain(&e), "cannot write the service rules");
                applied = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the service rules writer failed");
                applied = None;
            }
        }
    }
}

fn wanted(services: &Store<Service>, slices: &Store<EndpointSlice>) -> Vec<rules::ServicePort> {
    let (s, e) = (services.state(), slices.state());
    rules::service_ports(s.iter().map(|s| s.as_ref()), e.iter().map(|e| e.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
