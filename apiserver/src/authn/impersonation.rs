//! Impersonation (`kubectl --as`, `--as-group`, `--as-uid`): the `Impersonate-*` headers
//! replace the authenticated user when that user may `impersonate` each of the names
//! asked for, as kube-apiserver's impersonation filter does; otherwise 403.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;

use super::{AUTHENTICATED, UserInfo};
use crate::authz::{Attributes, Authorizer};
use crate::error::ApiError;

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";

/// What the headers ask for; `None` when they ask for nothing.
fn requested(headers: &HeaderMap) -> Result<Option<(String, Vec<String>, String)>, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let user = values(USER).into_iter().next().unwrap_or_default();
    let groups = values(GROUP);
    let uid = values(UID).into_iter().next().unwrap_or_default();
    if user.is_empty() {
        if !groups.is_empty() || !uid.is_empty() {
            return Err(ApiError::BadRequest(
                "requested [Impersonate-Group Impersonate-Uid] without impersonating a user".into(),
            ));
        }
        return Ok(None);
    }
    Ok(Some((user, groups, uid)))
}

/// Checks that `by` may impersonate what is asked for and returns the user to act as.
pub fn impersonate(
    authorizer: &Authorizer,
    by: &UserInfo,
    headers: &HeaderMap,
) -> Result<Option<UserInfo>, ApiError> {
    let Some((name, groups, uid)) = requested(headers)? else {
        return Ok(None);
    };
    let check = |group: &'static str, resource: &'static str, ns: Option<&str>, n: &str| {
        authorizer.authorize(&Attributes::resource(
            by,
            "impersonate",
            group,
            resource,
            ns,
            Some(n),
        ))
    };
    // A service account is impersonated through its own resource, as in Kubernetes.
    match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, sa)) => check("", "serviceaccounts", Some(ns), sa)?,
        None => check("", "users", None, &name)?,
    }
    for g in &groups {
        check("", "groups", None, g)?;
    }
    if !uid.is_empty() {
        check("authentication.k8s.io", "uids", None, &uid)?;
    }
    let mut user = if name == super::ANONYMOUS {
        UserInfo {
            name,
            uid: String::new(),
            groups,
        }
    } else {
        UserInfo::new(name, groups)
    };
    if user.name != super::ANONYMOUS && !user.in_group(AUTHENTICATED) {
        user.groups.push(AUTHENTICATED.into());
    }
    user.uid = uid;
    Ok(Some(user))
}

/// The impersonation layer, after authentication.
pub async fn layer(
    State(authorizer): State<Arc<Authorizer>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(by) = req.extensions().get::<Arc<UserInfo>>().cloned() else {
        return ApiError::Unauthorized.into_response();
    };
    match impersonate(&authorizer, &by, req.headers()) {
        Ok(Some(user)) => {
            req.extensions_mut().insert(Arc::new(user));
        }
        Ok(None) => {}
        Err(e) => return e.into_response(),
    }
    next.run(req).await
}
