//! Service-account tokens over the API: the TokenRequest subresource
//! (`POST .../serviceaccounts/<name>/token`, what `kubectl create token` and the
//! kubelet call).

use serde_json::{Value, json};
use tinykube_api::validation::FieldError;

use super::Call;
use crate::error::ApiError;
use crate::registry::prepare::check_type;
use crate::resources::{self, ResourceInfo};
use crate::serviceaccount::{MAX_EXPIRATION, MIN_EXPIRATION, Ref, Request};
use crate::state::Shared;

/// kube's default when a TokenRequest names no lifetime: an hour.
const DEFAULT_EXPIRATION: i64 = 3600;

fn token_requests() -> &'static ResourceInfo {
    static TOKEN_REQUEST: ResourceInfo = ResourceInfo {
        group: "authentication.k8s.io",
        version: "v1",
        kind: "TokenRequest",
        plural: "tokenrequests",
        singular: "tokenrequest",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
    };
    &TOKEN_REQUEST
}

fn stored_ref(shared: &Shared, plural: &str, ns: Option<&str>, name: &str) -> Option<Ref> {
    let res = resources::find("", plural)?;
    let obj = shared.registry.get(res, ns, name).ok()?.object;
    Some(Ref {
        name: name.to_string(),
        uid: obj["metadata"]["uid"].as_str()?.to_string(),
    })
}

/// What a token is bound to: at most one of a pod, a secret, a node.
#[derive(Default)]
struct BoundTo {
    pod: Option<Ref>,
    secret: Option<Ref>,
    node: Option<Ref>,
}

/// The object a request binds its token to, as it is stored now; a uid in the request
/// must be that object's.
fn bound(shared: &Shared, ns: &str, spec: &Value) -> Result<BoundTo, ApiError> {
    let b = &spec["boundObjectRef"];
    if !b.is_object() {
        return Ok(BoundTo::default());
    }
    let kind = b["kind"].as_str().unwrap_or_default();
    let name = b["name"].as_str().unwrap_or_default();
    let (plural, scope) = match kind {
        "Pod" => ("pods", Some(ns)),
        "Secret" => ("secrets", Some(ns)),
        "Node" => ("nodes", None),
        other => {
            return Err(ApiError::invalid(
                token_requests(),
                "",
                vec![FieldError::not_supported(
                    "spec.boundObjectRef.kind",
                    other,
                    &["Pod", "Secret", "Node"],
                )],
            ));
        }
    };
    let res = resources::find("", plural).expect("served");
    let found =
        stored_ref(shared, plural, scope, name).ok_or_else(|| ApiError::not_found(res, name))?;
    if let Some(uid) = b["uid"].as_str().filter(|u| !u.is_empty())
        && uid != found.uid
    {
        return Err(ApiError::Conflict {
            resource: plural.into(),
            group: String::new(),
            name: name.into(),
            detail: format!(
                "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
            ),
        });
    }
    let mut to = BoundTo::default();
    match kind {
        "Pod" => to.pod = Some(found),
        "Secret" => to.secret = Some(found),
        _ => to.node = Some(found),
    }
    Ok(to)
}

/// A kubelet may ask only for tokens bound to a pod on its node that runs as this
/// account (NodeRestriction's rule for `serviceaccounts/token`).
fn node_may_ask(c: &Call<'_>, ns: &str, account: &str, spec: &Value) -> Result<(), ApiError> {
    let Some(node) = c.user.node() else {
        return Ok(());
    };
    let refused = |why: &str| {
        ApiError::Forbidden(format!(
            "serviceaccounts \"{account}\" is forbidden: node \"{node}\" {why}"
        ))
    };
    let b = &spec["boundObjectRef"];
    if b["kind"] != "Pod" {
        return Err(refused("requested token not bound to a pod"));
    }
    let pods = resources::find("", "pods").expect("served");
    let pod = c
        .shared
        .registry
        .get(pods, Some(ns), b["name"].as_str().unwrap_or_default())
        .map_err(|_| refused("requested token bound to a pod that does not exist"))?
        .object;
    if pod["spec"]["nodeName"] != node {
        return Err(refused("can only create tokens for pods running on it"));
    }
    if pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default")
        != account
    {
        return Err(refused(
            "can only create tokens for the service account of the pod",
        ));
    }
    Ok(())
}

/// `POST .../serviceaccounts/<name>/token`: a signed token for the account.
pub fn request(c: &Call<'_>, ns: &str, name: &str, mut obj: Value) -> Result<Value, ApiError> {
    check_type(token_requests(), &obj)?;
    let spec = obj["spec"].clone();
    let seconds = spec["expirationSeconds"]
        .as_i64()
        .unwrap_or(DEFAULT_EXPIRATION);
    let mut errs = Vec::new();
    if seconds < MIN_EXPIRATION {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            seconds,
            "may not specify a duration less than 10 minutes",
        ));
    } else if seconds > MAX_EXPIRATION {
        errs.push(FieldError::invalid(
            "spec.expirationSeconds",
            seconds,
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(token_requests(), "", errs));
    }
    node_may_ask(c, ns, name, &spec)?;
    let account = stored_ref(c.shared, "serviceaccounts", Some(ns), name)
        .ok_or_else(|| ApiError::not_found(c.res, name))?;
    let sa = &c.shared.service_accounts;
    let audiences: Vec<String> = match spec["audiences"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => sa.audiences.clone(),
    };
    let BoundTo { pod, secret, node } = bound(c.shared, ns, &spec)?;
    let (token, exp) = sa
        .issue(Request {
            namespace: ns,
            account,
            audiences: audiences.clone(),
            seconds,
            pod,
            secret,
            node,
        })
        .map_err(|e| ApiError::Internal(format!("cannot sign the token: {e}")))?;
    obj["apiVersion"] = json!("authentication.k8s.io/v1");
    obj["kind"] = json!("TokenRequest");
    obj["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": null});
    obj["spec"]["audiences"] = json!(audiences);
    obj["spec"]["expirationSeconds"] = json!(seconds);
    let expiry = jiff::Timestamp::from_second(exp).unwrap_or(jiff::Timestamp::MAX);
    obj["status"] = json!({"token": token,
        "expirationTimestamp": tinykube_api::format::rfc3339(expiry)});
    Ok(obj)
}
