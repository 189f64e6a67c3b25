//! Liveness and readiness probes (httpGet, tcpSocket, exec) with Kubernetes' timing
//! fields; each running container with probes gets one task that reports changes of
//! state to its pod's worker.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::state::{Event, ProbeKind as Kind};
use crate::runtime::Runtime;

/// A port by number or by the name of one of the container's ports.
fn port(c: &Container, p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

/// Runs one probe once: Ok on success, Err with what failed.
async fn once(
    rt: &Runtime,
    id: &str,
    c: &Container,
    probe: &Probe,
    ip: &str,
    timeout: Duration,
    scratch: &std::path::Path,
) -> Result<(), String> {
    if let Some(h) = &probe.http_get {
        let p = port(c, &h.port)
            .ok_or_else(|| format!("port {:?} is not a port of the container", h.port))?;
        let host = h.host.clone().unwrap_or_else(|| ip.to_string());
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let work = async {
            let mut s = tokio::net::TcpStream::connect((host.as_str(), p))
                .await
                .map_err(|e| e.to_string())?;
            let mut req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{p}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n"
            );
            for hh in h.http_headers.iter().flatten() {
                req.push_str(&format!("{}: {}\r\n", hh.name, hh.value));
            }
            req.push_str("\r\n");
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut head = vec![0u8; 64];
            let n = s.read(&mut head).await.map_err(|e| e.to_string())?;
            let line = String::from_utf8_lossy(&head[..n]).to_string();
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or("malformed HTTP response")?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        };
        return tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "Get \"http://{host}:{p}{path}\": context deadline exceeded"
                ))
            });
    }
    if let Some(t) = &probe.tcp_socket {
        let p = port(c, &t.port)
            .ok_or_else(|| format!("port {:?} is not a port of the container", t.port))?;
        let host = t.host.clone().unwrap_or_else(|| ip.to_string());
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), p)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{p}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{p}: i/o timeout")),
        };
    }
    if let Some(e) = &probe.exec {
        let command = e.command.clone().unwrap_or_default();
        let exec_id = format!("probe-{}", crate::runtime::image::random_id());
        let dir = scratch.join(&exec_id);
        let r = async {
            let mut io = rt
                .exec(id, &exec_id, command.clone(), false, &dir)
                .await
                .map_err(|e| e.to_string())?;
            rt.start_exec(id, &exec_id)
                .await
                .map_err(|e| e.to_string())?;
            // Drain the output so a chatty command never blocks on a full pipe.
            let drain = tokio::spawn(async move {
                let (mut a, mut b) = ([0u8; 4096], [0u8; 4096]);
                loop {
                    tokio::select! {
                        r = io.stdout.read(&mut a) => if !matches!(r, Ok(n) if n > 0) { break },
                        r = io.stderr.read(&mut b) => if !matches!(r, Ok(n) if n > 0) { break },
                    }
                }
            });
            let code = tokio::time::timeout(timeout, rt.wait_exec(id, &exec_id)).await;
            drain.abort();
            match code {
                Ok(Ok(0)) => Ok(()),
                Ok(Ok(n)) => Err(format!("command {command:?} exited with {n}")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("command {command:?} timed out")),
            }
        }
        .await;
        rt.delete_exec(id, &exec_id).await;
        let _ = std::fs::remove_dir_all(&dir);
        return r;
    }
    Err("the probe has no handler (httpGet, tcpSocket or exec)".into())
}

/// Starts the probes of container `id` (if it has any); they report to `tx` until the
/// returned task is aborted.
pub(crate) fn spawn(
    rt: Runtime,
    id: String,
    c: Container,
    ip: String,
    scratch: std::path::PathBuf,
    tx: mpsc::UnboundedSender<Event>,
) -> Option<tokio::task::JoinHandle<()>> {
    let probes: Vec<(Kind, Probe)> = [
        (Kind::Liveness, c.liveness_probe.clone()),
        (Kind::Readiness, c.readiness_probe.clone()),
    ]
    .into_iter()
    .filter_map(|(k, p)| p.map(|p| (k, p)))
    .collect();
    if probes.is_empty() {
        return None;
    }
    Some(tokio::spawn(async move {
        let runs = probes.into_iter().map(|(kind, probe)| {
            let (rt, id, c, ip, scratch, tx) = (
                rt.clone(),
                id.clone(),
                c.clone(),
                ip.clone(),
                scratch.clone(),
                tx.clone(),
            );
            async move {
                let secs =
                    |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
                let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
                let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_secs(1));
                let need_ok = probe.success_threshold.unwrap_or(1).max(1);
                let need_fail = probe.failure_threshold.unwrap_or(3).max(1);
                tokio::time::sleep(secs(probe.initial_delay_seconds, 0)).await;
                // Readiness starts false, liveness true, as in Kubernetes.
                let mut state = kind == Kind::Liveness;
                let (mut oks, mut fails) = (0, 0);
                loop {
                    match once(&rt, &id, &c, &probe, &ip, timeout, &scratch).await {
                        Ok(()) => {
                            oks += 1;
                            fails = 0;
                            if !state && oks >= need_ok {
                                state = true;
                                let _ = tx.send(Event::Probe {
                                    id: id.clone(),
                                    kind,
                                    ok: true,
                                    message: String::new(),
                                });
                            }
                        }
                        Err(message) => {
                            fails += 1;
                            oks = 0;
                            if fails >= need_fail {
                                fails = 0;
                                // Liveness failures always count (the container is
                                // restarted); readiness only when it changes.
                                if kind == Kind::Liveness || state {
                                    state = false;
                                    if tx
                                        .send(Event::Probe {
                                            id: id.clone(),
                                            kind,
                                            ok: false,
                                            message,
                                        })
                                        .is_err()
                                    {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    tokio::time::sleep(period).await;
                }
            }
        });
        futures::future::join_all(runs).await;
    }))
}
