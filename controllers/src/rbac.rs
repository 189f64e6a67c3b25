//! ClusterRole aggregation, as kube-controller-manager's clusterrole-aggregation
//! controller does it: a ClusterRole with an `aggregationRule` holds the rules of every
//! ClusterRole its selectors match (so `admin`, `edit` and `view` grow when a role
//! labelled `rbac.authorization.k8s.io/aggregate-to-view: "true"` appears), kept up to
//! date as roles come and go.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tinykube_api::selector::Selector;
use tokio_util::sync::CancellationToken;

use crate::Informer;
use crate::owner::name;

/// Changes arriving within this window are handled in one pass.
const SETTLE: Duration = Duration::from_millis(20);
/// A full pass even when nothing changed (a failed write is retried).
const RESYNC: Duration = Duration::from_secs(30);

/// For each aggregated ClusterRole whose rules are not what its selectors gather: its
/// name and the rules it should hold (each rule once, in the order found, roles by
/// name).
pub fn aggregate(roles: &[Arc<ClusterRole>]) -> Vec<(String, Vec<PolicyRule>)> {
    let mut sorted: Vec<&Arc<ClusterRole>> = roles.iter().collect();
    sorted.sort_by(|a, b| name(&a.metadata).cmp(name(&b.metadata)));
    let mut out = Vec::new();
    for role in &sorted {
        let Some(rule) = &role.aggregation_rule else {
            continue;
        };
        let selectors: Vec<Selector> = rule
            .cluster_role_selectors
            .iter()
            .flatten()
            .filter_map(|s| Selector::from_label_selector(Some(s)).ok())
            .collect();
        let mut rules: Vec<PolicyRule> = Vec::new();
        for other in &sorted {
            if name(&other.metadata) == name(&role.metadata) {
                continue;
            }
            let labels = other.metadata.labels.clone().unwrap_or_default();
            if !selectors.iter().any(|s| s.matches(&labels)) {
                continue;
            }
            for r in other.rules.iter().flatten() {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
        }
        if role.rules.as_deref().unwrap_or_default() != rules.as_slice() {
            out.push((name(&role.metadata).to_string(), rules));
        }
    }
    out
}

pub async fn run(
    client: kube::Client,
    roles: Arc<Informer<ClusterRole>>,
    cancel: CancellationToken,
) {
    let api: Api<ClusterRole> = Api::all(client);
    let mut changes = roles.subscribe_as("clusterrole-aggregation").boxed();
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = resync.tick() => {}
            c = changes.next() => if c.is_none() { return },
        }
        tokio::time::sleep(SETTLE).await;
        while let Some(Some(_)) = futures::FutureExt::now_or_never(changes.next()) {}
        for (role, rules) in aggregate(&roles.store.state()) {
            let patch = json!({"rules": rules});
            if let Err(e) = api
                .patch(&role, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::warn!(role, error = %e, "cannot aggregate the rules of a ClusterRole");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, labels: serde_json::Value, rules: serde_json::Value) -> Arc<ClusterRole> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "labels": labels}, "rules": rules}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn aggregated_roles_gather_the_rules_of_the_roles_they_select() {
        let mut view: ClusterRole = serde_json::from_value(json!({"metadata": {"name": "view"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "view"}}]}}))
        .unwrap();
        let pods = json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]);
        let roles = vec![
            Arc::new(view.clone()),
            role("a", json!({"agg": "view"}), pods.clone()),
            role("b", json!({"agg": "view"}), pods.clone()),
            role(
                "c",
                json!({"agg": "edit"}),
                json!([{"verbs": ["delete"], "apiGroups": [""], "resources": ["pods"]}]),
            ),
        ];
        let out = aggregate(&roles);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "view");
        assert_eq!(out[0].1.len(), 1, "a rule held twice is gathered once");
        view.rules = Some(out[0].1.clone());
        let mut roles = roles;
        roles[0] = Arc::new(view);
        assert!(
            aggregate(&roles).is_empty(),
            "nothing to write once gathered"
        );
    }
}
