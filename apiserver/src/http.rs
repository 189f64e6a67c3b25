//! HTTP: routing of Kubernetes URLs, authentication, body decoding, content negotiation
//! (JSON, YAML, Table, PartialObjectMetadata) and watch streams.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::auth::{self, Attributes, Tokens};
use crate::discovery;
use crate::error::ApiError;
use crate::patch::PatchType;
use crate::registry::{self, DeleteOptions, ListOptions, Registry, WriteOptions};
use crate::resources::{self, ResourceInfo};
use crate::strategy::FieldValidation;
use crate::table::{self, IncludeObject};

/// Kubernetes' limit on request bodies.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct Shared {
    pub registry: Arc<Registry>,
    pub tokens: Tokens,
    pub advertise: String,
    pub bookmark_interval: Duration,
    pub pki: Arc<crate::tls::Pki>,
    /// TLS to kubelets, trusting the cluster CA only.
    pub kubelet_tls: tokio_rustls::TlsConnector,
    /// The kubelets' resource usage summaries, kept a few seconds for the metrics API.
    pub usage: crate::resource_metrics::Cache,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Output {
    Json,
    Yaml,
    Table(&'static str),
    Metadata,
}

fn negotiate(headers: &HeaderMap) -> Result<Output, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.trim().is_empty() {
        return Ok(Output::Json);
    }
    for entry in accept.split(',') {
        let mut parts = entry.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let params: HashMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        match (media, params.get("as").copied()) {
            ("application/json" | "*/*" | "application/*", Some("Table"))
                if params.get("g") == Some(&"meta.k8s.io") =>
            {
                return Ok(Output::Table(if params.get("v") == Some(&"v1beta1") {
                    "meta.k8s.io/v1beta1"
                } else {
                    "meta.k8s.io/v1"
                }));
            }
            ("application/json", Some("PartialObjectMetadata" | "PartialObjectMetadataList")) => {
                return Ok(Output::Metadata);
            }
            ("application/json" | "*/*" | "application/*", None) => return Ok(Output::Json),
            ("application/yaml", None) => return Ok(Output::Yaml),
            _ => {}
        }
    }
    Err(ApiError::NotAcceptable(format!(
        "only the following media types are accepted: application/json, application/yaml (got {accept})"
    )))
}

pub(crate) fn respond(
    code: StatusCode,
    body: &Value,
    output: Output,
    warnings: &[String],
) -> Response {
    let (bytes, ct) = match output {
        Output::Yaml => (
            serde_saphyr::to_string(body)
                .unwrap_or_default()
                .into_bytes(),
            "application/yaml",
        ),
        _ => (
            serde_json::to_vec(body).expect("json values serialize"),
            "application/json",
        ),
    };
    let mut resp = (code, [(header::CONTENT_TYPE, ct)], bytes).into_response();
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - {:?}", w)) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// Shapes one object (or list) for the negotiated output.
pub(crate) fn present(
    res: &ResourceInfo,
    body: Value,
    output: Output,
    include: IncludeObject,
) -> Value {
    match output {
        Output::Table(api_version) => {
            let (items, meta) = match body.get("items") {
                Some(Value::Array(items)) => (items.clone(), body["metadata"].clone()),
                _ => (
                    vec![body.clone()],
                    json!({"resourceVersion": body["metadata"]["resourceVersion"]}),
                ),
            };
            let mut t = table::table(res, &items, include, true, meta);
            t["apiVersion"] = json!(api_version);
            t
        }
        Output::Metadata => match body.get("items") {
            Some(Value::Array(items)) => json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": body["metadata"],
                "items": items.iter().map(partial).collect::<Vec<_>>(),
            }),
            _ => partial(&body),
        },
        _ => body,
    }
}

pub(crate) fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
}

fn query(uri: &http::Uri) -> HashMap<String, String> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

/// Who is at the other end of the connection a request came on: the verified client
/// certificate, if any, and the address.
#[derive(Clone, Default)]
pub struct Peer {
    pub identity: Option<tinykube_api::pki::Identity>,
    pub addr: Option<std::net::IpAddr>,
}

fn stored_pod(shared: &Shared, ns: Option<&str>, name: Option<&str>) -> Result<Value, ApiError> {
    let pods = resources::find("", "pods").expect("pods are served");
    let name = name.ok_or(ApiError::NoRoute)?;
    Ok(shared.registry.get(pods, ns, name)?.object)
}

/// Signs a joining node's certificate request: `{"nodeName", "csr"}` in,
/// `{"certificate", "ca"}` out.
fn join(shared: &Shared, req: &Value, from: Option<std::net::IpAddr>) -> Result<Value, ApiError> {
    let name = req["nodeName"].as_str().unwrap_or_default();
    let mut causes = tinykube_api::validation::dns1123_subdomain(name);
    if name.is_empty() {
        causes = vec!["Required value".into()];
    }
    if let Some(c) = causes.first() {
        return Err(ApiError::BadRequest(format!(
            "nodeName {name:?} is not a valid node name: {c}"
        )));
    }
    name_is_free(shared, name, from)?;
    let csr = req["csr"].as_str().unwrap_or_default();
    let cert = shared.pki.sign_node_request(name, csr).map_err(|e| {
        ApiError::BadRequest(format!(
            "csr is not a certificate request: {}",
            crate::error::error_chain(&e)
        ))
    })?;
    tracing::info!(node = name, "node joined: client certificate issued");
    Ok(json!({"certificate": cert, "ca": shared.pki.ca_pem}))
}

/// A node name already registered belongs to the machine at its address: another
/// machine holding the join token cannot take it over (k3s guards the same with node
/// passwords). The master's own processes (loopback) are trusted.
fn name_is_free(
    shared: &Shared,
    name: &str,
    from: Option<std::net::IpAddr>,
) -> Result<(), ApiError> {
    let Some(from) = from.filter(|a| !a.is_loopback()) else {
        return Ok(());
    };
    let nodes = resources::find("", "nodes").expect("nodes are served");
    let Ok(node) = shared.registry.get(nodes, None, name) else {
        return Ok(());
    };
    let addresses: Vec<String> = node.object["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "InternalIP")
        .filter_map(|a| a["address"].as_str().map(String::from))
        .collect();
    if addresses.is_empty() || addresses.iter().any(|a| a == &from.to_string()) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "node {name:?} is already registered at {}; a machine at {from} cannot join under its name: give it another --node-name, or remove the old node first (kubectl delete node {name})",
        addresses.join(", ")
    )))
}

pub async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    match route(&shared, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => Ok(b),
        Err(_) => Err(ApiError::TooLarge(MAX_BODY)),
    }
}

fn decode_object(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = ct.split(';').next().unwrap_or_default().trim();
    let value: Value = match media {
        "application/json" | "" => serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}"))
        })?,
        crate::protobuf::CONTENT_TYPE => crate::protobuf::decode(body)?,
        "application/yaml" => serde_saphyr::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!("couldn't get version/kind; yaml parse error: {e}"))
        })?,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other:?})"
            )));
        }
    };
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    Ok(value)
}

async fn route(shared: &Arc<Shared>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let q = query(&parts.uri);

    // Health and version are public, as Kubernetes' default RBAC makes them.
    match segs.as_slice() {
        ["healthz" | "livez" | "readyz", ..] if parts.method == Method::GET => {
            return Ok(
                (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "ok").into_response(),
            );
        }
        ["version"] => {
            return Ok(respond(
                StatusCode::OK,
                &discovery::version(),
                Output::Json,
                &[],
            ));
        }
        _ => {}
    }
    // The cluster CA is public: a joining node fetches it and checks it against the hash
    // in its token before it trusts anything this server says.
    if let (["cacerts"], &Method::GET) = (segs.as_slice(), &parts.method) {
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            shared.pki.ca_pem.clone(),
        )
            .into_response());
    }
    let auth_header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let peer = parts.extensions.get::<Peer>().cloned().unwrap_or_default();
    let user = shared
        .tokens
        .authenticate(peer.identity.as_ref(), auth_header)?;
    let ok = |v: Value| Ok(respond(StatusCode::OK, &v, Output::Json, &[]));
    let not_found = || Err(ApiError::NoRoute);
    if parts.method == Method::GET {
        match segs.as_slice() {
            ["api"] => return ok(discovery::core_versions(&shared.advertise)),
            ["api", v] => return discovery::resource_list("", v).map_or_else(not_found, ok),
            ["apis"] => return ok(discovery::group_list()),
            ["apis", g] => return discovery::api_group(g).map_or_else(not_found, ok),
            ["apis", g, v] => return discovery::resource_list(g, v).map_or_else(not_found, ok),
            ["openapi", "v3"] => return ok(discovery::openapi_index()),
            ["openapi", "v3", rest @ ..] => {
                return discovery::openapi_group_version(&rest.join("/"))
                    .map_or_else(not_found, ok);
            }
            _ => {}
        }
    }
    // The resource metrics API (metrics-server's), from the kubelets' summaries. Reading
    // it needs what reading the nodes or pods themselves needs.
    if let (
        [
            "apis",
            crate::resource_metrics::GROUP,
            crate::resource_metrics::VERSION,
            rest @ ..,
        ],
        &Method::GET,
    ) = (segs.as_slice(), &parts.method)
    {
        let (plural, ns, name) = match rest {
            ["namespaces", ns, _, name @ ..] => ("pods", Some(*ns), name.first().copied()),
            [plural, name @ ..] => (*plural, None, name.first().copied()),
            [] => return Err(ApiError::NoRoute),
        };
        if let Some(res) = resources::find("", plural) {
            auth::authorize(
                &user,
                &Attributes {
                    verb: if name.is_some() { "get" } else { "list" },
                    resource: res,
                    subresource: None,
                    namespace: ns,
                    name,
                },
            )?;
        }
        let q = query(&parts.uri);
        return ok(crate::resource_metrics::serve(shared, rest, &q).await?);
    }
    // A kubelet asks for its serving certificate; logs and exec go to kubelets.
    match (segs.as_slice(), &parts.method) {
        (["tinykube", "v1", "kubelet-certificate"], &Method::POST) => {
            return match &user {
                auth::User::Node(node) => ok(crate::node_proxy::issue_certificate(shared, node)?),
                _ => Err(ApiError::Forbidden(format!(
                    "User \"{}\" cannot get a kubelet certificate: only a node can",
                    user.username()
                ))),
            };
        }
        (["tinykube", "v1", "join"], &Method::POST) => {
            if !matches!(user, auth::User::Bootstrap | auth::User::Admin) {
                return Err(ApiError::Forbidden(format!(
                    "User \"{}\" cannot join a node: only the join token can",
                    user.username()
                )));
            }
            let req = decode_object(&parts.headers, &read_body(body).await?)?;
            return ok(join(shared, &req, peer.addr)?);
        }
        (["api", "v1", "nodes", name, "proxy", path @ ..], &Method::GET) => {
            let (name, path) = (name.to_string(), path.join("/"));
            let nodes = resources::find("", "nodes").expect("nodes are served");
            auth::authorize(
                &user,
                &Attributes {
                    verb: "get",
                    resource: nodes,
                    subresource: Some("proxy"),
                    namespace: None,
                    name: Some(&name),
                },
            )?;
            return crate::node_proxy::proxy_node(shared, parts, body, &name, &path).await;
        }
        (
            [
                "api",
                "v1",
                "namespaces",
                ns,
                "pods",
                name,
                sub @ ("log" | "exec" | "attach"),
            ],
            m,
        ) if *m == Method::GET || *m == Method::POST => {
            let (ns, name, sub) = (ns.to_string(), name.to_string(), sub.to_string());
            let pods = resources::find("", "pods").expect("pods are served");
            auth::authorize(
                &user,
                &Attributes {
                    verb: if sub == "log" { "get" } else { "create" },
                    resource: pods,
                    subresource: Some(&sub),
                    namespace: Some(&ns),
                    name: Some(&name),
                },
            )?;
            if sub == "attach" {
                return Err(ApiError::BadRequest(
                    "attach is not supported; use exec".into(),
                ));
            }
            return crate::node_proxy::proxy(shared, parts, body, &ns, &name, &sub).await;
        }
        _ => {}
    }
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", g, "v1", rest @ ..] => (*g, rest),
        _ => return Err(ApiError::NoRoute),
    };
    let (legacy_watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        r => (false, r),
    };
    let (res, ns, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if resources::find(group, plural).is_some_and(|r| r.namespaced) =>
        {
            (
                resources::find(group, plural).expect("checked"),
                Some(*ns),
                tail,
            )
        }
        [plural, tail @ ..] => (
            resources::find(group, plural).ok_or(ApiError::NoRoute)?,
            None,
            tail,
        ),
        [] => return Err(ApiError::NoRoute),
    };
    let (name, sub) = match tail {
        [] => (None, None),
        [name] => (Some(*name), None),
        [name, sub] if res.subresources.contains(sub) => (Some(*name), Some(*sub)),
        _ => return Err(ApiError::NoRoute),
    };
    // Cluster-scoped resources have no namespace; namespaced ones need one except to list.
    let ns = if res.namespaced { ns } else { None };
    let watch = legacy_watch || matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&parts.method, name) {
        (&Method::GET, None) if watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) if watch => "watch",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, None) => "create",
        (&Method::POST, Some(_)) if matches!(sub, Some("binding" | "eviction")) => "create",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        (&Method::DELETE, None) => "deletecollection",
        _ => {
            return Err(ApiError::MethodNotAllowed(format!(
                "the server does not allow this method on the requested resource ({} {path})",
                parts.method
            )));
        }
    };
    if res.namespaced && ns.is_none() && !matches!(verb, "list" | "watch") {
        return Err(ApiError::NoRoute);
    }
    // A create names its object in the body; authorization may depend on that name
    // (a node may register itself only), so the body is read first.
    let (body, created) = if verb == "create" && name.is_none() {
        let bytes = read_body(body).await?;
        let obj = decode_object(&parts.headers, &bytes)?;
        (Body::empty(), Some(obj))
    } else {
        (body, None)
    };
    let auth_name = created
        .as_ref()
        .and_then(|o| o["metadata"]["name"].as_str())
        .or(name);
    // A kubelet may read the secrets and configmaps its own pods use (the node
    // authorizer's graph).
    let node_reads = match (&user, res.plural, verb, ns, name) {
        (
            auth::User::Node(node),
            kind @ ("secrets" | "configmaps"),
            "get",
            Some(ns),
            Some(name),
        ) => crate::node_proxy::node_may_read(shared, node, kind, ns, name),
        _ => false,
    };
    if !node_reads {
        auth::authorize(
            &user,
            &Attributes {
                verb,
                resource: res,
                subresource: sub,
                namespace: ns,
                name: auth_name,
            },
        )?;
    }
    if let auth::User::Node(node) = &user
        && res.group.is_empty()
        && res.plural == "pods"
        && matches!(verb, "create" | "update" | "patch" | "delete")
    {
        let stored;
        let pod = match &created {
            Some(obj) => obj,
            None => {
                stored = stored_pod(shared, ns, name)?;
                &stored
            }
        };
        auth::node_restriction(node, verb, pod)?;
    }
    let output = negotiate(&parts.headers)?;
    let include = IncludeObject::parse(q.get("includeObject").map(String::as_str));
    let write_opts = || -> Result<WriteOptions, ApiError> {
        Ok(WriteOptions {
            dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
            validation: FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?,
        })
    };
    let reg = &shared.registry;
    match verb {
        "watch" => {
            let mut q = q.clone();
            if let Some(n) = name {
                q.insert("fieldSelector".into(), format!("metadata.name={n}"));
            }
            crate::watch::serve_watch(shared, res, ns, &q, output, include)
        }
        "list" => {
            let opts = ListOptions::from_query(&q)?;
            let list = reg.list_raw(res, ns, &opts)?;
            if output == Output::Json {
                let body = list.to_json_bytes();
                return Ok((
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response());
            }
            let list = list.into_value()?;
            Ok(respond(
                StatusCode::OK,
                &present(res, list, output, include),
                output,
                &[],
            ))
        }
        "get" => {
            let stored = reg.get(res, ns, name.expect("item"))?;
            let body = if sub == Some("scale") {
                Registry::scale_of(&stored.object)
            } else {
                stored.object
            };
            Ok(respond(
                StatusCode::OK,
                &present(res, body, output, include),
                output,
                &[],
            ))
        }
        "create" => {
            let obj = match created {
                Some(obj) => obj,
                None => decode_object(&parts.headers, &read_body(body).await?)?,
            };
            match sub {
                Some("binding") => {
                    let status = reg
                        .bind(ns.expect("namespaced"), name.expect("item"), &obj)
                        .await?;
                    Ok(respond(StatusCode::CREATED, &status, Output::Json, &[]))
                }
                Some("eviction") => {
                    let opts = delete_options(&obj["deleteOptions"], &q)?;
                    reg.delete(res, ns, name.expect("item"), &opts).await?;
                    Ok(respond(
                        StatusCode::CREATED,
                        &registry::success_status(),
                        Output::Json,
                        &[],
                    ))
                }
                _ => {
                    let w = reg.create(res, ns, obj, write_opts()?).await?;
                    Ok(respond(
                        StatusCode::CREATED,
                        &present(res, w.object, output, include),
                        output,
                        &w.warnings,
                    ))
                }
            }
        }
        "update" => {
            let bytes = read_body(body).await?;
            let obj = decode_object(&parts.headers, &bytes)?;
            let name = name.expect("item");
            if sub == Some("scale") {
                let scale = reg
                    .update_scale(res, ns.expect("namespaced"), name, |_| Ok(obj.clone()))
                    .await?;
                return Ok(respond(StatusCode::OK, &scale, output, &[]));
            }
            let w = reg.update(res, ns, name, sub, obj, write_opts()?).await?;
            Ok(respond(
                StatusCode::OK,
                &present(res, w.object, output, include),
                output,
                &w.warnings,
            ))
        }
        "patch" => {
            let ct = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchType::from_content_type(ct)?;
            let bytes = read_body(body).await?;
            let name = name.expect("item");
            if sub == Some("scale") {
                let out = reg
                    .update_scale(res, ns.expect("namespaced"), name, |scale| {
                        crate::patch::apply(kind, scale, &bytes, "Scale")
                    })
                    .await?;
                return Ok(respond(StatusCode::OK, &out, output, &[]));
            }
            let w = reg
                .patch(res, ns, name, sub, kind, &bytes, write_opts()?)
                .await?;
            Ok(respond(
                StatusCode::OK,
                &present(res, w.object, output, include),
                output,
                &w.warnings,
            ))
        }
        "delete" => {
            let opts = delete_options_of(&parts.headers, body, &q).await?;
            let obj = reg.delete(res, ns, name.expect("item"), &opts).await?;
            Ok(respond(
                StatusCode::OK,
                &present(res, obj, output, include),
                output,
                &[],
            ))
        }
        "deletecollection" => {
            let opts = delete_options_of(&parts.headers, body, &q).await?;
            let list = reg
                .delete_collection(res, ns, &ListOptions::from_query(&q)?, &opts)
                .await?;
            Ok(respond(StatusCode::OK, &list, Output::Json, &[]))
        }
        _ => Err(ApiError::NoRoute),
    }
}

/// DeleteOptions from a delete's body (which may be empty) and its query.
async fn delete_options_of(
    headers: &HeaderMap,
    body: Body,
    q: &HashMap<String, String>,
) -> Result<DeleteOptions, ApiError> {
    let bytes = read_body(body).await?;
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        decode_object(headers, &bytes)?
    };
    delete_options(&body, q)
}

fn delete_options(body: &Value, q: &HashMap<String, String>) -> Result<DeleteOptions, ApiError> {
    let grace = match q.get("gracePeriodSeconds") {
        Some(g) => Some(
            g.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid gracePeriodSeconds {g:?}")))?,
        ),
        None => body["gracePeriodSeconds"].as_i64(),
    };
    let propagation = q
        .get("propagationPolicy")
        .cloned()
        .or_else(|| body["propagationPolicy"].as_str().map(str::to_string))
        .or_else(|| match body["orphanDependents"].as_bool() {
            Some(true) => Some("Orphan".into()),
            _ => None,
        });
    if let Some(p) = &propagation
        && !["Background", "Foreground", "Orphan"].contains(&p.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
        )));
    }
    let dry_run = q.get("dryRun").is_some_and(|d| d == "All")
        || body["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|d| d == "All"));
    Ok(DeleteOptions {
        grace_period: grace,
        propagation,
        precondition_uid: body["preconditions"]["uid"].as_str().map(str::to_string),
        precondition_rv: body["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        dry_run,
    })
}
