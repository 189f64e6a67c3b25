//! `tinykube ctl inspect pod|node|service`: what an object is made of on the nodes
//! (namespaces, veths, bridges, routes, the overlay, the proxy's rules with their
//! counters), read from each node's kubelet API through the API server's node proxy,
//! so it works from any machine with a kubeconfig.

use std::fmt::Write;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::client::Ctx;
use crate::print;

/// How to show what was read.
pub fn output(v: &Value, format: Option<&str>, text: impl FnOnce(&Value) -> String) -> Result<()> {
    match format {
        Some("json") => println!("{}", serde_json::to_string_pretty(v)?),
        Some("yaml") => print!("{}", print::yaml(v)),
        None | Some("text") | Some("wide") => print!("{}", text(v)),
        Some(o) => bail!(
            "unable to match a printer suitable for the output format \"{o}\", allowed formats are: json,yaml"
        ),
    }
    Ok(())
}

/// A JSON value as text: strings bare, null as `-`.
pub fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

fn limits_line(l: &Value) -> String {
    let mut parts = Vec::new();
    match l["memoryBytes"].as_u64() {
        Some(m) => parts.push(format!("memory {}", bytes(m))),
        None => parts.push("memory unlimited".into()),
    }
    match (l["cpuQuotaUs"].as_u64(), l["cpuPeriodUs"].as_u64()) {
        (Some(q), Some(p)) if p > 0 => parts.push(format!(
            "cpu {q}us per {p}us ({:.2} CPU)",
            q as f64 / p as f64
        )),
        _ => parts.push("cpu unlimited".into()),
    }
    if let Some(sh) = l["cpuShares"].as_u64() {
        parts.push(format!("shares {sh}"));
    }
    parts.join(", ")
}

fn link_line(l: &Value) -> String {
    let addrs: Vec<String> = l["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    format!(
        "{} (index {}{}) {} mac {} mtu {}",
        s(&l["name"]),
        s(&l["index"]),
        if l["kind"].as_str().is_some_and(|k| !k.is_empty()) {
            format!(", {}", s(&l["kind"]))
        } else {
            String::new()
        },
        if addrs.is_empty() {
            "no address".to_string()
        } else {
            addrs.join(" ")
        },
        s(&l["mac"]),
        s(&l["mtu"]),
    )
}

pub fn route_line(r: &Value) -> String {
    let mut out = s(&r["destination"]);
    if let Some(g) = r["gateway"].as_str() {
        let _ = write!(out, " via {g}");
    }
    let _ = write!(out, " dev {}", s(&r["device"]));
    if r["scope"] == "link" {
        out.push_str(" scope link");
    }
    if let Some(src) = r["source"].as_str() {
        let _ = write!(out, " src {src}");
    }
    if r["onlink"] == true {
        out.push_str(" onlink");
    }
    out
}

/// The pod's text form.
pub fn pod_text(v: &Value) -> String {
    let mut o = String::new();
    let p = &v["pod"];
    let _ = writeln!(
        o,
        "Pod {}/{} on node {}, IP {} (uid {})",
        s(&p["namespace"]),
        s(&p["name"]),
        s(&p["node"]),
        s(&p["ip"]),
        s(&p["uid"])
    );
    let sb = &v["sandbox"];
    let _ = writeln!(
        o,
        "\nSandbox: the pause container holds the pod's namespaces"
    );
    let _ = writeln!(o, "  container  {}", s(&sb["id"]));
    let _ = writeln!(o, "  pid        {}", s(&sb["pid"]));
    let _ = writeln!(o, "  image      {}", s(&sb["image"]));
    let _ = writeln!(
        o,
        "  netns      {} (inode {})",
        s(&sb["netns"]["path"]),
        s(&sb["netns"]["inode"])
    );
    let _ = writeln!(o, "  cgroup     {}", s(&sb["cgroup"]["path"]));
    let _ = writeln!(
        o,
        "  pod cgroup {} ({})",
        s(&v["podCgroup"]["path"]),
        limits_line(&v["podCgroup"]["limits"])
    );
    let kinds = ["net", "ipc", "uts", "pid", "mnt"];
    let _ = writeln!(
        o,
        "\nNamespaces (inodes; = shared with the pause container, * its own)"
    );
    let _ = write!(o, "  {:<16}", "");
    for k in kinds {
        let _ = write!(o, " {k:<12}");
    }
    o.push('\n');
    let _ = write!(o, "  {:<16}", "pause");
    for k in kinds {
        let _ = write!(o, " {:<12}", s(&sb["namespaces"][k]));
    }
    o.push('\n');
    let containers = v["containers"].as_array().cloned().unwrap_or_default();
    for c in &containers {
        let _ = write!(o, "  {:<16}", s(&c["name"]));
        for k in kinds {
            let n = &c["namespaces"][k];
            let mark = if n["sharedWithPause"] == true {
                "="
            } else {
                "*"
            };
            let cell = if n["inode"].is_null() {
                "-".to_string()
            } else {
                format!("{}{mark}", s(&n["inode"]))
            };
            let _ = write!(o, " {cell:<12}");
        }
        o.push('\n');
    }
    let _ = writeln!(o, "\nContainers");
    for c in &containers {
        let _ = writeln!(
            o,
            "  {}{}: {}, pid {}, restarts {}",
            s(&c["name"]),
            if c["init"] == true { " (init)" } else { "" },
            s(&c["state"]),
            s(&c["pid"]),
            s(&c["restarts"])
        );
        let _ = writeln!(o, "    id        {}", s(&c["id"]));
        let _ = writeln!(o, "    image     {} ({})", s(&c["image"]), s(&c["imageID"]));
        if c["snapshot"].is_object() {
            let _ = writeln!(
                o,
                "    snapshot  {} {} (upper dir {})",
                s(&c["snapshot"]["snapshotter"]),
                s(&c["snapshot"]["key"]),
                s(&c["snapshot"]["upperdir"])
            );
        }
        let cg = &c["cgroup"];
        let _ = writeln!(o, "    cgroup    {}", s(&cg["path"]));
        let _ = writeln!(o, "    limits    {}", limits_line(&cg["limits"]));
        if cg["usage"].is_object() {
            let u = &cg["usage"];
            let _ = writeln!(
                o,
                "    usage     cpu {:.2}s, memory {} (working set {})",
                u["cpuNanoseconds"].as_f64().unwrap_or(0.0) / 1e9,
                bytes(u["memoryBytes"].as_u64().unwrap_or(0)),
                bytes(u["workingSetBytes"].as_u64().unwrap_or(0))
            );
        }
        for l in c["logs"].as_array().into_iter().flatten() {
            let _ = writeln!(o, "    log       {}", s(l));
        }
    }
    let _ = writeln!(o, "\nNetwork");
    if v["eth0"].is_object() {
        let _ = writeln!(o, "  in the pod  {}", link_line(&v["eth0"]));
    }
    for r in v["routes"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "    route     {}", route_line(r));
    }
    let veth = &v["veth"];
    if veth.is_object() {
        let _ = writeln!(o, "  on the node {}", link_line(veth));
        let b = &veth["bridge"];
        if b.is_object() {
            let _ = writeln!(
                o,
                "    a port of bridge {} ({}), hairpin {}",
                s(&b["name"]),
                b["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(s)
                    .collect::<Vec<_>>()
                    .join(" "),
                if veth["hairpin"] == true { "on" } else { "off" }
            );
        }
    }
    o
}

/// The pod, checked to exist and run before its node is asked.
/// `NAME` or kubectl's `KIND/NAME` (`pod/web-1`, `po/web-1`, `node/w1`, `svc/web`).
pub fn bare<'a>(name: &'a str, kinds: &[&str]) -> &'a str {
    match name.split_once('/') {
        Some((k, n)) if kinds.contains(&k) => n,
        _ => name,
    }
}

pub async fn pod(ctx: &mut Ctx, name: &str) -> Result<Value> {
    let name = bare(name, &["pod", "pods", "po"]);
    let ns = ctx.namespace.clone();
    let p = ctx
        .get_json(&format!("/api/v1/namespaces/{ns}/pods/{name}"))
        .await?;
    let phase = p["status"]["phase"].as_str().unwrap_or("Pending");
    let Some(node) = p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        bail!("pod {name} is not running yet: it is {phase} and not scheduled to a node");
    };
    if phase != "Running" {
        bail!("pod {name} is not running: it is {phase} on node {node}");
    }
    ctx.get_json(&format!(
        "/api/v1/nodes/{node}/proxy/inspect/pods/{ns}/{name}"
    ))
    .await
}

/// The node's text form.
pub fn node_text(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Node {} ({})", s(&v["node"]), s(&v["nodeIP"]));
    let _ = writeln!(o, "\nPod subnet");
    let _ = writeln!(
        o,
        "  podCIDR   {} (gateway {})",
        s(&v["podCIDR"]),
        s(&v["gateway"])
    );
    let _ = writeln!(o, "  from      {}", s(&v["podCIDRFrom"]));
    if v["bridge"].is_object() {
        let _ = writeln!(o, "  bridge    {}", link_line(&v["bridge"]));
    }
    let ports = v["ports"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(o, "  ports     {}", ports.len());
    for p in &ports {
        let _ = writeln!(
            o,
            "    {:<16} {:<24} {:<15} hairpin {:<3} rx {} tx {} packets",
            s(&p["name"]),
            p["pod"].as_str().unwrap_or("(no pod)"),
            p["podIP"].as_str().unwrap_or("-"),
            if p["hairpin"] == true { "on" } else { "off" },
            s(&p["rxPackets"]),
            s(&p["txPackets"]),
        );
    }
    let _ = writeln!(o, "\nRoutes");
    for r in v["routes"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "  {}", route_line(r));
    }
    let ov = &v["overlay"];
    if ov.is_object() {
        let _ = writeln!(o, "\nOverlay");
        let _ = writeln!(
            o,
            "  backend   {} on {}, pod MTU {} (uplink {})",
            s(&ov["backend"]),
            ov["device"].as_str().unwrap_or("no device"),
            s(&ov["mtu"]),
            s(&ov["uplinkMTU"])
        );
        let e = &ov["encapsulation"];
        let _ = writeln!(
            o,
            "  encap     {}{}{}",
            s(&e["protocol"]),
            e["port"]
                .as_u64()
                .map(|p| format!(" port {p}"))
                .unwrap_or_default(),
            e["vni"]
                .as_u64()
                .map(|p| format!(" VNI {p}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            o,
            "  this node {} subnet {}{}",
            s(&ov["publicIP"]),
            s(&ov["subnet"]),
            ov["vtepMAC"]
                .as_str()
                .map(|m| format!(" VTEP {m}"))
                .unwrap_or_default()
        );
        let _ = writeln!(o, "  peers");
        for p in ov["peers"].as_array().into_iter().flatten() {
            let _ = writeln!(
                o,
                "    {:<12} {:<15} {:<15}{} out {} pkts/{} in {} pkts/{} dropped {}",
                s(&p["node"]),
                s(&p["subnet"]),
                s(&p["publicIP"]),
                p["vtepMAC"]
                    .as_str()
                    .map(|m| format!(" VTEP {m}"))
                    .unwrap_or_default(),
                s(&p["encapPackets"]),
                p["encapBytes"].as_u64().map(bytes).unwrap_or("-".into()),
                s(&p["decapPackets"]),
                p["decapBytes"].as_u64().map(bytes).unwrap_or("-".into()),
                s(&p["dropped"]),
            );
        }
        if let Some(d) = ov["dropped"].as_object()
            && !d.is_empty()
        {
            let reasons: Vec<String> = d.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(o, "  dropped   {}", reasons.join(", "));
        }
        let dc = &ov["deviceCounters"];
        if dc.is_object() {
            let _ = writeln!(
                o,
                "  device    rx {} packets ({}), tx {} packets ({})",
                s(&dc["rxPackets"]),
                bytes(dc["rxBytes"].as_u64().unwrap_or(0)),
                s(&dc["txPackets"]),
                bytes(dc["txBytes"].as_u64().unwrap_or(0))
            );
        }
    }
    let r = &v["serviceRules"];
    if r.is_object() {
        let _ = writeln!(o, "\nService rules (nat table)");
        let _ = writeln!(
            o,
            "  {} KUBE-* rules, {} service chains, {} endpoint chains",
            s(&r["natRules"]),
            s(&r["serviceChains"]),
            s(&r["endpointChains"])
        );
        for m in r["masquerade"].as_array().into_iter().flatten() {
            let _ = writeln!(
                o,
                "  masquerade [{} pkts] -A {} {}",
                s(&m["packets"]),
                s(&m["chain"]),
                s(&m["spec"])
            );
        }
    }
    let d = &v["dns"];
    if d.is_object() {
        let _ = writeln!(o, "\nCluster DNS on {}", s(&d["address"]));
        let _ = writeln!(
            o,
            "  {} requests, cache {} hits / {} misses, {} forwarded ({} failed), {} malformed; {} services",
            s(&d["requests"]),
            s(&d["cacheHits"]),
            s(&d["cacheMisses"]),
            s(&d["forwarded"]),
            s(&d["forwardFailed"]),
            s(&d["malformed"]),
            s(&d["services"])
        );
    }
    o
}

pub async fn node(ctx: &mut Ctx, name: &str) -> Result<Value> {
    let name = bare(name, &["node", "nodes", "no"]);
    ctx.get_json(&format!("/api/v1/nodes/{name}")).await?;
    ctx.get_json(&format!("/api/v1/nodes/{name}/proxy/inspect/node"))
        .await
}

/// The service, its endpoints with their nodes, and each node's rules for it.
pub async fn service(ctx: &mut Ctx, name: &str) -> Result<Value> {
    let name = bare(name, &["service", "services", "svc"]);
    let ns = ctx.namespace.clone();
    let svc = ctx
        .get_json(&format!("/api/v1/namespaces/{ns}/services/{name}"))
        .await?;
    let slices = ctx
        .get_json(&format!(
            "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{name}"
        ))
        .await?;
    let mut endpoints = Vec::new();
    for sl in slices["items"].as_array().into_iter().flatten() {
        for e in sl["endpoints"].as_array().into_iter().flatten() {
            endpoints.push(json!({
                "addresses": e["addresses"],
                "node": e["nodeName"],
                "pod": e["targetRef"]["name"],
                "ready": e["conditions"]["ready"],
            }));
        }
    }
    let nodes = ctx.get_json("/api/v1/nodes").await?;
    let mut per_node = Vec::new();
    for n in nodes["items"].as_array().into_iter().flatten() {
        let node = n["metadata"]["name"].as_str().unwrap_or_default();
        let r = ctx
            .get_json(&format!(
                "/api/v1/nodes/{node}/proxy/inspect/services/{ns}/{name}"
            ))
            .await;
        per_node.push(match r {
            Ok(v) => json!({"node": node, "rules": v}),
            Err(e) => json!({"node": node, "error": e.to_string()}),
        });
    }
    let spec = &svc["spec"];
    Ok(json!({
        "service": {"namespace": ns, "name": name, "type": spec["type"],
                    "clusterIP": spec["clusterIP"], "ports": spec["ports"],
                    "externalIPs": spec["externalIPs"],
                    "ingress": svc["status"]["loadBalancer"]["ingress"]},
        "endpoints": endpoints,
        "nodes": per_node,
    }))
}

pub fn service_text(v: &Value) -> String {
    let mut o = String::new();
    let sv = &v["service"];
    let _ = writeln!(
        o,
        "Service {}/{} ({}), cluster IP {}",
        s(&sv["namespace"]),
        s(&sv["name"]),
        s(&sv["type"]),
        s(&sv["clusterIP"])
    );
    for p in sv["ports"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "  port {}/{} -> target {}{}{}",
            s(&p["port"]),
            s(&p["protocol"]),
            s(&p["targetPort"]),
            p["nodePort"]
                .as_u64()
                .map(|n| format!(", node port {n}"))
                .unwrap_or_default(),
            p["name"]
                .as_str()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
    for i in sv["ingress"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "  ingress {}", s(&i["ip"]));
    }
    let eps = v["endpoints"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(o, "\nEndpoints ({})", eps.len());
    for e in &eps {
        let _ = writeln!(
            o,
            "  {:<15} pod {:<28} node {:<12} {}",
            e["addresses"]
                .as_array()
                .and_then(|a| a.first())
                .map(s)
                .unwrap_or_default(),
            s(&e["pod"]),
            s(&e["node"]),
            if e["ready"] == false {
                "not ready"
            } else {
                "ready"
            }
        );
    }
    for n in v["nodes"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "\nOn node {}", s(&n["node"]));
        if let Some(e) = n["error"].as_str() {
            let _ = writeln!(o, "  cannot read the rules: {e}");
            continue;
        }
        let r = &n["rules"];
        for e in r["entries"].as_array().into_iter().flatten() {
            let _ = writeln!(
                o,
                "  {} [{} conns] {} -> {}",
                s(&e["chain"]),
                s(&e["packets"]),
                s(&e["comment"]),
                s(&e["target"])
            );
        }
        for ep in r["endpoints"].as_array().into_iter().flatten() {
            let _ = writeln!(
                o,
                "    {} -> {} (probability {}, overall {:.0}%) [{} conns] -> DNAT {}",
                s(&ep["from"]),
                s(&ep["chain"]),
                ep["probability"]
                    .as_f64()
                    .map(|p| format!("{p:.4}"))
                    .unwrap_or_else(|| "rest".into()),
                ep["share"].as_f64().unwrap_or(0.0) * 100.0,
                s(&ep["connections"]),
                s(&ep["endpoint"])
            );
        }
        if r["entries"].as_array().is_none_or(|a| a.is_empty()) {
            let _ = writeln!(
                o,
                "  no rules (no endpoints, or the proxy has not caught up)"
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_may_come_with_kubectl_s_kind_prefix() {
        assert_eq!(bare("pod/web-1", &["pod", "po"]), "web-1");
        assert_eq!(bare("po/web-1", &["pod", "po"]), "web-1");
        assert_eq!(bare("web-1", &["pod", "po"]), "web-1");
        assert_eq!(bare("svc/web", &["pod", "po"]), "svc/web");
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(64 * 1024 * 1024), "64.0 MiB");
        assert_eq!(bytes(1536), "1.5 KiB");
    }

    #[test]
    fn routes_read_as_ip_route_prints_them() {
        let r = json!({"destination": "default", "gateway": "10.244.1.1", "device": "eth0", "scope": "global"});
        assert_eq!(route_line(&r), "default via 10.244.1.1 dev eth0");
        let r = json!({"destination": "10.244.1.0/24", "device": "eth0", "scope": "link", "source": "10.244.1.5"});
        assert_eq!(
            route_line(&r),
            "10.244.1.0/24 dev eth0 scope link src 10.244.1.5"
        );
    }
}
