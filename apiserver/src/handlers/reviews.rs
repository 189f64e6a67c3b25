//! The reviews: questions asked by creating an object and answered in its status,
//! never stored. SelfSubjectAccessReview (`kubectl auth can-i`), SubjectAccessReview
//! and LocalSubjectAccessReview (may someone else?), SelfSubjectRulesReview
//! (`kubectl auth can-i --list`), SelfSubjectReview (`kubectl auth whoami`),
//! TokenReview (is this token good, and whose is it?).

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};
use tinykube_api::validation::FieldError;

use super::Call;
use crate::authn::UserInfo;
use crate::authz::Attributes;
use crate::error::ApiError;
use crate::registry::prepare::check_type;
use crate::request::negotiate::{Output, decode_object, read_body, respond};
use crate::state::Shared;

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn nonempty(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| !s.is_empty())
}

/// What `spec` (a SubjectAccessReviewSpec) asks `user` may do.
fn attributes<'a>(
    user: &'a UserInfo,
    spec: &'a Value,
    res: &crate::resources::ResourceInfo,
) -> Result<Attributes<'a>, ApiError> {
    let (ra, nra) = (&spec["resourceAttributes"], &spec["nonResourceAttributes"]);
    if ra.is_object() == nra.is_object() {
        return Err(ApiError::invalid(
            res,
            "",
            vec![FieldError::invalid(
                "spec.resourceAttributes",
                "null",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        ));
    }
    Ok(if ra.is_object() {
        Attributes {
            subresource: nonempty(&ra["subresource"]),
            ..Attributes::resource(
                user,
                text(&ra["verb"]),
                text(&ra["group"]),
                text(&ra["resource"]),
                nonempty(&ra["namespace"]),
                nonempty(&ra["name"]),
            )
        }
    } else {
        Attributes::path(user, text(&nra["verb"]), text(&nra["path"]))
    })
}

/// The answer to "may `user` do what `spec` says?", as a SubjectAccessReviewStatus:
/// kube-apiserver's reason is RBAC's source when RBAC allowed it, the authorizers'
/// reasons when none did.
fn access(
    shared: &Shared,
    user: &UserInfo,
    spec: &Value,
    res: &crate::resources::ResourceInfo,
) -> Result<Value, ApiError> {
    let a = attributes(user, spec, res)?;
    let e = crate::authz::explain::decision(&shared.authorizer, &a);
    let (allowed, reason) = match e.decided_by {
        // kube-apiserver gives no reason for system:masters or the node authorizer.
        Some("RBAC") | None => (e.allowed, e.reason),
        Some(_) => (true, String::new()),
    };
    let mut status = json!({"allowed": allowed});
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    Ok(status)
}

/// `POST /tinykube/v1/access` with a SubjectAccessReview: the decision explained (the
/// authorizer, the granting binding and rule, or the closest rules and why they missed),
/// for `tinykube ctl inspect access`.
pub async fn explain(shared: &Shared, headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let res = crate::resources::find("authorization.k8s.io", "subjectaccessreviews")
        .ok_or(ApiError::NoRoute)?;
    let obj = decode_object(headers, &read_body(body).await?)?;
    check_type(res, &obj)?;
    let user = subject(&obj["spec"], res)?;
    let a = attributes(&user, &obj["spec"], res)?;
    Ok(
        serde_json::to_value(crate::authz::explain::explain(&shared.authorizer, &a))
            .unwrap_or_default(),
    )
}

/// The user a SubjectAccessReview asks about.
fn subject(spec: &Value, res: &crate::resources::ResourceInfo) -> Result<UserInfo, ApiError> {
    let groups: Vec<String> = spec["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str().map(String::from))
        .collect();
    let name = text(&spec["user"]).to_string();
    if name.is_empty() && groups.is_empty() {
        return Err(ApiError::invalid(
            res,
            "",
            vec![FieldError::invalid(
                "spec.user",
                "",
                "at least one of user or group must be specified",
            )],
        ));
    }
    Ok(UserInfo {
        name,
        uid: text(&spec["uid"]).to_string(),
        groups,
    })
}

/// What `user` may do in `namespace`, as a SubjectRulesReviewStatus.
fn rules(shared: &Shared, user: &UserInfo, namespace: Option<&str>) -> Value {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in shared.authorizer.rbac.rules_for(user, namespace) {
        if let Some(urls) = r.non_resource_urls.filter(|u| !u.is_empty()) {
            non_resource_rules.push(json!({"verbs": r.verbs, "nonResourceURLs": urls}));
        } else {
            let mut rule = json!({"verbs": r.verbs, "apiGroups": r.api_groups.unwrap_or_default(),
                                  "resources": r.resources.unwrap_or_default()});
            if let Some(names) = r.resource_names.filter(|n| !n.is_empty()) {
                rule["resourceNames"] = json!(names);
            }
            resource_rules.push(rule);
        }
    }
    let mut status = json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules,
                            "incomplete": false});
    // What the node authorizer allows a kubelet is not written as rules.
    if user.node().is_some() {
        status["incomplete"] = json!(true);
        status["evaluationError"] = json!("node authorizer does not support user rule resolution");
    }
    status
}

fn user_info(user: &UserInfo) -> Value {
    let mut info = Map::new();
    info.insert("username".into(), json!(user.name));
    if !user.uid.is_empty() {
        info.insert("uid".into(), json!(user.uid));
    }
    info.insert("groups".into(), json!(user.groups));
    Value::Object(info)
}

/// A TokenReviewStatus: whether `spec.token` is good for `spec.audiences` (the API's
/// when none), and whose it is.
fn token_review(shared: &Shared, spec: &Value) -> Value {
    let token = spec["token"].as_str().unwrap_or_default();
    let audiences: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    let sa = &shared.service_accounts;
    let want = if audiences.is_empty() {
        sa.audiences.clone()
    } else {
        audiences.clone()
    };
    if !crate::serviceaccount::is_jwt(token) {
        return json!({"authenticated": false, "user": {},
                      "error": "[invalid bearer token, not a service account token]"});
    }
    match sa.verify(token, &want) {
        Ok(claims) => {
            let user = crate::authn::service_account_user(&claims);
            let mut info = user_info(&user);
            let mut extra = serde_json::Map::new();
            if let Some(p) = &claims.kubernetes.pod {
                extra.insert(
                    "authentication.kubernetes.io/pod-name".into(),
                    json!([p.name]),
                );
                extra.insert(
                    "authentication.kubernetes.io/pod-uid".into(),
                    json!([p.uid]),
                );
            }
            if !claims.jti.is_empty() {
                extra.insert(
                    "authentication.kubernetes.io/credential-id".into(),
                    json!([format!("JTI={}", claims.jti)]),
                );
            }
            info["extra"] = Value::Object(extra);
            let granted: Vec<&String> = claims.aud.iter().filter(|a| want.contains(a)).collect();
            json!({"authenticated": true, "user": info, "audiences": granted})
        }
        Err(e) => json!({"authenticated": false, "user": {}, "error": format!("[{e}]")}),
    }
}

pub async fn create(c: &Call<'_>, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let mut obj = decode_object(headers, &read_body(body).await?)?;
    check_type(c.res, &obj)?;
    let spec = obj["spec"].clone();
    let status = match c.res.kind {
        "SelfSubjectAccessReview" => access(c.shared, c.user, &spec, c.res)?,
        "SubjectAccessReview" => access(c.shared, &subject(&spec, c.res)?, &spec, c.res)?,
        "LocalSubjectAccessReview" => {
            let ns = spec["resourceAttributes"]["namespace"].as_str();
            if ns != c.ns {
                return Err(ApiError::BadRequest(format!(
                    "spec.resourceAttributes.namespace must match namespace: {}",
                    c.ns.unwrap_or_default()
                )));
            }
            access(c.shared, &subject(&spec, c.res)?, &spec, c.res)?
        }
        "SelfSubjectRulesReview" => {
            let ns = spec["namespace"].as_str().filter(|n| !n.is_empty());
            rules(c.shared, c.user, ns)
        }
        "SelfSubjectReview" => json!({"userInfo": user_info(c.user)}),
        "TokenReview" => token_review(c.shared, &spec),
        _ => return Err(ApiError::NoRoute),
    };
    obj["apiVersion"] = json!(c.res.api_version());
    obj["kind"] = json!(c.res.kind);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    obj["status"] = status;
    Ok(respond(StatusCode::CREATED, &obj, Output::Json, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::AUTHENTICATED;

    #[test]
    fn a_subject_needs_a_user_or_a_group() {
        let res = crate::resources::find("authorization.k8s.io", "subjectaccessreviews").unwrap();
        assert!(subject(&json!({}), res).is_err());
        let u = subject(&json!({"groups": ["devs"]}), res).unwrap();
        assert_eq!(u.groups, vec!["devs".to_string()]);
        assert!(
            !u.in_group(AUTHENTICATED),
            "a review asks about exactly these groups"
        );
    }
}
