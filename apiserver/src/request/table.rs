//! Server-side Table output (`as=Table;g=meta.k8s.io;v=v1`): the columns `kubectl get`
//! prints, computed as Kubernetes' printers compute them.

use serde_json::{Value, json};
use tinykube_api::format::{age, human_duration};

use crate::resources::ResourceInfo;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

struct Col(&'static str, &'static str, u8);

fn columns(kind: &str) -> Vec<Col> {
    let mut cols = vec![Col("Name", "string", 0)];
    let more: &[Col] = match kind {
        "Pod" => &[
            Col("Ready", "string", 0),
            Col("Status", "string", 0),
            Col("Restarts", "string", 0),
            Col("Age", "string", 0),
            Col("IP", "string", 1),
            Col("Node", "string", 1),
            Col("Nominated Node", "string", 1),
            Col("Readiness Gates", "string", 1),
        ],
        "Node" => &[
            Col("Status", "string", 0),
            Col("Roles", "string", 0),
            Col("Age", "string", 0),
            Col("Version", "string", 0),
            Col("Internal-IP", "string", 1),
            Col("External-IP", "string", 1),
            Col("OS-Image", "string", 1),
            Col("Kernel-Version", "string", 1),
            Col("Container-Runtime", "string", 1),
        ],
        "Service" => &[
            Col("Type", "string", 0),
            Col("Cluster-IP", "string", 0),
            Col("External-IP", "string", 0),
            Col("Port(s)", "string", 0),
            Col("Age", "string", 0),
            Col("Selector", "string", 1),
        ],
        "Deployment" => &[
            Col("Ready", "string", 0),
            Col("Up-to-date", "integer", 0),
            Col("Available", "integer", 0),
            Col("Age", "string", 0),
            Col("Containers", "string", 1),
            Col("Images", "string", 1),
            Col("Selector", "string", 1),
        ],
        "ReplicaSet" => &[
            Col("Desired", "integer", 0),
            Col("Current", "integer", 0),
            Col("Ready", "integer", 0),
            Col("Age", "string", 0),
            Col("Containers", "string", 1),
            Col("Images", "string", 1),
            Col("Selector", "string", 1),
        ],
        "Namespace" => &[Col("Status", "string", 0), Col("Age", "string", 0)],
        "Endpoints" => &[Col("Endpoints", "string", 0), Col("Age", "string", 0)],
        "EndpointSlice" => &[
            Col("AddressType", "string", 0),
            Col("Ports", "string", 0),
            Col("Endpoints", "string", 0),
            Col("Age", "string", 0),
        ],
        "ConfigMap" => &[Col("Data", "integer", 0), Col("Age", "string", 0)],
        "Secret" => &[
            Col("Type", "string", 0),
            Col("Data", "integer", 0),
            Col("Age", "string", 0),
        ],
        "ServiceAccount" => &[Col("Secrets", "integer", 0), Col("Age", "string", 0)],
        "Lease" => &[Col("Holder", "string", 0), Col("Age", "string", 0)],
        "Role" | "ClusterRole" => &[Col("Created At", "date", 0)],
        "CertificateSigningRequest" => &[
            Col("Age", "date", 0),
            Col("SignerName", "string", 0),
            Col("Requestor", "string", 0),
            Col("RequestedDuration", "string", 0),
            Col("Condition", "string", 0),
        ],
        "RoleBinding" | "ClusterRoleBinding" => &[
            Col("Role", "string", 0),
            Col("Age", "string", 0),
            Col("Users", "string", 1),
            Col("Groups", "string", 1),
            Col("ServiceAccounts", "string", 1),
        ],
        "Event" => &[
            Col("Last Seen", "string", 0),
            Col("Type", "string", 0),
            Col("Reason", "string", 0),
            Col("Object", "string", 0),
            Col("Message", "string", 0),
        ],
        _ => &[Col("Age", "string", 0)],
    };
    if kind == "Event" {
        // Kubernetes' event table leads with LAST SEEN and keeps NAME for -o wide.
        let mut c: Vec<Col> = more.iter().map(|c| Col(c.0, c.1, c.2)).collect();
        c.push(Col("Name", "string", 1));
        return c;
    }
    cols.extend(more.iter().map(|c| Col(c.0, c.1, c.2)));
    cols
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn label_map(v: &Value) -> String {
    let mut parts: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    parts.sort();
    parts.join(",")
}

/// `metav1.FormatLabelSelector`.
fn selector(v: &Value) -> String {
    let mut parts: Vec<String> = v["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    for e in v["matchExpressions"].as_array().into_iter().flatten() {
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        parts.push(match s(&e["operator"]) {
            "In" => format!("{} in ({})", s(&e["key"]), values.join(",")),
            "NotIn" => format!("{} notin ({})", s(&e["key"]), values.join(",")),
            "Exists" => s(&e["key"]).to_string(),
            _ => format!("!{}", s(&e["key"])),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn containers_and_images(spec: &Value) -> (String, String) {
    let list = spec["containers"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = list.iter().map(|c| s(&c["name"])).collect();
    let images: Vec<&str> = list.iter().map(|c| s(&c["image"])).collect();
    (names.join(","), images.join(","))
}

fn pod_cells(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let st = &o["status"];
    let statuses = st["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
    let mut restarts = 0;
    let mut last_restart: Option<String> = None;
    let mut reason = if s(&st["reason"]).is_empty() {
        s(&st["phase"]).to_string()
    } else {
        s(&st["reason"]).to_string()
    };
    let mut has_running = false;
    for c in statuses.iter().rev() {
        restarts += c["restartCount"].as_i64().unwrap_or(0);
        if let Some(t) = c["lastState"]["terminated"]["finishedAt"].as_str()
            && last_restart.as_deref().is_none_or(|l| t > l)
        {
            last_restart = Some(t.to_string());
        }
        let state = &c["state"];
        if !s(&state["waiting"]["reason"]).is_empty() {
            reason = s(&state["waiting"]["reason"]).to_string();
        } else if state.get("terminated").is_some() {
            let t = &state["terminated"];
            reason = if !s(&t["reason"]).is_empty() {
                s(&t["reason"]).to_string()
            } else if t["signal"].as_i64().unwrap_or(0) != 0 {
                format!("Signal:{}", t["signal"])
            } else {
                format!("ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0))
            };
        } else if state.get("running").is_some() && c["ready"] == true {
            has_running = true;
        }
    }
    if reason == "Completed" && has_running {
        reason = "Running".into();
    }
    if o["metadata"]
        .get("deletionTimestamp")
        .is_some_and(|d| !d.is_null())
    {
        reason = if s(&st["reason"]) == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    let restarts = match last_restart {
        Some(t) if restarts > 0 => format!("{restarts} ({} ago)", age(Some(&t), now)),
        _ => restarts.to_string(),
    };
    vec![
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        json!(age(o["metadata"]["creationTimestamp"].as_str(), now)),
        json!(or_none(s(&st["podIP"]).to_string())),
        json!(or_none(s(&o["spec"]["nodeName"]).to_string())),
        json!(or_none(s(&st["nominatedNodeName"]).to_string())),
        json!("<none>"),
    ]
}

fn node_cells(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let conditions = o["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = conditions.iter().find(|c| c["type"] == "Ready");
    // As Kubernetes prints it: a Ready condition that is not True (False or Unknown)
    // is "NotReady"; no Ready condition at all is "Unknown".
    let mut status = match ready.map(|c| s(&c["status"])) {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if o["spec"]["unschedulable"] == true {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = o["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                (!role.is_empty()).then(|| role.to_string())
            } else if k == "kubernetes.io/role" {
                Some(s(v).to_string())
            } else {
                None
            }
        })
        .collect();
    roles.sort();
    let addr = |t: &str| {
        o["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == t)
            .map(|a| s(&a["address"]).to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    let info = &o["status"]["nodeInfo"];
    let unknown = |v: &Value| {
        if s(v).is_empty() {
            "<unknown>".to_string()
        } else {
            s(v).to_string()
        }
    };
    vec![
        json!(status),
        json!(or_none(roles.join(","))),
        json!(age(o["metadata"]["creationTimestamp"].as_str(), now)),
        json!(s(&info["kubeletVersion"])),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(unknown(&info["osImage"])),
        json!(unknown(&info["kernelVersion"])),
        json!(unknown(&info["containerRuntimeVersion"])),
    ]
}

fn service_cells(o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let spec = &o["spec"];
    let kind = s(&spec["type"]);
    let external_ips: Vec<&str> = spec["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    let external = match kind {
        "ExternalName" => s(&spec["externalName"]).to_string(),
        "LoadBalancer" => {
            let mut ips: Vec<&str> = o["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    if s(&i["ip"]).is_empty() {
                        s(&i["hostname"])
                    } else {
                        s(&i["ip"])
                    }
                })
                .collect();
            ips.extend(external_ips.iter());
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        _ => or_none(external_ips.join(",")),
    };
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match p["nodePort"].as_i64() {
            Some(np) if np > 0 => format!("{}:{np}/{}", p["port"], s(&p["protocol"])),
            _ => format!("{}/{}", p["port"], s(&p["protocol"])),
        })
        .collect();
    let cluster_ip = if s(&spec["clusterIP"]).is_empty() {
        "<none>"
    } else {
        s(&spec["clusterIP"])
    };
    vec![
        json!(kind),
        json!(cluster_ip),
        json!(external),
        json!(or_none(ports.join(","))),
        json!(age(o["metadata"]["creationTimestamp"].as_str(), now)),
        json!(or_none(label_map(&spec["selector"]))),
    ]
}

fn endpoints_summary(addrs: Vec<String>) -> String {
    if addrs.is_empty() {
        return "<none>".into();
    }
    let shown = addrs.iter().take(3).cloned().collect::<Vec<_>>().join(",");
    if addrs.len() > 3 {
        format!("{shown} + {} more...", addrs.len() - 3)
    } else {
        shown
    }
}

fn cells(kind: &str, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let created = age(o["metadata"]["creationTimestamp"].as_str(), now);
    let int = |v: &Value| json!(v.as_i64().unwrap_or(0));
    match kind {
        "Pod" => pod_cells(o, now),
        "Node" => node_cells(o, now),
        "Service" => service_cells(o, now),
        "Deployment" => {
            let st = &o["status"];
            let (c, i) = containers_and_images(&o["spec"]["template"]["spec"]);
            vec![
                json!(format!(
                    "{}/{}",
                    st["readyReplicas"].as_i64().unwrap_or(0),
                    o["spec"]["replicas"].as_i64().unwrap_or(0)
                )),
                int(&st["updatedReplicas"]),
                int(&st["availableReplicas"]),
                json!(created),
                json!(c),
                json!(i),
                json!(selector(&o["spec"]["selector"])),
            ]
        }
        "ReplicaSet" => {
            let (c, i) = containers_and_images(&o["spec"]["template"]["spec"]);
            vec![
                int(&o["spec"]["replicas"]),
                int(&o["status"]["replicas"]),
                int(&o["status"]["readyReplicas"]),
                json!(created),
                json!(c),
                json!(i),
                json!(selector(&o["spec"]["selector"])),
            ]
        }
        "Namespace" => vec![json!(s(&o["status"]["phase"])), json!(created)],
        "Endpoints" => {
            let mut addrs = Vec::new();
            for subset in o["subsets"].as_array().into_iter().flatten() {
                let ports: Vec<i64> = subset["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["port"].as_i64())
                    .collect();
                for a in subset["addresses"].as_array().into_iter().flatten() {
                    if ports.is_empty() {
                        addrs.push(s(&a["ip"]).to_string());
                    }
                    for p in &ports {
                        addrs.push(format!("{}:{p}", s(&a["ip"])));
                    }
                }
            }
            vec![json!(endpoints_summary(addrs)), json!(created)]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    p["port"]
                        .as_i64()
                        .map_or("<unset>".into(), |p| p.to_string())
                })
                .collect();
            let addrs: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .map(|a| s(&a).to_string())
                .collect();
            let ports = if ports.is_empty() {
                "<unset>".to_string()
            } else {
                ports.join(",")
            };
            vec![
                json!(s(&o["addressType"])),
                json!(ports),
                json!(endpoints_summary(addrs)),
                json!(created),
            ]
        }
        "ConfigMap" => {
            let n = o["data"].as_object().map_or(0, |m| m.len())
                + o["binaryData"].as_object().map_or(0, |m| m.len());
            vec![json!(n), json!(created)]
        }
        "Secret" => vec![
            json!(s(&o["type"])),
            json!(o["data"].as_object().map_or(0, |m| m.len())),
            json!(created),
        ],
        "ServiceAccount" => vec![
            json!(o["secrets"].as_array().map_or(0, Vec::len)),
            json!(created),
        ],
        "Lease" => vec![
            json!(or_none(s(&o["spec"]["holderIdentity"]).to_string())),
            json!(created),
        ],
        "Role" | "ClusterRole" => vec![json!(s(&o["metadata"]["creationTimestamp"]))],
        "CertificateSigningRequest" => vec![
            json!(created),
            json!(s(&o["spec"]["signerName"])),
            json!(s(&o["spec"]["username"])),
            json!(
                o["spec"]["expirationSeconds"]
                    .as_i64()
                    .map_or_else(|| "<none>".to_string(), human_duration)
            ),
            json!(crate::registry::csr::condition_column(o)),
        ],
        "RoleBinding" | "ClusterRoleBinding" => {
            let of = |kind: &str| -> String {
                o["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| x["kind"] == kind)
                    .map(|x| match (kind, x["namespace"].as_str()) {
                        ("ServiceAccount", Some(ns)) => format!("{ns}/{}", s(&x["name"])),
                        _ => s(&x["name"]).to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                json!(format!(
                    "{}/{}",
                    s(&o["roleRef"]["kind"]),
                    s(&o["roleRef"]["name"])
                )),
                json!(created),
                json!(of("User")),
                json!(of("Group")),
                json!(of("ServiceAccount")),
            ]
        }
        "Event" => {
            let last = ["lastTimestamp", "eventTime", "firstTimestamp"]
                .iter()
                .find_map(|k| o[*k].as_str())
                .map(|t| age(Some(t), now))
                .unwrap_or_else(|| human_duration(0));
            let io = &o["involvedObject"];
            vec![
                json!(last),
                json!(s(&o["type"])),
                json!(s(&o["reason"])),
                json!(format!(
                    "{}/{}",
                    s(&io["kind"]).to_lowercase(),
                    s(&io["name"])
                )),
                json!(s(&o["message"]).trim()),
            ]
        }
        _ => vec![json!(created)],
    }
}

fn row(kind: &str, o: &Value, include: IncludeObject, now: jiff::Timestamp) -> Value {
    let name = json!(s(&o["metadata"]["name"]));
    let mut c = cells(kind, o, now);
    if kind == "Event" {
        c.push(name);
    } else {
        c.insert(0, name);
    }
    let mut r = json!({"cells": c});
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => r["object"] = o.clone(),
        IncludeObject::Metadata => {
            r["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": o["metadata"].clone(),
            })
        }
    }
    r
}

/// A Table of `items`; column definitions are left out when `with_columns` is false
/// (later events of a watch, as Kubernetes does).
pub fn table(
    res: &ResourceInfo,
    items: &[Value],
    include: IncludeObject,
    with_columns: bool,
    list_meta: Value,
) -> Value {
    let now = jiff::Timestamp::now();
    let defs: Vec<Value> = if with_columns {
        columns(res.kind)
            .iter()
            .map(|Col(name, ty, priority)| {
                json!({
                    "name": name,
                    "type": ty,
                    "format": if *name == "Name" { "name" } else { "" },
                    "description": "",
                    "priority": priority,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": items.iter().map(|o| row(res.kind, o, include, now)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn cordoned_node_shows_scheduling_disabled() {
        let node = json!({"metadata": {"name": "w1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
                          "spec": {"unschedulable": true},
                          "status": {"conditions": [{"type": "Ready", "status": "True"}],
                                     "addresses": [{"type": "InternalIP", "address": "192.168.56.11"}],
                                     "nodeInfo": {"kubeletVersion": "v1.33.0"}}});
        let t = table(
            find("", "nodes").unwrap(),
            &[node],
            IncludeObject::None,
            true,
            json!({}),
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "w1");
        assert_eq!(cells[1], "Ready,SchedulingDisabled");
        assert_eq!(cells[2], "control-plane");
        assert_eq!(cells[5], "192.168.56.11");
        assert_eq!(
            t["columnDefinitions"].as_array().unwrap().len(),
            cells.as_array().unwrap().len()
        );
    }

    #[test]
    fn service_ports_show_node_ports() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.3.4",
                         "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}], "selector": {"app": "web"}}});
        let t = table(
            find("", "services").unwrap(),
            &[svc],
            IncludeObject::Metadata,
            true,
            json!({}),
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "NodePort");
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[4], "80:30080/TCP");
        assert_eq!(cells[6], "app=web");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn pod_status_reflects_waiting_reason_and_deletion() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]},
                             "status": {"phase": "Pending", "containerStatuses": [
                                {"ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let kind = "Pod";
        let now = jiff::Timestamp::now();
        assert_eq!(cells(kind, &pod, now)[1], "CrashLoopBackOff");
        assert_eq!(cells(kind, &pod, now)[0], "0/1");
        pod["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        assert_eq!(cells(kind, &pod, now)[1], "Terminating");
    }
}
