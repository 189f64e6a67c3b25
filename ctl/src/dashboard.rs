//! `tinykube ctl dashboard`: a live map of the cluster in the browser, served on
//! 127.0.0.1. The page (`dashboard/index.html`, inside the binary: no CDN, works
//! offline) reads the API through this server, which forwards GETs under `/api` and
//! `/apis` with the kubeconfig's credentials as `kubectl proxy` does (read-only: the
//! map changes nothing). It lists and then watches nodes, pods, services and
//! EndpointSlices, and polls the nodes' kubelet API (`inspect`, through the node proxy)
//! for the overlay's and the services' counters and the metrics API for usage.

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};

const INDEX: &str = include_str!("dashboard/index.html");
const APP: &str = include_str!("dashboard/app.js");

/// Serves the map on 127.0.0.1:`port` until interrupted.
pub async fn serve(client: kube::Client, port: u16) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    println!("Serving the cluster map on http://{addr}/ (Ctrl-C to stop)");
    let app = axum::Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { page(APP, "text/javascript; charset=utf-8") }),
        )
        .fallback(forward)
        .with_state(client);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the dashboard server stopped")
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn refuse(code: StatusCode, message: &str) -> Response {
    let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "message": message, "code": code.as_u16()});
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        status.to_string(),
    )
        .into_response()
}

/// GETs under /api and /apis go to the API server as the kubeconfig's user; watches
/// stream through.
async fn forward(State(client): State<kube::Client>, req: Request) -> Response {
    let path = req.uri().path();
    if !(path.starts_with("/api/")
        || path.starts_with("/apis/")
        || path == "/api"
        || path == "/apis")
    {
        return refuse(StatusCode::NOT_FOUND, "not found");
    }
    if req.method() != http::Method::GET {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "the dashboard only reads the cluster",
        );
    }
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let Ok(upstream) = http::Request::get(uri)
        .header(header::ACCEPT, "application/json")
        .body(kube::client::Body::empty())
    else {
        return refuse(StatusCode::BAD_REQUEST, "bad request");
    };
    match client.send(upstream).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let mut out = Response::new(Body::new(body));
            *out.status_mut() = parts.status;
            if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
                out.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
            }
            out
        }
        Err(e) => refuse(
            StatusCode::BAD_GATEWAY,
            &format!("cannot reach the API server: {e}"),
        ),
    }
}
