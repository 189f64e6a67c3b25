//! `pods/log`, `pods/exec` and `nodes/proxy` passed on to the kubelet over TLS checked
//! against the cluster CA (with exec's protocol upgrade passed through untouched), and
//! the API server's own calls to kubelets.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{Method, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::error::ApiError;
use crate::resources;
use crate::state::Shared;

/// Where the kubelet of the pod's node listens, and the container the request means.
fn target(
    shared: &Shared,
    ns: &str,
    pod: &str,
    container: Option<&str>,
) -> Result<(String, String), ApiError> {
    let pods = resources::find("", "pods").expect("pods are served");
    let p = shared.registry.get(pods, Some(ns), pod)?.object;
    let names: Vec<String> = p["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(p["spec"]["initContainers"].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let container = match container.filter(|c| !c.is_empty()) {
        Some(c) if names.iter().any(|n| n == c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::BadRequest(format!(
                "container {c} is not valid for pod {pod}"
            )));
        }
        None => {
            let apps: Vec<&str> = p["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            if apps.len() == 1 {
                apps[0].to_string()
            } else {
                return Err(ApiError::BadRequest(format!(
                    "a container name must be specified for pod {pod}, choose one of: [{}]",
                    apps.join(" ")
                )));
            }
        }
    };
    let node = p["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("pod {pod} does not have a host assigned")))?;
    Ok((kubelet_address(shared, node)?, container))
}

/// Where node `node`'s kubelet listens: its InternalIP and kubelet port.
fn kubelet_address(shared: &Shared, node: &str) -> Result<String, ApiError> {
    let nodes = resources::find("", "nodes").expect("nodes are served");
    let n = shared.registry.get(nodes, None, node)?.object;
    let ip = n["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::BadRequest(format!("node {node} has no InternalIP")))?;
    let port = n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap_or(u64::from(tinykube_api::constants::KUBELET_PORT));
    Ok(format!("{ip}:{port}"))
}

fn unavailable(what: String) -> ApiError {
    ApiError::BadRequest(what)
}

/// Proxies `GET pods/{pod}/log` or `pods/{pod}/exec` to the kubelet.
pub async fn proxy(
    shared: &Arc<Shared>,
    parts: Parts,
    body: Body,
    ns: &str,
    pod: &str,
    sub: &str,
) -> Result<Response, ApiError> {
    let query = parts.uri.query().unwrap_or("").to_string();
    let pairs = tinykube_api::query::pairs(&query);
    let container = pairs
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.as_str());
    let (addr, container) = target(shared, ns, pod, container)?;
    let rest: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k != "container")
        .map(|(k, v)| {
            format!(
                "{}={}",
                tinykube_api::query::encode(k),
                tinykube_api::query::encode(v)
            )
        })
        .collect();
    let path = match sub {
        "log" => format!("/containerLogs/{ns}/{pod}/{container}"),
        _ => format!("/exec/{ns}/{pod}/{container}"),
    };
    let uri = if rest.is_empty() {
        path
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    let method = if sub == "log" {
        Method::GET
    } else {
        parts.method.clone()
    };
    forward(shared, parts, body, &addr, &uri, method).await
}

/// Proxies `nodes/{node}/proxy/{path}` to that node's kubelet API (GET only: the
/// kubelet's read-only endpoints such as `/metrics` and `/healthz`).
pub async fn proxy_node(
    shared: &Arc<Shared>,
    parts: Parts,
    body: Body,
    node: &str,
    path: &str,
) -> Result<Response, ApiError> {
    let addr = kubelet_address(shared, node)?;
    let uri = match parts.uri.query() {
        Some(q) => format!("/{path}?{q}"),
        None => format!("/{path}"),
    };
    forward(shared, parts, body, &addr, &uri, Method::GET).await
}

/// Opens an HTTP/1.1 connection to the kubelet at `addr` over TLS checked against the
/// cluster CA, as the API server's kubelet-client identity.
async fn connect(
    shared: &Shared,
    addr: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Body>, ApiError> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| unavailable(format!("cannot reach the kubelet at {addr}: {e}")))?;
    let server_name = rustls::pki_types::ServerName::try_from(
        addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_string(),
    )
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let tls = shared
        .kubelet_tls
        .connect(server_name, tcp)
        .await
        .map_err(|e| unavailable(format!("TLS to the kubelet at {addr} failed: {e}")))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unavailable(format!("cannot talk to the kubelet at {addr}: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// GETs `path` from node `node`'s kubelet and reads the JSON answer (the API server's
/// own calls: the metrics API's `/stats/summary`).
pub async fn kubelet_json(shared: &Shared, node: &str, path: &str) -> Result<Value, ApiError> {
    let addr = kubelet_address(shared, node)?;
    let mut sender = connect(shared, &addr).await?;
    let req = http::Request::get(path)
        .header(header::HOST, addr.as_str())
        .body(Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unavailable(format!("the kubelet at {addr} did not answer: {e}")))?;
    let ok = resp.status().is_success();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| unavailable(format!("the kubelet at {addr} did not answer: {e}")))?
        .to_bytes();
    if !ok {
        return Err(unavailable(format!(
            "the kubelet at {addr} answered: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| unavailable(format!("the kubelet at {addr} sent bad JSON: {e}")))
}

/// Sends the request to the kubelet at `addr` over TLS checked against the cluster CA,
/// as the API server's own node identity, and passes back the answer (and an upgraded
/// stream, for exec).
async fn forward(
    shared: &Arc<Shared>,
    mut parts: Parts,
    body: Body,
    addr: &str,
    uri: &str,
    method: Method,
) -> Result<Response, ApiError> {
    let addr = addr.to_string();
    let mut sender = connect(shared, &addr).await?;
    let mut req = http::Request::builder().method(method).uri(uri);
    for (k, v) in &parts.headers {
        if k == header::AUTHORIZATION || k == header::HOST || k == header::CONTENT_LENGTH {
            continue;
        }
        req = req.header(k, v);
    }
    let req = req
        .header(header::HOST, addr.as_str())
        .body(body)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unavailable(format!("the kubelet at {addr} did not answer: {e}")))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let client_side = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let (head, incoming) = resp.into_parts();
        let upstream = hyper::upgrade::on(http::Response::from_parts(head.clone(), incoming));
        if let Some(client_side) = client_side {
            tokio::spawn(async move {
                if let (Ok(down), Ok(up)) = (client_side.await, upstream.await) {
                    let (mut a, mut b) = (TokioIo::new(down), TokioIo::new(up));
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
        return Ok(http::Response::from_parts(head, Body::empty()).into_response());
    }
    let (head, incoming) = resp.into_parts();
    Ok(http::Response::from_parts(head, Body::new(incoming)).into_response())
}
