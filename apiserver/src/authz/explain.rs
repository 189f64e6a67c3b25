//! Why a request is allowed or refused, for `tinykube ctl inspect access`: the
//! authorizer that decided, and for RBAC the binding, role and rule that granted it, or
//! the rules of the subject's bindings that came closest and what in each did not match
//! (the namespace, verb, API group, resource or name). The same index and rule checks
//! as the decision itself, so the explanation cannot disagree with it.

use serde::Serialize;

use super::rbac::{Index, Verdict, rule};
use super::{Attributes, Authorizer, Decision};
use crate::authn::MASTERS;

/// Where an explanation is asked for, with a SubjectAccessReview (authorized as a
/// path, so only those with `post` on it, as `cluster-admin`, may see others' rights).
pub const ACCESS_PATH: &str = "/tinykube/v1/access";

/// How many near misses an explanation lists.
const NEAR_MISSES: usize = 3;

/// A rule of one of the subject's bindings, and why it does or does not apply.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleMatch {
    /// The binding, its role and the subject it names, as RBAC describes a source.
    pub source: String,
    /// The rule as Kubernetes prints one.
    pub rule: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mismatches: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub allowed: bool,
    /// `system:masters`, `Node` or `RBAC`; none when nothing allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<&'static str>,
    /// What the authorizers said (the SubjectAccessReview's reason).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granted_by: Option<RuleMatch>,
    /// The subject's rules that came closest, fewest mismatches first.
    pub near_misses: Vec<RuleMatch>,
    /// Bindings of the subject whose role does not exist.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub broken_bindings: Vec<String>,
}

/// Why the namespace of the binding that holds a rule keeps it from `a`, if it does.
fn namespace_mismatch(binding_ns: Option<&str>, a: &Attributes<'_>) -> Option<String> {
    let ns = binding_ns?;
    match a.namespace {
        Some(want) if want == ns => None,
        Some(want) => Some(format!(
            "the RoleBinding grants in namespace {ns:?}, the request is in {want:?}"
        )),
        None => Some(format!(
            "a RoleBinding grants only in its namespace ({ns:?}), the request is at the cluster scope"
        )),
    }
}

/// The subject's rules that did not allow `a`, closest first.
fn near_misses(index: &Index, a: &Attributes<'_>, broken: &mut Vec<String>) -> Vec<RuleMatch> {
    let mut out: Vec<RuleMatch> = Vec::new();
    index.walk_everywhere(a.user, |b, rules| {
        let rules = match rules {
            Ok(r) => r,
            Err(e) => {
                broken.push(format!("{}: {e}", b.describe(a.user)));
                return;
            }
        };
        // A RoleBinding never grants a path.
        if b.namespace.is_some() && !a.resource_request {
            return;
        }
        for r in rules.iter().filter(|r| rule::same_sort(r, a)) {
            let missed = rule::mismatches(r, a);
            // A rule wrong in everything it says (the verb and what it is about) is
            // not close: a resource rule missing verb, group and resource, a path
            // rule missing verb and path.
            if missed.len() >= if a.resource_request { 3 } else { 2 } {
                continue;
            }
            let mut why: Vec<String> = namespace_mismatch(b.namespace.as_deref(), a)
                .into_iter()
                .collect();
            why.extend(missed);
            if !why.is_empty() {
                out.push(RuleMatch {
                    source: b.describe(a.user),
                    rule: rule::compact(r),
                    mismatches: why,
                });
            }
        }
    });
    // A stable sort: among equally close rules, the walk's order (cluster-wide first).
    out.sort_by_key(|m| m.mismatches.len());
    out.truncate(NEAR_MISSES);
    out
}

/// The authorizers' decision on `a` and who made it, in kube-apiserver's order
/// (`system:masters`, then Node, then RBAC), without the near misses: what a
/// SubjectAccessReview answers. (`Authorizer::decide` is the same order without the
/// words, for the request path.)
pub fn decision(authorizer: &Authorizer, a: &Attributes<'_>) -> Explanation {
    let mut e = Explanation {
        allowed: true,
        decided_by: None,
        reason: String::new(),
        granted_by: None,
        near_misses: Vec::new(),
        broken_bindings: Vec::new(),
    };
    if a.user.in_group(MASTERS) {
        e.decided_by = Some(MASTERS);
        e.reason = format!("the group {MASTERS} may do everything, before any authorizer is asked");
        return e;
    }
    let node_reason = match authorizer.node.decide(a) {
        Decision::Allow => {
            e.decided_by = Some("Node");
            e.reason = "the node authorizer allows a kubelet this".into();
            return e;
        }
        Decision::NoOpinion(r) => r,
    };
    match authorizer.rbac.verdict(a) {
        Verdict::Granted { source, rule } => {
            e.decided_by = Some("RBAC");
            e.reason = format!("RBAC: allowed by {source}");
            e.granted_by = Some(RuleMatch {
                source,
                rule: rule::compact(&rule),
                mismatches: Vec::new(),
            });
        }
        Verdict::Refused { reason } => {
            e.allowed = false;
            let reasons: Vec<String> = [node_reason, reason]
                .into_iter()
                .filter(|r| !r.is_empty())
                .collect();
            e.reason = reasons.join(", ");
        }
    }
    e
}

/// The decision on `a` explained: `decision`, and for a refusal the subject's closest
/// rules with what missed in each.
pub fn explain(authorizer: &Authorizer, a: &Attributes<'_>) -> Explanation {
    let mut e = decision(authorizer, a);
    if !e.allowed {
        e.near_misses = authorizer
            .rbac
            .with_index(|index| near_misses(index, a, &mut e.broken_bindings));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::UserInfo;
    use serde_json::json;

    fn rbac() -> super::super::rbac::RbacAuthorizer {
        let rbac = super::super::rbac::RbacAuthorizer::default();
        rbac.apply(
            "rbac.authorization.k8s.io/roles/dev/reader",
            Some(
                &json!({"kind": "Role", "metadata": {"name": "reader", "namespace": "dev"},
                "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
            ),
        );
        rbac.apply(
            "rbac.authorization.k8s.io/rolebindings/dev/read",
            Some(&json!({"kind": "RoleBinding", "metadata": {"name": "read", "namespace": "dev"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                "subjects": [{"kind": "User", "name": "jane"}]})),
        );
        rbac.apply(
            "rbac.authorization.k8s.io/rolebindings/dev/gone",
            Some(&json!({"kind": "RoleBinding", "metadata": {"name": "gone", "namespace": "dev"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "missing"},
                "subjects": [{"kind": "User", "name": "jane"}]})),
        );
        rbac
    }

    fn near(
        rbac: &super::super::rbac::RbacAuthorizer,
        a: &Attributes<'_>,
    ) -> (Vec<RuleMatch>, Vec<String>) {
        let mut broken = Vec::new();
        let misses = rbac.with_index(|ix| near_misses(ix, a, &mut broken));
        (misses, broken)
    }

    #[test]
    fn the_grant_and_the_near_misses_name_binding_role_and_rule() {
        let rbac = rbac();
        let jane = UserInfo::new("jane", []);
        let list = Attributes::resource(&jane, "list", "", "pods", Some("dev"), None);
        let Verdict::Granted { source, rule: r } = rbac.verdict(&list) else {
            panic!("jane may list pods in dev");
        };
        assert_eq!(
            source,
            r#"RoleBinding "read/dev" of Role "reader" to User "jane""#
        );
        assert_eq!(
            rule::compact(&r),
            r#"{APIGroups:[""], Resources:["pods"], Verbs:["get" "list"]}"#
        );

        let delete = Attributes::resource(&jane, "delete", "", "pods", Some("dev"), None);
        assert!(matches!(rbac.verdict(&delete), Verdict::Refused { .. }));
        let (misses, broken) = near(&rbac, &delete);
        assert_eq!(misses.len(), 1);
        assert_eq!(
            misses[0].mismatches,
            [r#"verb "delete" is not in the rule's verbs ["get" "list"]"#]
        );
        assert_eq!(
            broken,
            [
                r#"RoleBinding "gone/dev" of Role "missing" to User "jane": role.rbac.authorization.k8s.io "missing" not found"#
            ]
        );

        let elsewhere = Attributes::resource(&jane, "list", "", "pods", Some("prod"), None);
        let (misses, _) = near(&rbac, &elsewhere);
        assert_eq!(
            misses[0].mismatches,
            [r#"the RoleBinding grants in namespace "dev", the request is in "prod""#]
        );

        let secrets = Attributes::resource(&jane, "get", "", "secrets", Some("prod"), None);
        let (misses, _) = near(&rbac, &secrets);
        assert_eq!(misses[0].mismatches.len(), 2, "{:?}", misses[0].mismatches);
        let nothing_alike =
            Attributes::resource(&jane, "create", "apps", "deployments", Some("dev"), None);
        let (misses, _) = near(&rbac, &nothing_alike);
        assert!(
            misses.is_empty(),
            "a rule wrong in everything is not close: {misses:?}"
        );
    }
}
