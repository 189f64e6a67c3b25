//! ClusterIP and NodePort allocation. The sets live in memory and are rebuilt from the
//! stored Services at start, so a restart never hands out an address twice.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use rand::Rng;
use serde_json::{Value, json};
use tinykube_api::constants::{
    CLUSTER_DNS_IP, KUBERNETES_SERVICE_IP, NODE_PORT_MAX, NODE_PORT_MIN,
};
use tinykube_api::lbpool::LbPool;
use tinykube_api::validation::FieldError;

/// The addresses and ports one Service holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Held {
    pub ips: Vec<Ipv4Addr>,
    pub ports: Vec<u16>,
}

impl Held {
    pub fn of(svc: &Value) -> Self {
        let spec = &svc["spec"];
        let ips = spec["clusterIPs"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
            .or_else(|| {
                spec["clusterIP"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .map(|ip| vec![ip])
            })
            .unwrap_or_default();
        let ports = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["nodePort"].as_u64())
            .chain(spec["healthCheckNodePort"].as_u64())
            .filter(|p| *p > 0)
            .map(|p| p as u16)
            .collect();
        Self { ips, ports }
    }

    fn minus(&self, other: &Held) -> Held {
        Held {
            ips: self
                .ips
                .iter()
                .filter(|i| !other.ips.contains(i))
                .copied()
                .collect(),
            ports: self
                .ports
                .iter()
                .filter(|p| !other.ports.contains(p))
                .copied()
                .collect(),
        }
    }
}

pub struct Allocator {
    base: u32,
    size: u32,
    used: Mutex<(HashSet<Ipv4Addr>, HashSet<u16>)>,
    /// LoadBalancer addresses come from here (the controller hands them out); a
    /// requested `loadBalancerIP` must be in it.
    lb_pool: Option<LbPool>,
}

impl Default for Allocator {
    fn default() -> Self {
        Self::new(Ipv4Addr::new(10, 96, 0, 0), 12)
    }
}

impl Allocator {
    pub fn new(base: Ipv4Addr, prefix: u8) -> Self {
        Self {
            base: u32::from(base),
            size: 1u32 << (32 - prefix),
            used: Mutex::new(Default::default()),
            lb_pool: None,
        }
    }

    pub fn with_lb_pool(mut self, pool: Option<LbPool>) -> Self {
        self.lb_pool = pool;
        self
    }

    fn in_range(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v > self.base && v < self.base + self.size - 1
    }

    /// Marks what stored Services hold (startup).
    pub fn restore(&self, held: &Held) {
        let mut used = self.used.lock().expect("allocator lock");
        used.0.extend(held.ips.iter().copied());
        used.1.extend(held.ports.iter().copied());
    }

    pub fn release(&self, held: &Held) {
        let mut used = self.used.lock().expect("allocator lock");
        for ip in &held.ips {
            used.0.remove(ip);
        }
        for p in &held.ports {
            used.1.remove(p);
        }
    }

    fn cidr(&self) -> String {
        format!(
            "{}/{}",
            Ipv4Addr::from(self.base),
            32 - self.size.trailing_zeros()
        )
    }

    /// Fills `spec.clusterIP(s)` and `nodePort`s of `svc`, reusing what `old` held.
    /// Returns what was newly taken, for `release` if the write then fails.
    pub fn assign(&self, svc: &mut Value, old: Option<&Value>) -> Result<Held, Vec<FieldError>> {
        let old_held = old.map(Held::of).unwrap_or_default();
        let mut taken = Held::default();
        let mut used = self.used.lock().expect("allocator lock");
        let spec = &mut svc["spec"];
        let kind = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
        let mut errs = Vec::new();

        if kind == "ExternalName" {
            spec.as_object_mut().map(|s| {
                s.remove("clusterIP");
                s.remove("clusterIPs")
            });
        } else {
            let requested = spec["clusterIP"].as_str().unwrap_or_default().to_string();
            if requested == "None" {
                spec["clusterIPs"] = json!(["None"]);
            } else if let Some(&ip) = old_held.ips.first() {
                spec["clusterIP"] = json!(ip.to_string());
                spec["clusterIPs"] = json!([ip.to_string()]);
            } else {
                let ip = if requested.is_empty() {
                    self.pick_ip(&used.0)
                } else {
                    match requested.parse::<Ipv4Addr>() {
                        Ok(ip) if !self.in_range(ip) => {
                            errs.push(FieldError::invalid(
                                "spec.clusterIPs",
                                vec![requested.clone()],
                                format!("failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}", self.cidr()),
                            ));
                            None
                        }
                        Ok(ip) if used.0.contains(&ip) => {
                            errs.push(FieldError::invalid(
                                "spec.clusterIPs",
                                vec![requested.clone()],
                                format!("failed to allocate IP {requested}: provided IP is already allocated"),
                            ));
                            None
                        }
                        Ok(ip) => Some(ip),
                        Err(_) => {
                            errs.push(FieldError::invalid(
                                "spec.clusterIP",
                                &requested,
                                "must be a valid IP address",
                            ));
                            None
                        }
                    }
                };
                if let Some(ip) = ip {
                    used.0.insert(ip);
                    taken.ips.push(ip);
                    spec["clusterIP"] = json!(ip.to_string());
                    spec["clusterIPs"] = json!([ip.to_string()]);
                } else if errs.is_empty() {
                    errs.push(FieldError::invalid(
                        "spec.clusterIPs",
                        Vec::<String>::new(),
                        "range is full",
                    ));
                }
            }
        }

        let wants_node_ports = kind == "NodePort" || kind == "LoadBalancer";
        let old_ports = old
            .map(|o| o["spec"]["ports"].clone())
            .unwrap_or(Value::Null);
        for (i, port) in spec["ports"]
            .as_array_mut()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if !wants_node_ports {
                port.as_object_mut().map(|p| p.remove("nodePort"));
                continue;
            }
            let requested = port["nodePort"].as_u64().unwrap_or(0) as u16;
            let previous = old_ports.as_array().into_iter().flatten().find(|o| {
                o["port"] == port["port"]
                    && o["protocol"] == port["protocol"]
                    && o["nodePort"].as_u64().unwrap_or(0) > 0
            });
            let previous = previous
                .and_then(|o| o["nodePort"].as_u64())
                .map(|p| p as u16);
            let chosen = match (requested, previous) {
                (0, Some(p)) => Some(p),
                (r, Some(p)) if r == p => Some(p),
                (r, _) if r != 0 && old_held.ports.contains(&r) => Some(r),
                (0, None) => {
                    let p = self.pick_port(&used.1);
                    if let Some(p) = p {
                        used.1.insert(p);
                        taken.ports.push(p);
                    }
                    p
                }
                (r, _) => {
                    if used.1.contains(&r) {
                        errs.push(FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            r,
                            "provided port is already allocated",
                        ));
                        None
                    } else if !(NODE_PORT_MIN..=NODE_PORT_MAX).contains(&r) {
                        None // validation already reported it
                    } else {
                        used.1.insert(r);
                        taken.ports.push(r);
                        Some(r)
                    }
                }
            };
            if let Some(p) = chosen {
                port["nodePort"] = json!(p);
            }
        }
        // A requested LoadBalancer address: a valid IP, and in the pool when there is one.
        if let Some(ip) = spec["loadBalancerIP"].as_str().filter(|s| !s.is_empty()) {
            match ip.parse::<Ipv4Addr>() {
                Err(_) => errs.push(FieldError::invalid(
                    "spec.loadBalancerIP",
                    ip,
                    "must be a valid IP address",
                )),
                Ok(_) if kind != "LoadBalancer" => errs.push(FieldError::forbidden(
                    "spec.loadBalancerIP",
                    "may only be used when `type` is 'LoadBalancer'",
                )),
                Ok(addr) => {
                    if let Some(pool) = self.lb_pool
                        && !pool.contains(addr)
                    {
                        errs.push(FieldError::invalid(
                            "spec.loadBalancerIP",
                            ip,
                            format!("is not in the LoadBalancer address pool {pool}"),
                        ));
                    }
                }
            }
        }
        // A LoadBalancer with externalTrafficPolicy Local gets one more node port, where
        // every node answers whether it has a local endpoint.
        let wants_health = kind == "LoadBalancer" && spec["externalTrafficPolicy"] == "Local";
        if !wants_health {
            spec.as_object_mut()
                .map(|s| s.remove("healthCheckNodePort"));
        } else {
            let requested = spec["healthCheckNodePort"].as_u64().unwrap_or(0) as u16;
            let previous = old
                .and_then(|o| o["spec"]["healthCheckNodePort"].as_u64())
                .filter(|p| *p > 0)
                .map(|p| p as u16);
            let chosen = match (requested, previous) {
                (0, Some(p)) => Some(p),
                (r, Some(p)) if r == p => Some(p),
                (0, None) => {
                    let p = self.pick_port(&used.1);
                    if let Some(p) = p {
                        used.1.insert(p);
                        taken.ports.push(p);
                    }
                    p
                }
                (r, _) if used.1.contains(&r) => {
                    errs.push(FieldError::invalid(
                        "spec.healthCheckNodePort",
                        r,
                        "provided port is already allocated",
                    ));
                    None
                }
                (r, _) if !(NODE_PORT_MIN..=NODE_PORT_MAX).contains(&r) => {
                    errs.push(FieldError::invalid(
                        "spec.healthCheckNodePort",
                        r,
                        format!("provided port is not in the valid range. The range of valid ports is {NODE_PORT_MIN}-{NODE_PORT_MAX}"),
                    ));
                    None
                }
                (r, _) => {
                    used.1.insert(r);
                    taken.ports.push(r);
                    Some(r)
                }
            };
            if let Some(p) = chosen {
                spec["healthCheckNodePort"] = json!(p);
            }
        }
        if !errs.is_empty() {
            drop(used);
            self.release(&taken);
            return Err(errs);
        }
        Ok(taken)
    }

    /// After a successful update: frees what the old object held and the new one does not.
    pub fn release_dropped(&self, old: &Value, new: &Value) {
        self.release(&Held::of(old).minus(&Held::of(new)));
    }

    fn pick_ip(&self, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        // Kubernetes keeps the lowest addresses for fixed ones (10.96.0.1, 10.96.0.10):
        // a band of min(max(16, size/16), 256) that dynamic allocation tries last.
        let low = (self.size / 16).clamp(16, 256);
        let span = self.size - low - 1;
        let mut rng = rand::rng();
        for _ in 0..64 {
            let ip = Ipv4Addr::from(self.base + low + rng.random_range(0..span));
            if !used.contains(&ip) {
                return Some(ip);
            }
        }
        let reserved = [KUBERNETES_SERVICE_IP, CLUSTER_DNS_IP];
        (1..self.size - 1)
            .map(|o| Ipv4Addr::from(self.base + o))
            .find(|ip| !used.contains(ip) && !reserved.contains(&ip.to_string().as_str()))
    }

    /// Like Kubernetes (KEP-3668), dynamic NodePorts come from above a static band of
    /// min(max(16, size/32), 128) ports, so fixed ports such as 30080 rarely collide.
    fn pick_port(&self, used: &HashSet<u16>) -> Option<u16> {
        let size = u32::from(NODE_PORT_MAX - NODE_PORT_MIN) + 1;
        let band = (size / 32).clamp(16, 128) as u16;
        let dynamic = NODE_PORT_MIN + band..=NODE_PORT_MAX;
        let mut rng = rand::rng();
        for _ in 0..64 {
            let p = rng.random_range(dynamic.clone());
            if !used.contains(&p) {
                return Some(p);
            }
        }
        dynamic
            .chain(NODE_PORT_MIN..NODE_PORT_MIN + band)
            .find(|p| !used.contains(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(kind: &str, node_port: Option<u16>) -> Value {
        let mut port = json!({"port": 80, "protocol": "TCP"});
        if let Some(p) = node_port {
            port["nodePort"] = json!(p);
        }
        json!({"spec": {"type": kind, "ports": [port]}})
    }

    #[test]
    fn node_ports_are_unique_and_released() {
        let a = Allocator::default();
        let mut first = svc("NodePort", Some(30080));
        a.assign(&mut first, None).unwrap();
        assert_eq!(first["spec"]["ports"][0]["nodePort"], 30080);
        let ip = first["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .parse::<Ipv4Addr>()
            .unwrap();
        assert!(a.in_range(ip));
        let mut second = svc("NodePort", Some(30080));
        let errs = a.assign(&mut second, None).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        );
        a.release(&Held::of(&first));
        let mut third = svc("NodePort", Some(30080));
        assert!(a.assign(&mut third, None).is_ok());
    }

    #[test]
    fn local_load_balancers_get_a_health_check_node_port_until_they_change() {
        let a = Allocator::default();
        let mut s = svc("LoadBalancer", None);
        s["spec"]["externalTrafficPolicy"] = json!("Local");
        a.assign(&mut s, None).unwrap();
        let hc = s["spec"]["healthCheckNodePort"].as_u64().unwrap() as u16;
        assert!((NODE_PORT_MIN..=NODE_PORT_MAX).contains(&hc));
        assert!(Held::of(&s).ports.contains(&hc));
        // Kept on update; released once the policy is Cluster.
        let mut same = s.clone();
        same["spec"]
            .as_object_mut()
            .unwrap()
            .remove("healthCheckNodePort");
        a.assign(&mut same, Some(&s)).unwrap();
        assert_eq!(same["spec"]["healthCheckNodePort"], json!(hc));
        let mut cluster = same.clone();
        cluster["spec"]["externalTrafficPolicy"] = json!("Cluster");
        a.assign(&mut cluster, Some(&same)).unwrap();
        assert!(cluster["spec"]["healthCheckNodePort"].is_null());
        a.release_dropped(&same, &cluster);
        assert!(!a.used.lock().unwrap().1.contains(&hc));
    }

    #[test]
    fn load_balancer_ips_must_be_in_the_pool() {
        let a = Allocator::default()
            .with_lb_pool(Some("192.168.56.240-192.168.56.250".parse().unwrap()));
        let mut s = svc("LoadBalancer", None);
        s["spec"]["loadBalancerIP"] = json!("192.168.56.245");
        assert!(a.assign(&mut s, None).is_ok());
        let mut out = svc("LoadBalancer", None);
        out["spec"]["loadBalancerIP"] = json!("10.1.2.3");
        let errs = a.assign(&mut out, None).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "spec.loadBalancerIP: Invalid value: \"10.1.2.3\": is not in the LoadBalancer address pool 192.168.56.240-192.168.56.250"
        );
        let mut bad = svc("LoadBalancer", None);
        bad["spec"]["loadBalancerIP"] = json!("nope");
        assert!(
            a.assign(&mut bad, None).unwrap_err()[0]
                .to_string()
                .ends_with("must be a valid IP address")
        );
    }

    #[test]
    fn updates_keep_what_the_service_holds() {
        let a = Allocator::default();
        let mut s = svc("NodePort", None);
        a.assign(&mut s, None).unwrap();
        let mut again = svc("NodePort", None);
        a.assign(&mut again, Some(&s)).unwrap();
        assert_eq!(
            again["spec"]["ports"][0]["nodePort"],
            s["spec"]["ports"][0]["nodePort"]
        );
        assert_eq!(again["spec"]["clusterIP"], s["spec"]["clusterIP"]);
        let mut cluster_ip = svc("ClusterIP", None);
        a.assign(&mut cluster_ip, Some(&s)).unwrap();
        assert!(cluster_ip["spec"]["ports"][0].get("nodePort").is_none());
    }

    #[test]
    fn dynamic_allocation_avoids_the_static_bands() {
        let a = Allocator::default();
        for _ in 0..200 {
            let mut s = svc("NodePort", None);
            a.assign(&mut s, None).unwrap();
            let port = s["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
            assert!(port >= 30086, "{port} is in the static band");
            let ip: Ipv4Addr = s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
            assert!(
                u32::from(ip) >= u32::from(Ipv4Addr::new(10, 96, 1, 0)),
                "{ip} is in the static band"
            );
        }
    }

    #[test]
    fn fixed_cluster_ip_outside_range_is_refused() {
        let a = Allocator::default();
        let mut s = json!({"spec": {"type": "ClusterIP", "clusterIP": "192.168.1.1", "ports": [{"port": 80}]}});
        let errs = a.assign(&mut s, None).unwrap_err();
        assert!(errs[0].to_string().contains("is not in the valid range"));
    }
}
