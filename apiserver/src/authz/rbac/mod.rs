//! The RBAC authorizer (`rbac.authorization.k8s.io/v1`): a request is allowed when a
//! rule of a role bound to the user (or one of its groups) allows it, cluster-wide
//! through a ClusterRoleBinding or in the request's namespace through a RoleBinding.
//! The objects come from the store through `index`; the rules are read by `rule`;
//! `bootstrap` holds the default roles; `escalation` keeps users from granting what
//! they do not hold.

pub mod bootstrap;
pub mod escalation;
pub mod index;
pub mod rule;

use std::sync::{Arc, RwLock};

use k8s_openapi::api::rbac::v1::PolicyRule;
use tokio_util::sync::CancellationToken;

use super::{Attributes, Decision};
use crate::authn::UserInfo;
use crate::store::{ListPage, Store, StoreError};
pub use index::Index;

/// RBAC's decision with its source.
pub enum Verdict {
    /// `source` describes the binding, its role and the subject, as Kubernetes does.
    Granted { source: String, rule: PolicyRule },
    /// Nothing allowed it; `reason` names the bindings whose role is missing, if any.
    Refused { reason: String },
}

/// RBAC's reason for a refusal: the bindings it could not follow (empty: none).
fn refusal(missing: &[index::RoleNotFound]) -> String {
    if missing.is_empty() {
        return String::new();
    }
    let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
    format!("RBAC: [{}]", list.join(", "))
}

#[derive(Default, Clone)]
pub struct RbacAuthorizer {
    index: Arc<RwLock<Index>>,
}

impl RbacAuthorizer {
    /// The first rule of the user's bindings that allows `a`, as `grant` makes it of
    /// the binding and the rule, or none and the bindings whose role is missing: the
    /// one walk behind the decision and its explanation.
    fn first_grant<T>(
        &self,
        a: &Attributes<'_>,
        grant: impl FnOnce(&index::Binding, &PolicyRule) -> T,
    ) -> (Option<T>, Vec<index::RoleNotFound>) {
        let index = self.index.read().expect("rbac index lock");
        let mut grant = Some(grant);
        let mut found = None;
        let mut missing = Vec::new();
        index.walk(a.user, a.namespace, |b, rules| {
            match rules {
                Ok(rules) => {
                    if let Some(r) = rules.iter().find(|r| rule::allows(r, a)) {
                        found = grant.take().map(|g| g(b, r));
                    }
                }
                Err(e) => missing.push(e),
            }
            found.is_some()
        });
        (found, missing)
    }

    pub fn decide(&self, a: &Attributes<'_>) -> Decision {
        match self.first_grant(a, |_, _| ()) {
            (Some(()), _) => Decision::Allow,
            (None, missing) => Decision::NoOpinion(refusal(&missing)),
        }
    }

    /// The decision with its source, as kube-apiserver's RBAC authorizer gives its
    /// reason (`RBAC: allowed by ...`): the granting binding and rule, or the reason.
    pub fn verdict(&self, a: &Attributes<'_>) -> Verdict {
        match self.first_grant(a, |b, r| (b.describe(a.user), r.clone())) {
            (Some((source, rule)), _) => Verdict::Granted { source, rule },
            (None, missing) => Verdict::Refused {
                reason: refusal(&missing),
            },
        }
    }

    /// Every rule that applies to `user` in `namespace` (cluster-wide ones included):
    /// what SelfSubjectRulesReview lists and what escalation checks compare against.
    pub fn rules_for(&self, user: &UserInfo, namespace: Option<&str>) -> Vec<PolicyRule> {
        let index = self.index.read().expect("rbac index lock");
        let mut out = Vec::new();
        index.walk(user, namespace, |_, rules| {
            if let Ok(r) = rules {
                out.extend(r.iter().cloned());
            }
            false
        });
        out
    }

    /// Applies one object to the index directly (benchmarks and tests; the server's
    /// index follows the store).
    pub fn apply(&self, key: &str, obj: Option<&serde_json::Value>) {
        self.index.write().expect("rbac index lock").apply(key, obj);
    }

    /// Runs `f` over the index (explanations read it whole).
    pub fn with_index<T>(&self, f: impl FnOnce(&Index) -> T) -> T {
        f(&self.index.read().expect("rbac index lock"))
    }

    /// Reads every RBAC object from the store; returns the revision to watch from.
    pub fn load(&self, store: &dyn Store) -> Result<u64, StoreError> {
        let mut fresh = Index::default();
        let mut after: Option<String> = None;
        let rev = loop {
            let ListPage {
                items,
                rev,
                next_key,
                ..
            } = store.list(index::KEY_PREFIX, after.as_deref(), 1000, None)?;
            for raw in items {
                let Ok(obj) = serde_json::from_slice::<serde_json::Value>(&raw) else {
                    continue;
                };
                fresh.apply(&key_of(&obj), Some(&obj));
            }
            match next_key {
                Some(k) => after = Some(k),
                None => break rev,
            }
        };
        *self.index.write().expect("rbac index lock") = fresh;
        Ok(rev)
    }

    /// Follows the store's changes to RBAC objects until cancelled; on a lost watch
    /// it reads everything again.
    pub async fn follow(self, store: Arc<dyn Store>, mut from: u64, cancel: CancellationToken) {
        loop {
            let mut rx = match store.watch(index::KEY_PREFIX, from) {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::warn!(error = %e, "RBAC watch failed; reading again");
                    match self.load(store.as_ref()) {
                        Ok(r) => from = r,
                        Err(e) => tracing::warn!(error = %e, "RBAC reload failed"),
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => continue,
                    }
                }
            };
            loop {
                let ev = tokio::select! {
                    _ = cancel.cancelled() => return,
                    ev = rx.recv() => ev,
                };
                match ev {
                    Some(Ok(ev)) => {
                        from = ev.rev;
                        let obj =
                            (ev.kind != crate::store::EventType::Deleted).then_some(&ev.object);
                        self.index
                            .write()
                            .expect("rbac index lock")
                            .apply(&ev.key, obj);
                    }
                    Some(Err(_)) | None => {
                        if let Ok(r) = self.load(store.as_ref()) {
                            from = r;
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// The storage key of a stored RBAC object, from its kind and metadata.
fn key_of(obj: &serde_json::Value) -> String {
    let plural = match obj["kind"].as_str().unwrap_or_default() {
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        _ => "",
    };
    format!(
        "{}{plural}/{}/{}",
        index::KEY_PREFIX,
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    )
}
