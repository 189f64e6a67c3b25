//! The kubelet API on port 10250 over TLS (a certificate the API server signs with the
//! cluster CA): container logs (`/containerLogs`, with follow, previous, tailLines,
//! limitBytes) and exec (`/exec`, WebSocket channel protocol v4/v5), which the API
//! server proxies `kubectl logs` and `kubectl exec` to; resource usage
//! (`/stats/summary`, which `kubectl top` reads through the API server's metrics API);
//! and what pods, the node and Services are made of (`/inspect/...`, for
//! `tinykube ctl inspect` and `trace`). Nothing here runs unless asked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use http::{StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::pods::PodContext;

/// The parts of the node agent outside the kubelet (overlay, service proxy, DNS), as
/// the kubelet API shows them.
pub trait NodeParts: Send + Sync + 'static {
    /// Their counters in Prometheus' text format.
    fn metrics(&self) -> String;
    /// The overlay (peers and their counters), the service rules and DNS, described.
    fn network(&self) -> Value;
    /// The rules service `ns/name` has on this node, with their counters.
    fn service(&self, ns: &str, name: &str) -> Result<Value, String>;
}

struct ServerState {
    ctx: Arc<PodContext>,
    parts: Arc<dyn NodeParts>,
    rates: crate::stats::Rates,
}

/// Whether the connection's client certificate (verified against the cluster CA) is the
/// API server's kubelet-client one.
#[derive(Clone, Copy)]
struct FromApiServer(bool);

/// Where the kubelet API listens: every address, as the kubelet does.
pub fn listen_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], tinykube_api::constants::KUBELET_PORT))
}

/// The kubelet API's TLS setup, with a certificate the API server issues for this node
/// (its name and addresses, signed by the cluster CA).
pub async fn serving_tls(
    client: &kube::Client,
    data_dir: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let fail = |m: String| format!("cannot get the kubelet's serving certificate: {m}");
    let req = http::Request::post("/tinykube/v1/kubelet-certificate")
        .body(Vec::new())
        .expect("static request");
    let v: serde_json::Value = client.request(req).await.map_err(|e| fail(e.to_string()))?;
    let (cert, key) = (
        v["certificate"].as_str().unwrap_or_default(),
        v["key"].as_str().unwrap_or_default(),
    );
    let dir = data_dir.join("pki");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("kubelet.crt"), cert);
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| fail(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| fail("no private key in the answer".into()))?;
    // Clients may present a certificate from the cluster CA; only the API server's
    // kubelet-client one gets past `authenticate`.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut v["ca"].as_str().unwrap_or_default().as_bytes()) {
        roots
            .add(c.map_err(|e| fail(e.to_string()))?)
            .map_err(|e| fail(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| fail(format!("the cluster CA in the answer: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| fail(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A Kubernetes Status error, as the API server passes it on to clients.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code.as_u16()});
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// Serves the kubelet API on `addr` until `cancel`.
pub async fn serve(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    ctx: Arc<PodContext>,
    parts: Arc<dyn NodeParts>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let state = Arc::new(ServerState {
        ctx,
        parts,
        rates: Default::default(),
    });
    let router = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(serve_metrics))
        .route("/stats/summary", get(stats_summary))
        .route("/inspect/pods/{ns}/{pod}", get(inspect_pod))
        .route("/inspect/probe/{ns}/{pod}", get(inspect_probe))
        .route("/inspect/node", get(inspect_node))
        .route("/inspect/services/{ns}/{name}", get(inspect_service))
        .route("/containerLogs/{ns}/{pod}/{container}", get(logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec).post(exec))
        .layer(axum::middleware::from_fn(authenticate))
        .with_state(state);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, router, cancel) = (acceptor.clone(), router.clone(), cancel.clone());
        connections.spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let from_api_server = FromApiServer(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| tinykube_api::pki::identity(c))
                    .is_some_and(|id| id.user == tinykube_api::pki::APISERVER_KUBELET_CLIENT),
            );
            let service = TowerToHyperService::new(
                tower::ServiceBuilder::new()
                    .layer(axum::Extension(from_api_server))
                    .service(router),
            );
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
    connections.close();
    Ok(())
}

/// The node's counters in Prometheus' text format.
async fn serve_metrics(State(st): State<Arc<ServerState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.parts.metrics(),
    )
        .into_response()
}

fn json_response(v: &Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// `/stats/summary`: the node's and each pod's CPU, memory and network.
async fn stats_summary(State(st): State<Arc<ServerState>>) -> Response {
    let pods = st.ctx.registry.all();
    let st2 = st.clone();
    let v = tokio::task::spawn_blocking(move || {
        let ctx = &st2.ctx;
        let src = crate::stats::Source {
            hierarchy: crate::stats::Hierarchy::detect(),
            node: &ctx.node,
            pods: &pods,
            pod_cgroup: &|uid| ctx.pod_cgroup(uid),
            container_cgroup: &|uid, c| ctx.container_cgroup(uid, c),
        };
        crate::stats::summary(&src, &st2.rates)
    })
    .await;
    match v {
        Ok(v) => json_response(&v),
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &e.to_string(),
        ),
    }
}

async fn inspect_pod(
    State(st): State<Arc<ServerState>>,
    Path((ns, pod)): Path<(String, String)>,
) -> Response {
    inspect_result(crate::inspect::pod(&st.ctx, &ns, &pod).await)
}

#[derive(serde::Deserialize)]
struct ProbeQuery {
    to: String,
}

/// One TCP connection from inside a pod, for `ctl trace --probe`.
async fn inspect_probe(
    State(st): State<Arc<ServerState>>,
    Path((ns, pod)): Path<(String, String)>,
    Query(q): Query<ProbeQuery>,
) -> Response {
    let Ok(to) = q.to.parse::<SocketAddr>() else {
        return bad_request(&format!("to={:?} is not an address and port", q.to));
    };
    inspect_result(crate::inspect::probe(&st.ctx, &ns, &pod, to).await)
}

fn inspect_result(r: Result<Value, crate::inspect::InspectError>) -> Response {
    use crate::inspect::InspectError;
    match r {
        Ok(v) => json_response(&v),
        Err(e @ InspectError::NotHere(..)) => {
            status(StatusCode::NOT_FOUND, "NotFound", &e.to_string())
        }
        Err(e @ InspectError::NoSandbox(..)) => {
            status(StatusCode::CONFLICT, "Conflict", &e.to_string())
        }
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &crate::error_chain(&e),
        ),
    }
}

async fn inspect_node(State(st): State<Arc<ServerState>>) -> Response {
    let mut v = match crate::inspect::node(&st.ctx).await {
        Ok(v) => v,
        Err(e) => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &crate::error_chain(&e),
            );
        }
    };
    let parts = st.parts.clone();
    if let Ok(Value::Object(extra)) = tokio::task::spawn_blocking(move || parts.network()).await {
        for (k, x) in extra {
            v[k] = x;
        }
    }
    json_response(&v)
}

async fn inspect_service(
    State(st): State<Arc<ServerState>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let parts = st.parts.clone();
    match tokio::task::spawn_blocking(move || parts.service(&ns, &name)).await {
        Ok(Ok(v)) => json_response(&v),
        Ok(Err(e)) => status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e),
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &e.to_string(),
        ),
    }
}

/// Only the API server (its kubelet-client certificate) may use the kubelet API.
async fn authenticate(req: Request, next: axum::middleware::Next) -> Response {
    let ok = req.uri().path() == "/healthz"
        || req.extensions().get::<FromApiServer>().is_some_and(|f| f.0);
    if ok {
        next.run(req).await
    } else {
        status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    follow: Option<String>,
    previous: Option<String>,
    tail_lines: Option<i64>,
    limit_bytes: Option<i64>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1"))
}

/// The last `n` lines of `data`.
pub fn tail(data: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &data[data.len()..];
    }
    let mut count = 0;
    let end = if data.last() == Some(&b'\n') {
        data.len() - 1
    } else {
        data.len()
    };
    for i in (0..end).rev() {
        if data[i] == b'\n' {
            count += 1;
            if count == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

async fn logs(
    State(st): State<Arc<ServerState>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let Some(view) = st.ctx.registry.get(&ns, &pod) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pod \"{pod}\" not found on this node"),
        );
    };
    let Some(c) = view.containers.get(&container).cloned() else {
        return bad_request(&format!(
            "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
        ));
    };
    let previous = flag(&q.previous);
    let attempt = match (previous, c.attempts) {
        (false, 0) => {
            let why = c.waiting.unwrap_or_else(|| "ContainerCreating".into());
            return bad_request(&format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: {why}"
            ));
        }
        (false, n) => n - 1,
        (true, n) if n >= 2 => n - 2,
        (true, _) => {
            return bad_request(&format!(
                "previous terminated container \"{container}\" in pod \"{pod}\" not found"
            ));
        }
    };
    let path = crate::pods::log_path(&st.ctx.pods_dir, &view.uid, &container, attempt);
    let data = tokio::fs::read(&path).await.unwrap_or_default();
    let mut first: Vec<u8> = match q.tail_lines {
        Some(n) if n >= 0 => tail(&data, n as usize).to_vec(),
        _ => data.clone(),
    };
    let limit = q.limit_bytes.filter(|l| *l > 0).map(|l| l as usize);
    if let Some(l) = limit {
        first.truncate(l);
    }
    let text = [(header::CONTENT_TYPE, "text/plain")];
    if !flag(&q.follow) || previous {
        return (StatusCode::OK, text, first).into_response();
    }
    // Follow: what is there, then what the container writes until it stops.
    let offset = data.len() as u64;
    let ctx = st.ctx.clone();
    let stream = futures::stream::unfold(
        (
            Some(first),
            offset,
            path,
            ctx,
            ns,
            pod,
            container,
            attempt,
            false,
        ),
        |(first, mut offset, path, ctx, ns, pod, container, attempt, done)| async move {
            if let Some(f) = first {
                return Some((
                    Ok::<Bytes, std::io::Error>(Bytes::from(f)),
                    (None, offset, path, ctx, ns, pod, container, attempt, done),
                ));
            }
            if done {
                return None;
            }
            loop {
                let still = ctx
                    .registry
                    .get(&ns, &pod)
                    .and_then(|v| v.containers.get(&container).cloned())
                    .is_some_and(|c| c.running && c.attempts == attempt + 1);
                let mut chunk = Vec::new();
                if let Ok(mut f) = tokio::fs::File::open(&path).await
                    && f.seek(std::io::SeekFrom::Start(offset)).await.is_ok()
                {
                    let _ = f.read_to_end(&mut chunk).await;
                }
                if !chunk.is_empty() {
                    offset += chunk.len() as u64;
                    return Some((
                        Ok(Bytes::from(chunk)),
                        (None, offset, path, ctx, ns, pod, container, attempt, !still),
                    ));
                }
                if !still {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    );
    (StatusCode::OK, text, Body::from_stream(stream)).into_response()
}

async fn exec(
    State(st): State<Arc<ServerState>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    let query = req.uri().query().unwrap_or("").to_string();
    let mut command = Vec::new();
    let mut stdin = false;
    for (k, v) in tinykube_api::query::pairs(&query) {
        match k.as_str() {
            "command" => command.push(v),
            "input" | "stdin" => stdin = v == "true" || v == "1",
            _ => {}
        }
    }
    if command.is_empty() {
        return bad_request("you must specify at least one command for the container");
    }
    let Some(view) = st.ctx.registry.get(&ns, &pod) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pod \"{pod}\" not found on this node"),
        );
    };
    let Some(id) = view
        .containers
        .get(&container)
        .filter(|c| c.running)
        .and_then(|c| c.id.clone())
    else {
        return bad_request(&format!(
            "container {container} is not running in pod {pod}"
        ));
    };
    let (mut parts, _) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(_) => {
            return bad_request(
                "exec needs a WebSocket upgrade (the v4.channel.k8s.io or v5.channel.k8s.io protocol)",
            );
        }
    };
    let ctx = st.ctx.clone();
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| async move {
            if let Err(e) = run_exec(ctx, socket, id, command, stdin).await {
                tracing::debug!(error = %e, "exec session ended with an error");
            }
        })
        .into_response()
}

fn normal_close() -> axum::extract::ws::CloseFrame {
    axum::extract::ws::CloseFrame {
        code: 1000,
        reason: "".into(),
    }
}

/// One exec session: the process's output as channel 1 and 2 frames, stdin from
/// channel 0 frames, and the exit status on channel 3 (a Kubernetes Status).
async fn run_exec(
    ctx: Arc<PodContext>,
    socket: WebSocket,
    id: String,
    command: Vec<String>,
    stdin: bool,
) -> Result<(), String> {
    let exec_id = format!("exec-{}", crate::runtime::image::random_id());
    let dir = ctx.pods_dir.join("exec").join(&exec_id);
    let (mut tx, mut rx) = socket.split();
    let rt = ctx.runtime.clone();
    let started = async {
        let io = rt.exec(&id, &exec_id, command.clone(), stdin, &dir).await?;
        rt.start_exec(&id, &exec_id).await?;
        Ok::<_, crate::runtime::RuntimeError>(io)
    }
    .await;
    let io = match started {
        Ok(io) => io,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            rt.delete_exec(&id, &exec_id).await;
            let st = json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                            "message": format!("error executing command {command:?}: {}", crate::error_chain(&e))});
            let mut frame = vec![3u8];
            frame.extend(st.to_string().into_bytes());
            let _ = tx.send(Message::Binary(frame.into())).await;
            let _ = tx.send(Message::Close(Some(normal_close()))).await;
            return Err(e.to_string());
        }
    };
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let pump = |mut r: tokio::net::unix::pipe::Receiver,
                channel: u8,
                out: tokio::sync::mpsc::Sender<Vec<u8>>| async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let mut frame = Vec::with_capacity(n + 1);
                    frame.push(channel);
                    frame.extend_from_slice(&buf[..n]);
                    if out.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let out1 = tokio::spawn(pump(io.stdout, 1, out_tx.clone()));
    let out2 = tokio::spawn(pump(io.stderr, 2, out_tx.clone()));
    drop(out_tx);
    let mut stdin_pipe = io.stdin;
    let (rt_in, id_in, exec_in) = (rt.clone(), id.clone(), exec_id.clone());
    let input = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            let data = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            match data.split_first() {
                Some((0, rest)) => {
                    if let Some(p) = stdin_pipe.as_mut()
                        && p.write_all(rest).await.is_err()
                    {
                        stdin_pipe = None;
                    }
                }
                // v5: the client closed a stream; channel 0 means end of stdin.
                Some((255, rest)) if rest.first() == Some(&0) && stdin_pipe.take().is_some() => {
                    rt_in.close_stdin(&id_in, &exec_in).await;
                }
                _ => {}
            }
        }
        if stdin_pipe.take().is_some() {
            rt_in.close_stdin(&id_in, &exec_in).await;
        }
    });
    let wait = rt.wait_exec(&id, &exec_id);
    tokio::pin!(wait);
    let code = loop {
        tokio::select! {
            frame = out_rx.recv() => match frame {
                Some(f) => { let _ = tx.send(Message::Binary(f.into())).await; }
                None => break (&mut wait).await,
            },
            code = &mut wait => break code,
        }
    };
    // Output written just before the exit may still be in the FIFOs.
    while let Ok(Some(f)) = tokio::time::timeout(Duration::from_millis(100), out_rx.recv()).await {
        let _ = tx.send(Message::Binary(f.into())).await;
    }
    out1.abort();
    out2.abort();
    input.abort();
    let st = match code {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(n) => json!({"metadata": {}, "status": "Failure",
                        "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {n}"),
                        "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": n.to_string()}]}}),
        Err(e) => {
            json!({"metadata": {}, "status": "Failure", "reason": "InternalError", "message": crate::error_chain(&e)})
        }
    };
    let mut frame = vec![3u8];
    frame.extend(st.to_string().into_bytes());
    let _ = tx.send(Message::Binary(frame.into())).await;
    // A normal closure: clients read it as the end of every stream.
    let _ = tx.send(Message::Close(Some(normal_close()))).await;
    rt.delete_exec(&id, &exec_id).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
    }
}
