//! The request as the rest of the chain sees it: the URL and method parsed once into
//! kube-apiserver's `RequestInfo` (`staging/src/k8s.io/apiserver/pkg/endpoints/request/
//! requestinfo.go`): a resource request (verb, group, version, namespace, resource,
//! name, subresource) or a non-resource path with the method as its verb.

use std::collections::HashMap;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::Method;

use super::negotiate::query;

/// URL prefixes of API groups; `api` has no group part.
const API_PREFIXES: [&str; 2] = ["api", "apis"];
/// The namespace's own subresources (`/namespaces/{ns}/status`), not resources in it.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestInfo {
    /// Whether the path names an API resource (else it is a path like `/healthz`).
    pub is_resource_request: bool,
    pub path: String,
    /// Kubernetes' verb: get, list, watch, create, update, patch, delete,
    /// deletecollection, proxy; for non-resource paths the lowercased method.
    pub verb: String,
    pub api_group: String,
    pub api_version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub subresource: Option<String>,
    pub name: Option<String>,
    /// Whether `name` came from a list's `metadata.name` field selector, not the URL.
    pub name_by_selector: bool,
    /// What follows the subresource (a node proxy's path).
    pub rest: Vec<String>,
    /// The query, decoded.
    pub query: HashMap<String, String>,
}

impl RequestInfo {
    /// Parses a request line. Never fails: what cannot be a resource request is a
    /// non-resource one, which routing answers with 404 when nothing serves it.
    pub fn parse(method: &Method, uri: &http::Uri) -> Self {
        let path = uri.path().to_string();
        let query = query(uri);
        let non_resource = |path: String, query| Self {
            verb: method.as_str().to_ascii_lowercase(),
            path,
            query,
            ..Default::default()
        };
        let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
        if segs.len() < 3 || !API_PREFIXES.contains(&segs[0]) {
            return non_resource(path, query);
        }
        let mut parts = &segs[1..];
        let mut group = "";
        if segs[0] == "apis" {
            if parts.len() < 3 {
                return non_resource(path, query);
            }
            group = parts[0];
            parts = &parts[1..];
        }
        let version = parts[0];
        parts = &parts[1..];
        let mut verb = match *method {
            Method::POST => "create",
            Method::GET | Method::HEAD => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        };
        // The legacy `/watch/...` form.
        if parts.first() == Some(&"watch") && parts.len() > 1 {
            verb = "watch";
            parts = &parts[1..];
        }
        let mut namespace = None;
        if parts.first() == Some(&"namespaces") && parts.len() > 1 {
            namespace = Some(parts[1].to_string());
            if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
                parts = &parts[2..];
            }
        }
        let resource = parts.first().copied().unwrap_or_default();
        let name = parts.get(1).map(|n| n.to_string());
        let subresource = parts.get(2).map(|s| s.to_string());
        let rest = parts.iter().skip(3).map(|s| s.to_string()).collect();
        let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        let mut info = Self {
            is_resource_request: true,
            path,
            verb: verb.to_string(),
            api_group: group.to_string(),
            api_version: version.to_string(),
            namespace,
            resource: resource.to_string(),
            subresource,
            name,
            name_by_selector: false,
            rest,
            query,
        };
        match (info.verb.as_str(), info.name.is_some()) {
            ("get", false) => {
                info.verb = if watching { "watch" } else { "list" }.into();
                // A list or watch of one name by field selector is about that name
                // (so `resourceNames` rules apply to it), as in kube-apiserver.
                info.name = info
                    .query
                    .get("fieldSelector")
                    .and_then(|f| f.strip_prefix("metadata.name="))
                    .filter(|n| !n.is_empty() && !n.contains([',', '/', '=', '!']))
                    .map(str::to_string);
                info.name_by_selector = info.name.is_some();
            }
            // A watch of one object by its URL (kube-apiserver would answer a get).
            ("get", true) if watching && info.subresource.is_none() => info.verb = "watch".into(),
            ("delete", false) => info.verb = "deletecollection".into(),
            _ => {}
        }
        info
    }

    /// `deployments.apps` or `pods`, as Kubernetes names a resource in messages.
    pub fn qualified_resource(&self) -> String {
        if self.api_group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.api_group)
        }
    }

    /// The name given on the URL, or in a list's `metadata.name` field selector (what
    /// authorization sees).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The name given on the URL only (what the handlers serve).
    pub fn url_name(&self) -> Option<&str> {
        self.name.as_deref().filter(|_| !self.name_by_selector)
    }

    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub fn subresource(&self) -> Option<&str> {
        self.subresource.as_deref()
    }
}

/// The first layer: parses the request and hands its `RequestInfo` down.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let info = RequestInfo::parse(req.method(), req.uri());
    req.extensions_mut().insert(std::sync::Arc::new(info));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, uri: &str) -> RequestInfo {
        RequestInfo::parse(&method, &uri.parse().unwrap())
    }

    #[test]
    fn resource_requests_parse_as_kube_apiserver_parses_them() {
        let i = parse(Method::GET, "/api/v1/namespaces/default/pods/web");
        assert!(i.is_resource_request);
        assert_eq!(
            (
                i.verb.as_str(),
                i.api_group.as_str(),
                i.api_version.as_str(),
                i.namespace(),
                i.resource.as_str(),
                i.name()
            ),
            ("get", "", "v1", Some("default"), "pods", Some("web"))
        );
        let i = parse(Method::GET, "/apis/apps/v1/namespaces/default/deployments");
        assert_eq!((i.verb.as_str(), i.api_group.as_str()), ("list", "apps"));
        let i = parse(Method::GET, "/api/v1/pods?watch=true");
        assert_eq!((i.verb.as_str(), i.namespace()), ("watch", None));
        let i = parse(Method::GET, "/api/v1/watch/namespaces/default/pods");
        assert_eq!((i.verb.as_str(), i.resource.as_str()), ("watch", "pods"));
        let i = parse(Method::DELETE, "/api/v1/namespaces/default/pods");
        assert_eq!(i.verb, "deletecollection");
        let i = parse(Method::POST, "/api/v1/namespaces/default/pods/web/eviction");
        assert_eq!(
            (i.verb.as_str(), i.subresource()),
            ("create", Some("eviction"))
        );
        let i = parse(Method::GET, "/api/v1/nodes/n1/proxy/stats/summary");
        assert_eq!(
            (i.name(), i.subresource(), i.rest.join("/").as_str()),
            (Some("n1"), Some("proxy"), "stats/summary")
        );
    }

    #[test]
    fn a_namespace_is_its_own_namespace() {
        let i = parse(Method::GET, "/api/v1/namespaces/kube-system");
        assert_eq!(
            (i.resource.as_str(), i.name(), i.namespace()),
            ("namespaces", Some("kube-system"), Some("kube-system"))
        );
        let i = parse(Method::PUT, "/api/v1/namespaces/x/finalize");
        assert_eq!(
            (i.resource.as_str(), i.subresource()),
            ("namespaces", Some("finalize"))
        );
        let i = parse(Method::GET, "/api/v1/namespaces");
        assert_eq!((i.verb.as_str(), i.namespace()), ("list", None));
    }

    #[test]
    fn a_field_selected_name_is_the_requests_name() {
        let i = parse(
            Method::GET,
            "/api/v1/namespaces/default/pods?fieldSelector=metadata.name%3Dweb&watch=1",
        );
        assert_eq!((i.verb.as_str(), i.name()), ("watch", Some("web")));
        assert_eq!(i.url_name(), None);
        let i = parse(Method::GET, "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1");
        assert_eq!(i.name(), None);
    }

    #[test]
    fn discovery_and_health_are_non_resource_paths() {
        for p in ["/api", "/api/v1", "/apis/apps/v1", "/healthz", "/version"] {
            let i = parse(Method::GET, p);
            assert!(!i.is_resource_request, "{p}");
            assert_eq!(i.verb, "get");
        }
        assert_eq!(parse(Method::POST, "/tinykube/v1/join").verb, "post");
    }
}
