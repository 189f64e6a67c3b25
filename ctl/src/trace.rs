//! `tinykube ctl trace FROM TO[:PORT] [--probe]`: the path a packet from pod FROM takes
//! to a pod, a Service or an address, hop by hop, with this cluster's real objects (the
//! pod's eth0 and route, its veth and the bridge, the Service's DNAT and each endpoint's
//! chance, the node's route, the overlay and its encapsulation, the peer node, its
//! bridge, the destination pod). With `--probe`, one real connection is made from FROM
//! and each hop shows how far its counters moved.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

use anyhow::{Result, anyhow, bail};
use serde_json::Value;

use crate::client::Ctx;
use crate::inspect::{route_line, s};

fn in_cidr(cidr: &str, ip: Ipv4Addr) -> Option<u8> {
    if cidr == "default" {
        return Some(0);
    }
    let (a, p) = cidr.split_once('/')?;
    let (a, p): (Ipv4Addr, u8) = (a.parse().ok()?, p.parse().ok()?);
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    (u32::from(a) & mask == u32::from(ip) & mask).then_some(p)
}

/// The route the kernel would pick for `ip`: the longest matching prefix.
pub fn route_for(routes: &Value, ip: Ipv4Addr) -> Option<&Value> {
    routes
        .as_array()?
        .iter()
        .filter_map(|r| in_cidr(r["destination"].as_str()?, ip).map(|p| (p, r)))
        .max_by_key(|(p, _)| *p)
        .map(|(_, r)| r)
}

fn ip_of(v: &Value) -> Option<Ipv4Addr> {
    v.as_str()?.split('/').next()?.parse().ok()
}

/// What a trace goes to.
enum Target {
    Pod {
        name: String,
        ip: Ipv4Addr,
    },
    Service {
        name: String,
        ip: Ipv4Addr,
        port: u16,
    },
}

/// One step of the path, and the counter that shows a packet passing it.
struct Hop {
    text: String,
    counter: Option<String>,
}

/// Everything the trace reads; read twice around a probe.
struct Reading {
    from: Value,
    src_node: Value,
    rules: Option<Value>,
    /// Every candidate destination pod by its IP, and the nodes they are on.
    dst_pods: BTreeMap<Ipv4Addr, Value>,
    dst_nodes: BTreeMap<String, Value>,
}

impl Reading {
    /// Each counter by name (what `Hop::counter` refers to).
    fn counters(&self) -> BTreeMap<String, u64> {
        let mut c = BTreeMap::new();
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        c.insert("src-eth0".into(), n(&self.from["eth0"]["txPackets"]));
        c.insert("src-veth".into(), n(&self.from["veth"]["rxPackets"]));
        if let Some(r) = &self.rules {
            for e in r["endpoints"].as_array().into_iter().flatten() {
                c.insert(format!("sep:{}", s(&e["endpoint"])), n(&e["connections"]));
            }
        }
        for p in self.src_node["overlay"]["peers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            c.insert(
                format!("overlay-out:{}", s(&p["node"])),
                n(&p["encapPackets"]),
            );
        }
        let dc = &self.src_node["overlay"]["deviceCounters"];
        c.insert("device-out".into(), n(&dc["txPackets"]));
        for (name, node) in &self.dst_nodes {
            for p in node["overlay"]["peers"].as_array().into_iter().flatten() {
                c.insert(
                    format!("overlay-in:{name}:{}", s(&p["node"])),
                    n(&p["decapPackets"]),
                );
            }
            let dc = &node["overlay"]["deviceCounters"];
            c.insert(format!("device-in:{name}"), n(&dc["rxPackets"]));
        }
        for (ip, d) in &self.dst_pods {
            c.insert(format!("dst-veth:{ip}"), n(&d["veth"]["txPackets"]));
            c.insert(format!("dst-eth0:{ip}"), n(&d["eth0"]["rxPackets"]));
        }
        c
    }
}

fn full_name(o: &Value) -> String {
    format!(
        "{}/{}",
        s(&o["metadata"]["namespace"]),
        s(&o["metadata"]["name"])
    )
}

fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list["items"].as_array().into_iter().flatten()
}

/// What TO names, among the cluster's `services` and `pods` (lists).
fn resolve(ns: &str, services: &Value, pods: &Value, to: &str) -> Result<Target> {
    // kubectl's KIND/NAME narrows the name to services or to pods.
    let (only, to) = match to.split_once('/') {
        Some(("svc" | "service" | "services", rest)) => (Some("service"), rest),
        Some(("po" | "pod" | "pods", rest)) => (Some("pod"), rest),
        _ => (None, to),
    };
    let (host, port) = match to.rsplit_once(':') {
        Some((h, p)) => (
            h,
            Some(
                p.parse::<u16>()
                    .map_err(|_| anyhow!("{to}: the port must be a number"))?,
            ),
        ),
        None => (to, None),
    };
    let service = |svc: &Value| -> Result<Target> {
        let ip = ip_of(&svc["spec"]["clusterIP"]).ok_or_else(|| {
            anyhow!("service {host} has no cluster IP (headless or ExternalName)")
        })?;
        let first = svc["spec"]["ports"][0]["port"].as_u64().map(|p| p as u16);
        let port = port
            .or(first)
            .ok_or_else(|| anyhow!("service {host} has no ports"))?;
        Ok(Target::Service {
            name: full_name(svc),
            ip,
            port,
        })
    };
    let pod = |p: &Value| -> Result<Target> {
        let ip = ip_of(&p["status"]["podIP"]).ok_or_else(|| anyhow!("pod {host} has no IP yet"))?;
        Ok(Target::Pod {
            name: full_name(p),
            ip,
        })
    };
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        if let Some(svc) = items(services).find(|v| ip_of(&v["spec"]["clusterIP"]) == Some(ip)) {
            return service(svc);
        }
        if let Some(p) = items(pods).find(|v| ip_of(&v["status"]["podIP"]) == Some(ip)) {
            return pod(p);
        }
        bail!(
            "{ip} is outside the cluster: no pod or Service has this address, so the path ends at the node's default route"
        );
    }
    let in_ns = |v: &&Value| v["metadata"]["namespace"] == ns && v["metadata"]["name"] == host;
    if only != Some("pod")
        && let Some(svc) = items(services).find(in_ns)
    {
        return service(svc);
    }
    if only != Some("service")
        && let Some(p) = items(pods).find(in_ns)
    {
        return pod(p);
    }
    bail!(
        "no {} named \"{host}\" in namespace \"{ns}\"",
        only.unwrap_or("pod or service")
    )
}

/// The pod with address `ip` among `pods`, as `namespace`, `name` and its node.
fn pod_at(pods: &Value, ip: Ipv4Addr) -> Option<(String, String, String)> {
    items(pods)
        .find(|p| ip_of(&p["status"]["podIP"]) == Some(ip))
        .map(|p| {
            (
                s(&p["metadata"]["namespace"]),
                s(&p["metadata"]["name"]),
                s(&p["spec"]["nodeName"]),
            )
        })
}

/// The Service's rules on node `node` with their counters (None for a pod).
async fn service_rules(ctx: &mut Ctx, node: &str, target: &Target) -> Result<Option<Value>> {
    let Target::Service { name, .. } = target else {
        return Ok(None);
    };
    let (ns, n) = name.split_once('/').unwrap_or(("default", name));
    Ok(Some(
        ctx.get_json(&format!(
            "/api/v1/nodes/{node}/proxy/inspect/services/{ns}/{n}"
        ))
        .await?,
    ))
}

async fn read(
    ctx: &mut Ctx,
    from: &str,
    src_node: &str,
    target: &Target,
    dsts: &[(Ipv4Addr, String, String, String)],
) -> Result<Reading> {
    let from_v = crate::inspect::pod(ctx, from).await?;
    let src = ctx
        .get_json(&format!("/api/v1/nodes/{src_node}/proxy/inspect/node"))
        .await?;
    let rules = service_rules(ctx, src_node, target).await?;
    let mut dst_pods = BTreeMap::new();
    let mut dst_nodes = BTreeMap::new();
    for (ip, ns, name, node) in dsts {
        let v = ctx
            .get_json(&format!(
                "/api/v1/nodes/{node}/proxy/inspect/pods/{ns}/{name}"
            ))
            .await?;
        dst_pods.insert(*ip, v);
        if !dst_nodes.contains_key(node) {
            let v = if node == src_node {
                src.clone()
            } else {
                ctx.get_json(&format!("/api/v1/nodes/{node}/proxy/inspect/node"))
                    .await?
            };
            dst_nodes.insert(node.clone(), v);
        }
    }
    Ok(Reading {
        from: from_v,
        src_node: src,
        rules,
        dst_pods,
        dst_nodes,
    })
}

/// Runs the trace and prints it.
pub async fn trace(ctx: &mut Ctx, from: &str, to: &str, probe: bool) -> Result<()> {
    let from = crate::inspect::bare(from, &["pod", "pods", "po"]);
    let first = crate::inspect::pod(ctx, from).await?;
    let src_node = s(&first["pod"]["node"]);
    // The cluster's services and pods, read once: TO and the endpoints' pods are
    // looked up in them.
    let services = ctx.get_json("/api/v1/services").await?;
    let pods = ctx.get_json("/api/v1/pods").await?;
    let target = resolve(&ctx.namespace, &services, &pods, to)?;
    // Before a probe, every endpoint is a candidate; the probe shows which one it took.
    let rules_before = service_rules(ctx, &src_node, &target).await?;
    let endpoints: Vec<Value> = rules_before
        .as_ref()
        .and_then(|r| r["endpoints"].as_array().cloned())
        .unwrap_or_default();
    if matches!(target, Target::Service { .. }) && endpoints.is_empty() {
        bail!("{to} has no endpoints on node {src_node}: a connection to it is refused there");
    }
    let mut dst_ip = match &target {
        Target::Pod { ip, .. } => *ip,
        Target::Service { .. } => endpoints[0]["endpoint"]
            .as_str()
            .and_then(|e| e.split(':').next())
            .and_then(|e| e.parse().ok())
            .ok_or_else(|| anyhow!("cannot read the endpoint of {to}"))?,
    };
    let port = match &target {
        Target::Service { port, .. } => *port,
        Target::Pod { .. } => to
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(8080),
    };
    // Every candidate destination: the pod, or each endpoint's pod.
    let candidates: Vec<Ipv4Addr> = match &target {
        Target::Pod { ip, .. } => vec![*ip],
        Target::Service { .. } => endpoints
            .iter()
            .filter_map(|e| e["endpoint"].as_str()?.split(':').next()?.parse().ok())
            .collect(),
    };
    let mut dsts = Vec::new();
    for ip in &candidates {
        if let Some((ns, name, node)) = pod_at(&pods, *ip) {
            dsts.push((*ip, ns, name, node));
        }
    }
    let mut probe_result = None;
    let mut moved = BTreeMap::new();
    let reading = if probe {
        let before = read(ctx, from, &src_node, &target, &dsts).await?.counters();
        let to_addr = match &target {
            Target::Service { ip, .. } | Target::Pod { ip, .. } => format!("{ip}:{port}"),
        };
        let ns = ctx.namespace.clone();
        probe_result = Some(
            ctx.get_json(&format!(
                "/api/v1/nodes/{src_node}/proxy/inspect/probe/{ns}/{from}?to={to_addr}"
            ))
            .await?,
        );
        let after = read(ctx, from, &src_node, &target, &dsts).await?;
        for (k, v) in after.counters() {
            moved.insert(
                k.clone(),
                v.saturating_sub(before.get(&k).copied().unwrap_or(v)),
            );
        }
        // The endpoint whose counter moved is the one the probe went to.
        if let Some(ip) = moved
            .iter()
            .find(|(k, n)| k.starts_with("sep:") && **n > 0)
            .and_then(|(k, _)| k.trim_start_matches("sep:").split(':').next()?.parse().ok())
        {
            dst_ip = ip;
        }
        after
    } else {
        read(ctx, from, &src_node, &target, &dsts).await?
    };
    let dst = dsts
        .iter()
        .find(|d| d.0 == dst_ip)
        .map(|(_, ns, name, node)| (ns.clone(), name.clone(), node.clone()));
    let hops = path(&reading, &target, dst_ip, dst.as_ref(), &src_node);
    let mut o = String::new();
    let target_text = match &target {
        Target::Pod { name, ip } => format!("pod {name} ({ip})"),
        Target::Service { name, ip, port } => format!("service {name} ({ip}:{port})"),
    };
    let _ = writeln!(
        o,
        "Trace from pod {}/{} ({} on {}) to {}",
        s(&reading.from["pod"]["namespace"]),
        s(&reading.from["pod"]["name"]),
        s(&reading.from["pod"]["ip"]),
        src_node,
        target_text
    );
    for (i, h) in hops.iter().enumerate() {
        let mark = match (&h.counter, probe) {
            (Some(c), true) => match moved.get(c) {
                Some(0) | None => "  [counter did not move]".to_string(),
                Some(n) if c.starts_with("sep:") => format!("  [+{n} connections]"),
                Some(n) => format!("  [+{n} packets]"),
            },
            _ => String::new(),
        };
        let mut lines = h.text.lines();
        let _ = writeln!(
            o,
            "{:>3}. {}{mark}",
            i + 1,
            lines.next().unwrap_or_default()
        );
        for l in lines {
            let _ = writeln!(o, "     {l}");
        }
    }
    if let Some(r) = probe_result {
        let _ = writeln!(
            o,
            "probe: one TCP connection to {} from inside the pod: {} in {:.1} ms",
            s(&r["to"]),
            if r["connected"] == true {
                "connected".to_string()
            } else {
                format!("failed ({})", s(&r["error"]))
            },
            r["millis"].as_f64().unwrap_or(0.0)
        );
    }
    print!("{o}");
    Ok(())
}

/// The hops, from what was read.
fn path(
    r: &Reading,
    target: &Target,
    dst_ip: Ipv4Addr,
    dst: Option<&(String, String, String)>,
    src_node: &str,
) -> Vec<Hop> {
    let mut hops = Vec::new();
    let from = &r.from;
    let to_ip = match target {
        Target::Pod { ip, .. } | Target::Service { ip, .. } => *ip,
    };
    let pod_route = route_for(&from["routes"], to_ip)
        .map(route_line)
        .unwrap_or_else(|| "no route".into());
    hops.push(Hop {
        text: format!(
            "pod {}/{} eth0 {} mtu {} (in its own network namespace): route \"{pod_route}\"",
            s(&from["pod"]["namespace"]),
            s(&from["pod"]["name"]),
            s(&from["pod"]["ip"]),
            s(&from["eth0"]["mtu"]),
        ),
        counter: Some("src-eth0".into()),
    });
    let bridge = &from["veth"]["bridge"];
    hops.push(Hop {
        text: format!(
            "veth {} (index {}) on node {src_node}, the pod's other end, a port of bridge {} ({})",
            s(&from["veth"]["name"]),
            s(&from["veth"]["index"]),
            s(&bridge["name"]),
            bridge["addresses"]
                .as_array()
                .and_then(|a| a.first())
                .map(s)
                .unwrap_or_default()
        ),
        counter: Some("src-veth".into()),
    });
    if let (Target::Service { name, ip, port }, Some(rules)) = (target, &r.rules) {
        let entry = rules["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["chain"] == "KUBE-SERVICES")
            .map(|e| format!("{} -> {}", s(&e["comment"]), s(&e["target"])))
            .unwrap_or_default();
        let mut text = format!(
            "nat PREROUTING -> KUBE-SERVICES on {src_node}: {ip}:{port} is service {name}: {entry}"
        );
        for e in rules["endpoints"].as_array().into_iter().flatten() {
            let _ = write!(
                text,
                "\n  {} -> DNAT {} ({:.0}% of new connections)",
                s(&e["chain"]),
                s(&e["endpoint"]),
                e["share"].as_f64().unwrap_or(0.0) * 100.0
            );
        }
        let chosen = rules["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["endpoint"].as_str())
            .find(|e| e.split(':').next() == Some(dst_ip.to_string().as_str()))
            .unwrap_or_default()
            .to_string();
        let _ = write!(text, "\n  the packet leaves with destination {chosen}");
        hops.push(Hop {
            text,
            counter: Some(format!("sep:{chosen}")),
        });
    }
    let node_route = route_for(&r.src_node["routes"], dst_ip);
    let dev = node_route.map(|x| s(&x["device"])).unwrap_or_default();
    hops.push(Hop {
        text: format!(
            "route on {src_node} for {dst_ip}: \"{}\"",
            node_route.map(route_line).unwrap_or_else(|| "none".into())
        ),
        counter: None,
    });
    let ov = &r.src_node["overlay"];
    let bridge_name = s(&r.src_node["bridge"]["name"]);
    let dst_node_name = dst.map(|d| d.2.clone()).unwrap_or_default();
    if dev != bridge_name {
        let peer = ov["peers"].as_array().into_iter().flatten().find(|p| {
            p["subnet"]
                .as_str()
                .and_then(|c| in_cidr(c, dst_ip))
                .is_some()
        });
        let enc = &ov["encapsulation"];
        match peer {
            Some(p) => {
                let backend = s(&ov["backend"]);
                let outer = match enc["port"].as_u64() {
                    Some(port) => format!(
                        "inside {} {} -> {}:{port}{} ({} bytes more)",
                        s(&enc["protocol"]).to_uppercase(),
                        s(&ov["publicIP"]),
                        s(&p["publicIP"]),
                        enc["vni"]
                            .as_u64()
                            .map(|v| format!(" VNI {v}"))
                            .unwrap_or_default(),
                        s(&enc["outerHeaderBytes"]),
                    ),
                    None => format!(
                        "routed as it is to {} (host-gw: no encapsulation)",
                        s(&p["publicIP"])
                    ),
                };
                let per_peer = backend == "udp";
                hops.push(Hop {
                    text: format!(
                        "overlay {} ({backend}) on {src_node}: peer {} holds {}; the packet goes {outer}",
                        ov["device"].as_str().unwrap_or(&dev),
                        s(&p["node"]),
                        s(&p["subnet"]),
                    ),
                    counter: Some(if per_peer {
                        format!("overlay-out:{}", s(&p["node"]))
                    } else {
                        "device-out".into()
                    }),
                });
                if let Some(dn) = r.dst_nodes.get(&dst_node_name) {
                    let dov = &dn["overlay"];
                    let back = dov["peers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|x| x["node"] == src_node)
                        .map(|x| s(&x["node"]))
                        .unwrap_or_else(|| src_node.to_string());
                    let route = route_for(&dn["routes"], dst_ip)
                        .map(route_line)
                        .unwrap_or_else(|| "none".into());
                    hops.push(Hop {
                        text: format!(
                            "node {} ({}) takes it off the wire on {} and unwraps it; route \"{route}\"",
                            s(&p["node"]),
                            s(&p["publicIP"]),
                            dov["device"].as_str().unwrap_or("its uplink"),
                        ),
                        counter: Some(if per_peer {
                            format!("overlay-in:{dst_node_name}:{back}")
                        } else {
                            format!("device-in:{dst_node_name}")
                        }),
                    });
                }
            }
            None => hops.push(Hop {
                text: format!(
                    "no overlay peer holds {dst_ip}: the packet leaves {src_node} by {dev}"
                ),
                counter: None,
            }),
        }
    }
    if let (Some(d), Some((ns, name, node))) = (r.dst_pods.get(&dst_ip), dst) {
        hops.push(Hop {
            text: format!(
                "bridge {} on {node} -> veth {} (index {})",
                s(&d["veth"]["bridge"]["name"]),
                s(&d["veth"]["name"]),
                s(&d["veth"]["index"])
            ),
            counter: Some(format!("dst-veth:{dst_ip}")),
        });
        hops.push(Hop {
            text: format!(
                "pod {ns}/{name} eth0 {} on {dst_node_name}",
                s(&d["pod"]["ip"])
            ),
            counter: Some(format!("dst-eth0:{dst_ip}")),
        });
    }
    hops
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn to_names_a_service_a_pod_or_an_address() {
        let services = json!({"items": [{"metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}}]});
        let pods = json!({"items": [{"metadata": {"namespace": "default", "name": "web"},
            "status": {"podIP": "10.244.1.7"}, "spec": {"nodeName": "w1"}}]});
        let r = |to: &str| resolve("default", &services, &pods, to);
        assert!(matches!(r("web"), Ok(Target::Service { port: 80, .. })));
        assert!(matches!(
            r("svc/web:81"),
            Ok(Target::Service { port: 81, .. })
        ));
        assert!(matches!(r("pod/web"), Ok(Target::Pod { .. })));
        assert!(matches!(r("10.96.0.5"), Ok(Target::Service { .. })));
        assert!(matches!(r("10.244.1.7:8080"), Ok(Target::Pod { .. })));
        let e = r("203.0.113.9").err().unwrap().to_string();
        assert!(e.contains("outside the cluster"), "{e}");
        let e = r("pod/nope").err().unwrap().to_string();
        assert!(e.contains("no pod named \"nope\""), "{e}");
        assert!(r("web:http").is_err());
        assert_eq!(
            pod_at(&pods, "10.244.1.7".parse().unwrap()).unwrap().2,
            "w1"
        );
    }

    #[test]
    fn the_longest_prefix_is_the_route() {
        let routes = json!([
            {"destination": "default", "device": "eth0"},
            {"destination": "10.244.0.0/16", "device": "flannel0"},
            {"destination": "10.244.1.0/24", "device": "cni0"},
        ]);
        let dev = |ip: &str| s(&route_for(&routes, ip.parse().unwrap()).unwrap()["device"]);
        assert_eq!(dev("10.244.1.9"), "cni0");
        assert_eq!(dev("10.244.2.9"), "flannel0");
        assert_eq!(dev("1.1.1.1"), "eth0");
    }
}
