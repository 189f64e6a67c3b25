//! The verbs, last in the chain: a request that got this far is authenticated and
//! authorized. Non-resource paths (`paths`), the kubelets' subresources and metrics,
//! then the resources' verbs by family: reads (`read`), writes (`write`), deletes
//! (`delete`) and watches (`watch`).

mod delete;
mod paths;
mod read;
mod reviews;
mod tokens;
mod watch;
mod write;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::Value;

use crate::authn::UserInfo;
use crate::error::ApiError;
use crate::kubelets;
use crate::request::RequestInfo;
use crate::request::negotiate::{Output, respond};
use crate::request::table::IncludeObject;
use crate::resources::{self, ResourceInfo};
use crate::state::Shared;

pub async fn serve(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    match route(&shared, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn ok(v: Value) -> Result<Response, ApiError> {
    Ok(respond(StatusCode::OK, &v, Output::Json, &[]))
}

/// One request to a resource, resolved: what each verb's handler is given.
struct Call<'a> {
    shared: &'a Arc<Shared>,
    info: &'a RequestInfo,
    user: &'a UserInfo,
    res: &'static ResourceInfo,
    /// The namespace, for namespaced resources only.
    ns: Option<&'a str>,
    name: Option<&'a str>,
    sub: Option<&'a str>,
    output: Output,
    include: IncludeObject,
}

async fn route(shared: &Arc<Shared>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let info = parts
        .extensions
        .get::<Arc<RequestInfo>>()
        .cloned()
        .ok_or(ApiError::NoRoute)?;
    let user = parts
        .extensions
        .get::<Arc<UserInfo>>()
        .cloned()
        .ok_or(ApiError::Unauthorized)?;
    if !info.is_resource_request {
        return paths::serve(shared, &info, parts, body).await;
    }
    let get = parts.method == Method::GET;
    match (
        info.api_group.as_str(),
        info.resource.as_str(),
        info.subresource(),
    ) {
        (kubelets::metrics::GROUP, ..) if info.api_version == kubelets::metrics::VERSION => {
            return ok(kubelets::metrics::serve(shared, &info).await?);
        }
        ("", "nodes", Some("proxy")) if get => {
            let name = info.url_name().ok_or(ApiError::NoRoute)?;
            let path = info.rest.join("/");
            return kubelets::proxy::proxy_node(shared, parts, body, name, &path).await;
        }
        ("", "pods", Some(sub @ ("log" | "exec" | "attach")))
            if get || parts.method == Method::POST =>
        {
            if sub == "attach" {
                return Err(ApiError::BadRequest(
                    "attach is not supported; use exec".into(),
                ));
            }
            let (Some(ns), Some(name)) = (info.namespace(), info.url_name()) else {
                return Err(ApiError::NoRoute);
            };
            return kubelets::proxy::proxy(shared, parts, body, ns, name, sub).await;
        }
        _ => {}
    }
    resource(shared, &info, &user, parts, body).await
}

fn method_not_allowed(method: &Method, info: &RequestInfo) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "the server does not allow this method on the requested resource ({method} {})",
        info.path
    ))
}

/// The served resource a request names, or 404.
fn resolve(info: &RequestInfo) -> Result<&'static ResourceInfo, ApiError> {
    let res = resources::find(&info.api_group, &info.resource)
        .filter(|r| r.version == info.api_version)
        .ok_or(ApiError::NoRoute)?;
    // A cluster-scoped resource has no namespace in its URL (a namespace is its own).
    if !res.namespaced && info.namespace.is_some() && res.plural != "namespaces" {
        return Err(ApiError::NoRoute);
    }
    if let Some(sub) = info.subresource()
        && (!res.subresources.contains(&sub) || !info.rest.is_empty())
    {
        return Err(ApiError::NoRoute);
    }
    Ok(res)
}

async fn resource(
    shared: &Arc<Shared>,
    info: &RequestInfo,
    user: &UserInfo,
    parts: Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let res = resolve(info)?;
    let ns = if res.namespaced {
        info.namespace()
    } else {
        None
    };
    let name = info.url_name();
    let sub = info.subresource();
    // The verbs each method may have here.
    let allowed = match (&parts.method, name, info.verb.as_str()) {
        (&Method::GET, ..) => true,
        (&Method::POST, None, _) => sub.is_none(),
        (&Method::POST, Some(_), _) => matches!(sub, Some("binding" | "eviction" | "token")),
        (&Method::PUT | &Method::PATCH | &Method::DELETE, Some(_), _) => true,
        (&Method::DELETE, None, "deletecollection") => sub.is_none(),
        _ => false,
    };
    if !allowed {
        return Err(method_not_allowed(&parts.method, info));
    }
    if res.namespaced && ns.is_none() && !matches!(info.verb.as_str(), "list" | "watch") {
        return Err(ApiError::NoRoute);
    }
    let call = Call {
        shared,
        info,
        user,
        res,
        ns,
        name,
        sub,
        output: crate::request::negotiate::negotiate(&parts.headers)?,
        include: IncludeObject::parse(info.query.get("includeObject").map(String::as_str)),
    };
    if res.is_review() {
        if info.verb != "create" || name.is_some() {
            return Err(method_not_allowed(&parts.method, info));
        }
        return reviews::create(&call, &parts.headers, body).await;
    }
    match info.verb.as_str() {
        "watch" => watch::serve_watch(&call),
        "list" => read::list(&call),
        "get" => read::get(&call),
        "create" => write::create(&call, &parts.headers, body).await,
        "update" => write::update(&call, &parts.headers, body).await,
        "patch" => write::patch(&call, &parts.headers, body).await,
        "delete" => delete::delete(&call, &parts.headers, body).await,
        "deletecollection" => delete::delete_collection(&call, &parts.headers, body).await,
        _ => Err(ApiError::NoRoute),
    }
}
