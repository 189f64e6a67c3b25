//! Authorization: may this user do this? The authorizers are asked in kube-apiserver's
//! `--authorization-mode=Node,RBAC` order; the first that allows decides, and a request
//! none allows gets 403 with kube-apiserver's message and their reasons. Members of
//! `system:masters` are allowed everything before any authorizer is asked, as in
//! Kubernetes.

pub mod explain;
pub mod node;
pub mod rbac;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::authn::{MASTERS, UserInfo};
use crate::error::ApiError;
use crate::registry::Registry;
use crate::request::RequestInfo;

/// What a request wants to do, in Kubernetes' authorization terms
/// (`authorizer.AttributesRecord`).
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub user: &'a UserInfo,
    pub verb: &'a str,
    pub resource_request: bool,
    pub api_group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    /// The path of a non-resource request.
    pub path: &'a str,
}

impl<'a> Attributes<'a> {
    pub fn of(user: &'a UserInfo, info: &'a RequestInfo) -> Self {
        // Exec, attach and port-forward over a websocket start with a GET, but they
        // act in the pod: kube-apiserver (AuthorizePodWebsocketUpgradeCreatePermission)
        // checks `create` for them, as for the POST form.
        let verb = match (
            info.resource.as_str(),
            info.subresource(),
            info.verb.as_str(),
        ) {
            ("pods", Some("exec" | "attach" | "portforward"), "get") => "create",
            _ => info.verb.as_str(),
        };
        Self {
            user,
            verb,
            resource_request: info.is_resource_request,
            api_group: &info.api_group,
            resource: &info.resource,
            subresource: info.subresource(),
            namespace: info.namespace(),
            name: info.name(),
            path: &info.path,
        }
    }

    /// A request on `resource` in `api_group` (no subresource): what the checks made
    /// inside the server (impersonation, escalation, reviews) ask.
    pub fn resource(
        user: &'a UserInfo,
        verb: &'a str,
        api_group: &'a str,
        resource: &'a str,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Self {
        Self {
            user,
            verb,
            resource_request: true,
            api_group,
            resource,
            subresource: None,
            namespace,
            name,
            path: "",
        }
    }

    /// A request on the non-resource `path`.
    pub fn path(user: &'a UserInfo, verb: &'a str, path: &'a str) -> Self {
        Self {
            resource_request: false,
            path,
            ..Self::resource(user, verb, "", "", None, None)
        }
    }

    pub fn is_read(&self) -> bool {
        matches!(self.verb, "get" | "list" | "watch")
    }
}

/// One authorizer's answer.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Allow,
    /// Not allowed by this authorizer; the reason (possibly empty) joins the message.
    NoOpinion(String),
}

/// The chain of authorizers: the node authorizer, then RBAC.
pub struct Authorizer {
    pub node: node::NodeAuthorizer,
    pub rbac: rbac::RbacAuthorizer,
}

impl Authorizer {
    /// The authorizers over `registry` (the node authorizer reads pods from it).
    pub fn new(registry: Arc<Registry>) -> Self {
        Self {
            node: node::NodeAuthorizer::new(registry),
            rbac: rbac::RbacAuthorizer::default(),
        }
    }

    /// Whether `a` is allowed, and the authorizers' reasons when it is not.
    pub fn decide(&self, a: &Attributes<'_>) -> (bool, String) {
        if a.user.in_group(MASTERS) {
            return (true, String::new());
        }
        let mut reasons = Vec::new();
        for decision in [self.node.decide(a), self.rbac.decide(a)] {
            match decision {
                Decision::Allow => return (true, String::new()),
                Decision::NoOpinion(r) if !r.is_empty() => reasons.push(r),
                Decision::NoOpinion(_) => {}
            }
        }
        (false, reasons.join(", "))
    }

    /// `decide`, with a refusal as kube-apiserver's 403.
    pub fn authorize(&self, a: &Attributes<'_>) -> Result<(), ApiError> {
        match self.decide(a) {
            (true, _) => Ok(()),
            (false, reason) => Err(forbidden(a, &reason)),
        }
    }
}

/// kube-apiserver's 403 message (`forbiddenMessage` and the reasons after it).
pub fn forbidden(a: &Attributes<'_>, reason: &str) -> ApiError {
    let user = &a.user.name;
    let mut msg = if !a.resource_request {
        format!(
            "forbidden: User \"{user}\" cannot {} path \"{}\"",
            a.verb, a.path
        )
    } else {
        let qualified = if a.api_group.is_empty() {
            a.resource.to_string()
        } else {
            format!("{}.{}", a.resource, a.api_group)
        };
        let what = match a.name {
            Some(n) => format!("{qualified} \"{n}\""),
            None => qualified,
        };
        let resource = match a.subresource {
            Some(s) => format!("{}/{s}", a.resource),
            None => a.resource.to_string(),
        };
        let scope = match a.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        format!(
            "{what} is forbidden: User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            a.verb, a.api_group
        )
    };
    if !reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(reason);
    }
    ApiError::Forbidden(msg)
}

/// The authorization layer, after authentication and impersonation.
pub async fn layer(
    State(authorizer): State<Arc<Authorizer>>,
    req: Request,
    next: Next,
) -> Response {
    let (Some(user), Some(info)) = (
        req.extensions().get::<Arc<UserInfo>>(),
        req.extensions().get::<Arc<RequestInfo>>(),
    ) else {
        return ApiError::Unauthorized.into_response();
    };
    if let Err(e) = authorizer.authorize(&Attributes::of(user, info)) {
        return e.into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_messages_are_kube_apiservers() {
        let jane = UserInfo::new("jane", []);
        let info = RequestInfo::parse(
            &http::Method::GET,
            &"/api/v1/namespaces/default/pods".parse().unwrap(),
        );
        assert_eq!(
            forbidden(&Attributes::of(&jane, &info), "").to_string(),
            "pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let info = RequestInfo::parse(
            &http::Method::DELETE,
            &"/apis/apps/v1/namespaces/x/deployments/web"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            forbidden(&Attributes::of(&jane, &info), "no").to_string(),
            "deployments.apps \"web\" is forbidden: User \"jane\" cannot delete resource \"deployments\" in API group \"apps\" in the namespace \"x\": no"
        );
        let info = RequestInfo::parse(&http::Method::GET, &"/metrics".parse().unwrap());
        assert_eq!(
            forbidden(&Attributes::of(&jane, &info), "").to_string(),
            "forbidden: User \"jane\" cannot get path \"/metrics\""
        );
        let info = RequestInfo::parse(
            &http::Method::GET,
            &"/api/v1/namespaces/d/pods/p/exec".parse().unwrap(),
        );
        assert_eq!(Attributes::of(&jane, &info).verb, "create");
    }
}
