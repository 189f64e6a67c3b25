//! The resource metrics API (`metrics.k8s.io/v1beta1`), served the way metrics-server
//! serves it: NodeMetrics and PodMetrics made from each kubelet's `/stats/summary`
//! (CPU in nanocores, memory as the working set), so `kubectl top nodes` and
//! `kubectl top pods --containers` work. Summaries are fetched when asked and kept a
//! few seconds, so nothing runs while nobody asks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::registry::ListOptions;
use crate::request::RequestInfo;
use crate::resources;
use crate::state::Shared;

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

/// How long a node's summary is reused (metrics-server scrapes every 15 s).
const FRESH: Duration = Duration::from_secs(5);
/// How long one kubelet may take to answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// The discovery document of the group version.
pub fn resource_list() -> Value {
    let entry = |name: &str, kind: &str, namespaced: bool| {
        json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
               "verbs": ["get", "list"]})
    };
    json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [entry("nodes", "NodeMetrics", false), entry("pods", "PodMetrics", true)],
    })
}

/// The group as `/apis` lists it.
pub fn group() -> Value {
    let gv = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"name": GROUP, "versions": [gv.clone()], "preferredVersion": gv})
}

/// Node `node`'s summary, fresh or from the last few seconds.
async fn summary(shared: &Arc<Shared>, node: &str) -> Option<Arc<Value>> {
    if let Some((at, v)) = shared.usage.0.lock().expect("usage lock").get(node)
        && at.elapsed() < FRESH
    {
        return Some(v.clone());
    }
    let got = tokio::time::timeout(
        SCRAPE_TIMEOUT,
        super::proxy::kubelet_json(shared, node, "/stats/summary"),
    )
    .await;
    match got {
        Ok(Ok(v)) => {
            let v = Arc::new(v);
            shared
                .usage
                .0
                .lock()
                .expect("usage lock")
                .insert(node.to_string(), (Instant::now(), v.clone()));
            Some(v)
        }
        Ok(Err(e)) => {
            tracing::debug!(node, error = %e, "no resource metrics from this node");
            None
        }
        Err(_) => {
            tracing::debug!(node, "no resource metrics from this node: timed out");
            None
        }
    }
}

fn list_of(
    shared: &Shared,
    plural: &str,
    ns: Option<&str>,
    query: &HashMap<String, String>,
) -> Result<Vec<Value>, ApiError> {
    let res = resources::find("", plural).expect("served");
    let mut q = HashMap::new();
    for k in ["labelSelector", "fieldSelector"] {
        if let Some(v) = query.get(k) {
            q.insert(k.to_string(), v.clone());
        }
    }
    let opts = ListOptions::from_query(&q)?;
    let list = shared.registry.list(res, ns, &opts)?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Nanocores as a quantity, and bytes in Ki, as metrics-server writes them.
fn cpu(n: &Value) -> Option<String> {
    n.as_u64().map(|n| format!("{n}n"))
}

fn memory(b: &Value) -> Option<String> {
    b.as_u64().map(|b| format!("{}Ki", b / 1024))
}

fn meta(obj: &Value, ts: &Value) -> Value {
    let m = &obj["metadata"];
    let mut out = json!({"name": m["name"], "creationTimestamp": ts});
    if !m["namespace"].is_null() {
        out["namespace"] = m["namespace"].clone();
    }
    if m["labels"].is_object() {
        out["labels"] = m["labels"].clone();
    }
    out
}

fn node_metrics(node: &Value, s: &Value) -> Option<Value> {
    let n = &s["node"];
    let ts = n["cpu"]["time"].clone();
    Some(json!({
        "kind": "NodeMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": meta(node, &ts),
        "timestamp": ts,
        "window": "1s",
        "usage": {"cpu": cpu(&n["cpu"]["usageNanoCores"])?,
                  "memory": memory(&n["memory"]["workingSetBytes"])?},
    }))
}

fn pod_metrics(pod: &Value, s: &Value) -> Option<Value> {
    let uid = &pod["metadata"]["uid"];
    let p = s["pods"]
        .as_array()?
        .iter()
        .find(|p| &p["podRef"]["uid"] == uid)?;
    let containers: Vec<Value> = p["containers"]
        .as_array()?
        .iter()
        .filter_map(|c| {
            Some(json!({
                "name": c["name"],
                "usage": {"cpu": cpu(&c["cpu"]["usageNanoCores"])?,
                          "memory": memory(&c["memory"]["workingSetBytes"])?},
            }))
        })
        .collect();
    if containers.is_empty() {
        return None;
    }
    let ts = p["cpu"]["time"].clone();
    Some(json!({
        "kind": "PodMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": meta(pod, &ts),
        "timestamp": ts,
        "window": "1s",
        "containers": containers,
    }))
}

/// Summaries of `nodes`, fetched side by side.
async fn summaries(shared: &Arc<Shared>, nodes: &[String]) -> HashMap<String, Arc<Value>> {
    let got = futures::future::join_all(nodes.iter().map(|n| summary(shared, n))).await;
    nodes
        .iter()
        .cloned()
        .zip(got)
        .filter_map(|(n, s)| s.map(|s| (n, s)))
        .collect()
}

fn not_found(kind: &str, name: &str) -> ApiError {
    ApiError::NotFound {
        resource: format!("{kind}.{GROUP}"),
        group: GROUP.into(),
        name: name.into(),
    }
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": format!("{GROUP}/{VERSION}"),
           "metadata": {}, "items": items})
}

/// `GET /apis/metrics.k8s.io/v1beta1/<rest>`.
pub async fn serve(shared: &Arc<Shared>, info: &RequestInfo) -> Result<Value, ApiError> {
    let query = &info.query;
    if info.subresource.is_some() || info.verb != "get" && info.verb != "list" {
        return Err(ApiError::NoRoute);
    }
    match (info.resource.as_str(), info.namespace(), info.url_name()) {
        ("nodes", None, None) => {
            let nodes = list_of(shared, "nodes", None, query)?;
            let names: Vec<String> = nodes
                .iter()
                .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
                .collect();
            let s = summaries(shared, &names).await;
            let items = nodes
                .iter()
                .filter_map(|n| node_metrics(n, s.get(n["metadata"]["name"].as_str()?)?))
                .collect();
            Ok(list("NodeMetrics", items))
        }
        ("nodes", None, Some(name)) => {
            let res = resources::find("", "nodes").expect("served");
            let node = shared.registry.get(res, None, name)?.object;
            let s = summary(shared, name).await;
            s.and_then(|s| node_metrics(&node, &s))
                .ok_or_else(|| not_found("nodes", name))
        }
        ("pods", ns, None) => {
            let pods = list_of(shared, "pods", ns, query)?;
            let mut nodes: Vec<String> = pods
                .iter()
                .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
                .collect();
            nodes.sort();
            nodes.dedup();
            let s = summaries(shared, &nodes).await;
            let items = pods
                .iter()
                .filter_map(|p| pod_metrics(p, s.get(p["spec"]["nodeName"].as_str()?)?))
                .collect();
            Ok(list("PodMetrics", items))
        }
        ("pods", Some(ns), Some(name)) => {
            let res = resources::find("", "pods").expect("served");
            let pod = shared.registry.get(res, Some(ns), name)?.object;
            let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
            let s = if node.is_empty() {
                None
            } else {
                summary(shared, node).await
            };
            s.and_then(|s| pod_metrics(&pod, &s))
                .ok_or_else(|| not_found("pods", &format!("{ns}/{name}")))
        }
        _ => Err(ApiError::NoRoute),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_metrics_come_from_the_pod_s_containers_in_the_summary() {
        let pod = json!({"metadata": {"name": "p", "namespace": "default", "uid": "u1", "labels": {"app": "x"}}});
        let summary = json!({"pods": [{
            "podRef": {"name": "p", "namespace": "default", "uid": "u1"},
            "cpu": {"time": "2026-01-01T00:00:00Z", "usageNanoCores": 9},
            "containers": [
                {"name": "app", "cpu": {"usageNanoCores": 5_000_000}, "memory": {"workingSetBytes": 67_108_864}},
                {"name": "starting", "cpu": {}, "memory": {}},
            ],
        }]});
        let m = pod_metrics(&pod, &summary).unwrap();
        assert_eq!(m["containers"].as_array().unwrap().len(), 1);
        assert_eq!(m["containers"][0]["usage"]["cpu"], "5000000n");
        assert_eq!(m["containers"][0]["usage"]["memory"], "65536Ki");
        assert_eq!(m["metadata"]["labels"]["app"], "x");
        let other = json!({"metadata": {"name": "q", "uid": "u2"}});
        assert!(pod_metrics(&other, &summary).is_none());
    }

    #[test]
    fn node_metrics_need_a_cpu_rate() {
        let node = json!({"metadata": {"name": "w1"}});
        let s = json!({"node": {"cpu": {"time": "t", "usageNanoCores": 250_000_000},
                                "memory": {"workingSetBytes": 2048}}});
        let m = node_metrics(&node, &s).unwrap();
        assert_eq!(m["usage"]["cpu"], "250000000n");
        assert_eq!(m["usage"]["memory"], "2Ki");
        let none = json!({"node": {"cpu": {"time": "t"}, "memory": {"workingSetBytes": 1}}});
        assert!(node_metrics(&node, &none).is_none());
    }
}
