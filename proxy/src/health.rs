//! The health check node ports of `externalTrafficPolicy: Local` LoadBalancer services,
//! as kube-proxy serves them: `GET /` on the port answers 200 when this node has a local
//! endpoint of the service and 503 when it has none, with kube-proxy's JSON, so an
//! outside load balancer sends traffic only to nodes that keep it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::rules::ServicePort;

/// What one health check port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

impl Report {
    /// The HTTP response kube-proxy's health check server gives.
    pub fn response(&self) -> String {
        let body = format!(
            "{{\"service\":{{\"namespace\":\"{}\",\"name\":\"{}\"}},\"localEndpoints\":{},\"serviceProxyHealthy\":true}}",
            self.namespace, self.name, self.local_endpoints
        );
        let status = if self.local_endpoints > 0 {
            "200 OK"
        } else {
            "503 Service Unavailable"
        };
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.local_endpoints,
            body.len()
        )
    }
}

/// The reports wanted for `ports`, by health check node port.
pub fn reports<'a>(ports: impl IntoIterator<Item = &'a ServicePort>) -> HashMap<u16, Report> {
    let mut out: HashMap<u16, Report> = HashMap::new();
    for p in ports {
        let Some(hc) = p.health_check_node_port else {
            continue;
        };
        let (ns, name) = p.service().split_once('/').unwrap_or(("", p.service()));
        let local = p.local_endpoints().count();
        let r = out.entry(hc).or_insert_with(|| Report {
            namespace: ns.to_string(),
            name: name.to_string(),
            local_endpoints: 0,
        });
        // Several ports of one service share the check: count the distinct addresses.
        r.local_endpoints = r.local_endpoints.max(local);
    }
    out
}

struct Server {
    report: Arc<Mutex<Report>>,
    stop: CancellationToken,
}

/// The running health check servers of this node.
pub struct HealthChecks {
    node: String,
    servers: Mutex<HashMap<u16, Server>>,
    cancel: CancellationToken,
}

impl HealthChecks {
    pub fn new(node: String, cancel: CancellationToken) -> Self {
        Self {
            node,
            servers: Mutex::new(HashMap::new()),
            cancel,
        }
    }

    /// Serves exactly the health check ports `ports` ask for, with their counts.
    pub fn set(&self, ports: &[ServicePort]) {
        let want = reports(ports);
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        servers.retain(|port, s| {
            let keep = want.contains_key(port);
            if !keep {
                s.stop.cancel();
            }
            keep
        });
        for (port, report) in want {
            if let Some(s) = servers.get(&port) {
                *s.report.lock().unwrap_or_else(|p| p.into_inner()) = report;
                continue;
            }
            let shared = Arc::new(Mutex::new(report));
            let stop = self.cancel.child_token();
            tokio::spawn(serve(port, shared.clone(), stop.clone(), self.node.clone()));
            servers.insert(
                port,
                Server {
                    report: shared,
                    stop,
                },
            );
        }
    }
}

async fn serve(port: u16, report: Arc<Mutex<Report>>, stop: CancellationToken, node: String) {
    let listener = loop {
        match TcpListener::bind(("0.0.0.0", port)).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(port, %node, error = %e, "cannot serve a health check node port; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    loop {
        let (mut s, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let answer = report.lock().unwrap_or_else(|p| p.into_inner()).response();
        tokio::spawn(async move {
            // Read the request head (whatever it asks, the answer is the same); closing
            // before the client finished writing would reset its connection.
            let mut head = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            let _ = s.write_all(answer.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_200_with_local_endpoints_and_503_without() {
        let mut r = Report {
            namespace: "default".into(),
            name: "web".into(),
            local_endpoints: 2,
        };
        let ok = r.response();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(ok.ends_with("{\"service\":{\"namespace\":\"default\",\"name\":\"web\"},\"localEndpoints\":2,\"serviceProxyHealthy\":true}"));
        r.local_endpoints = 0;
        assert!(
            r.response()
                .starts_with("HTTP/1.1 503 Service Unavailable\r\n")
        );
    }
}
