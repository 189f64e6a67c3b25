//! Escalation prevention, as Kubernetes' RBAC storage applies it: a user may write a
//! Role or ClusterRole only with rules it already holds (or with `escalate` on it), and
//! a binding only to a role whose rules it holds (or with `bind` on that role).
//! `system:masters` may do anything.

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use serde_json::Value;

pub use super::index::GROUP;
use super::rule;
use crate::authn::{MASTERS, UserInfo};
use crate::authz::{Attributes, Authorizer};
use crate::error::ApiError;
use crate::resources::ResourceInfo;

/// Whether `user` may `verb` the RBAC resource `resource` named `name` in `namespace`.
fn may(
    authorizer: &Authorizer,
    user: &UserInfo,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
    name: &str,
) -> bool {
    let a = Attributes::resource(user, verb, GROUP, resource, namespace, Some(name));
    authorizer.authorize(&a).is_ok()
}

fn refused(res: &ResourceInfo, name: &str, user: &UserInfo, missing: &[rule::Atom]) -> ApiError {
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    let lines: Vec<String> = missing.iter().map(ToString::to_string).collect();
    ApiError::Forbidden(format!(
        "{} \"{name}\" is forbidden: user \"{}\" (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
        res.qualified(),
        user.name,
        groups.join(" "),
        lines.join("\n")
    ))
}

/// Checks a write of the RBAC object `obj` (of `res`, in `namespace`) by `user`.
pub fn check(
    authorizer: &Authorizer,
    user: &UserInfo,
    res: &ResourceInfo,
    namespace: Option<&str>,
    obj: &Value,
) -> Result<(), ApiError> {
    if user.in_group(MASTERS) || res.group != GROUP {
        return Ok(());
    }
    let ns = if res.namespaced { namespace } else { None };
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let wanted: Vec<PolicyRule> = match res.plural {
        "roles" | "clusterroles" => {
            if may(authorizer, user, "escalate", res.plural, ns, name) {
                return Ok(());
            }
            serde_json::from_value(obj["rules"].clone()).unwrap_or_default()
        }
        "rolebindings" | "clusterrolebindings" => {
            let Ok(role) = serde_json::from_value::<RoleRef>(obj["roleRef"].clone()) else {
                // Validation answers a binding without a roleRef.
                return Ok(());
            };
            let plural = if role.kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            if may(authorizer, user, "bind", plural, ns, &role.name) {
                return Ok(());
            }
            let rules = authorizer.rbac.with_index(|ix| match role.kind.as_str() {
                "Role" => ns.and_then(|ns| ix.role(ns, &role.name)),
                _ => ix.cluster_role(&role.name),
            });
            match rules {
                Some(r) => r.as_ref().clone(),
                None => {
                    return Err(ApiError::Forbidden(format!(
                        "{} \"{name}\" is forbidden: user \"{}\" may not bind {} \"{}\": it does not exist and the user has no bind permission on it",
                        res.qualified(),
                        user.name,
                        role.kind.to_lowercase(),
                        role.name
                    )));
                }
            }
        }
        _ => return Ok(()),
    };
    let held = authorizer.rbac.rules_for(user, ns);
    let missing = rule::uncovered(&held, &wanted);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(refused(res, name, user, &missing))
    }
}
