//! Filters and scores, over a snapshot of the nodes and what runs on them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, Pod, Service, Taint};

use tinykube_api::quantity::milli;

/// A node and the pods counted on it.
pub struct NodeInfo {
    pub node: Arc<Node>,
    requested_cpu: i128,
    requested_mem: i128,
    pods: usize,
    host_ports: HashSet<(i32, String)>,
    /// Pods per owner (controller uid) and per selecting Service (namespace/name).
    groups: HashMap<String, usize>,
}

fn requests(p: &Pod) -> (i128, i128) {
    let mut cpu = 0;
    let mut mem = 0;
    for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
        let r = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        cpu += r
            .and_then(|r| r.get("cpu"))
            .and_then(|q| milli(&q.0))
            .unwrap_or(0);
        mem += r
            .and_then(|r| r.get("memory"))
            .and_then(|q| milli(&q.0))
            .unwrap_or(0);
    }
    (cpu, mem)
}

fn host_ports(p: &Pod) -> Vec<(i32, String)> {
    p.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| {
            cp.host_port
                .filter(|h| *h > 0)
                .map(|h| (h, cp.protocol.clone().unwrap_or_else(|| "TCP".into())))
        })
        .collect()
}

/// The groups a pod is spread within: its controller, and every Service selecting it.
fn groups(p: &Pod, services: &[Arc<Service>]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(r) = p
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
    {
        out.push(format!("owner:{}", r.uid));
    }
    let ns = p.metadata.namespace.as_deref().unwrap_or_default();
    let empty = BTreeMap::new();
    let labels = p.metadata.labels.as_ref().unwrap_or(&empty);
    for s in services {
        if s.metadata.namespace.as_deref() != Some(ns) {
            continue;
        }
        if let Some(sel) = s
            .spec
            .as_ref()
            .and_then(|sp| sp.selector.as_ref())
            .filter(|sel| !sel.is_empty())
            && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
        {
            out.push(format!(
                "svc:{ns}/{}",
                s.metadata.name.as_deref().unwrap_or_default()
            ));
        }
    }
    out
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            requested_cpu: 0,
            requested_mem: 0,
            pods: 0,
            host_ports: HashSet::new(),
            groups: HashMap::new(),
        }
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn add(&mut self, p: &Pod, services: &[Arc<Service>]) {
        let (cpu, mem) = requests(p);
        self.requested_cpu += cpu;
        self.requested_mem += mem;
        self.pods += 1;
        self.host_ports.extend(host_ports(p));
        for g in groups(p, services) {
            *self.groups.entry(g).or_default() += 1;
        }
    }

    fn allocatable(&self, what: &str) -> Option<i128> {
        self.node
            .status
            .as_ref()?
            .allocatable
            .as_ref()?
            .get(what)
            .and_then(|q| milli(&q.0))
    }

    fn ready(&self) -> bool {
        self.node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }
}

fn tolerates(p: &Pod, t: &Taint) -> bool {
    p.spec
        .iter()
        .flat_map(|s| s.tolerations.iter().flatten())
        .any(|tol| tinykube_api::taint::tolerates(tol, t))
}

fn requirement_matches(r: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let v = labels.get(&r.key);
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => v.is_some_and(|v| values.contains(v)),
        "NotIn" => v.is_none_or(|v| !values.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(w)) = (
                v.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|w| w.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" { v > w } else { v < w }
        }
        _ => false,
    }
}

fn affinity_matches(p: &Pod, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let spec = p.spec.as_ref();
    let selector_ok = spec
        .and_then(|s| s.node_selector.as_ref())
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let required = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok = required.is_none_or(|ns| {
        ns.node_selector_terms.iter().any(|term| {
            term.match_expressions
                .iter()
                .flatten()
                .all(|r| requirement_matches(r, labels))
                && term.match_fields.iter().flatten().all(|r| {
                    let fields: BTreeMap<String, String> = [(
                        "metadata.name".to_string(),
                        node.metadata.name.clone().unwrap_or_default(),
                    )]
                    .into();
                    requirement_matches(r, &fields)
                })
        })
    });
    selector_ok && affinity_ok
}

/// Why a node cannot take a pod, in the kube-scheduler's words; None when it can.
pub fn why_not(p: &Pod, n: &NodeInfo) -> Option<String> {
    let spec = n.node.spec.as_ref();
    if spec.and_then(|s| s.unschedulable).unwrap_or(false) {
        return Some("node(s) were unschedulable".into());
    }
    for t in spec.and_then(|s| s.taints.as_ref()).into_iter().flatten() {
        if (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(p, t) {
            return Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            ));
        }
    }
    if !n.ready() {
        return Some("node(s) had untolerated taint {node.kubernetes.io/not-ready: }".into());
    }
    if !affinity_matches(p, &n.node) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    let max_pods = n
        .allocatable("pods")
        .map(|m| (m / 1000) as usize)
        .unwrap_or(110);
    if n.pods + 1 > max_pods {
        return Some("Too many pods".into());
    }
    let (cpu, mem) = requests(p);
    if let Some(alloc) = n.allocatable("cpu")
        && n.requested_cpu + cpu > alloc
    {
        return Some("Insufficient cpu".into());
    }
    if let Some(alloc) = n.allocatable("memory")
        && n.requested_mem + mem > alloc
    {
        return Some("Insufficient memory".into());
    }
    if host_ports(p).iter().any(|hp| n.host_ports.contains(hp)) {
        return Some("node(s) didn't have free ports for the requested pod ports".into());
    }
    None
}

/// Kubernetes' FitError text: `0/3 nodes are available: 1 node(s) were unschedulable, ...`.
pub fn fit_error(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    let parts: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
    let mut msg = format!("0/{total} nodes are available: {}.", parts.join(", "));
    if total == 0 {
        msg = "no nodes available to schedule pods".into();
    }
    msg + &format!(
        " preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling."
    )
}

/// The node index to bind `p` to, or the FailedScheduling message.
pub fn choose(p: &Pod, nodes: &[NodeInfo], services: &[Arc<Service>]) -> Result<usize, String> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let my_groups = groups(p, services);
    let (cpu, mem) = requests(p);
    let mut best: Option<(usize, (usize, i128))> = None;
    for (i, n) in nodes.iter().enumerate() {
        if let Some(r) = why_not(p, n) {
            *reasons.entry(r).or_default() += 1;
            continue;
        }
        // Spread first: fewest pods of the same owner or Service; then least requested.
        let spread: usize = my_groups
            .iter()
            .map(|g| n.groups.get(g).copied().unwrap_or(0))
            .sum();
        let frac =
            |req: i128, alloc: Option<i128>| alloc.filter(|a| *a > 0).map_or(0, |a| req * 1000 / a);
        let load = frac(n.requested_cpu + cpu, n.allocatable("cpu"))
            + frac(n.requested_mem + mem, n.allocatable("memory"))
            + (n.pods as i128) * 1000 / 110;
        let score = (spread, load);
        if best.is_none_or(|(_, b)| score < b) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
        .ok_or_else(|| fit_error(nodes.len(), &reasons))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, extra: serde_json::Value) -> NodeInfo {
        let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                           "spec": {},
                           "status": {"conditions": [{"type": "Ready", "status": "True"}],
                                      "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}}});
        json_patch::merge(&mut n, &extra);
        NodeInfo::new(Arc::new(serde_json::from_value(n).unwrap()))
    }

    fn pod(extra: serde_json::Value) -> Pod {
        let mut p = json!({"metadata": {"name": "p", "namespace": "default",
                                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1", "controller": true}]},
                           "spec": {"containers": [{"name": "c", "image": "i"}]}});
        json_patch::merge(&mut p, &extra);
        serde_json::from_value(p).unwrap()
    }

    #[test]
    fn failure_message_lists_every_reason() {
        let nodes = vec![
            node(
                "master",
                json!({"spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}),
            ),
            node("w1", json!({"spec": {"unschedulable": true}})),
            node("w2", json!({"status": {"allocatable": {"cpu": "100m"}}})),
        ];
        let p = pod(
            json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "500m"}}}]}}),
        );
        let msg = choose(&p, &nodes, &[]).unwrap_err();
        assert_eq!(
            msg,
            "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 1 node(s) were unschedulable. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn pods_of_one_owner_spread_evenly() {
        let mut nodes = vec![
            node("w1", json!({})),
            node("w2", json!({})),
            node("w3", json!({})),
        ];
        let mut counts = [0; 3];
        for _ in 0..7 {
            let p = pod(json!({}));
            let i = choose(&p, &nodes, &[]).unwrap();
            nodes[i].add(&p, &[]);
            counts[i] += 1;
        }
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );
    }

    #[test]
    fn selectors_and_tolerations_decide() {
        let nodes = vec![
            node(
                "master",
                json!({"metadata": {"labels": {"role": "cp"}}, "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}),
            ),
            node("w1", json!({})),
        ];
        let picky = pod(json!({"spec": {"nodeSelector": {"role": "cp"}}}));
        assert!(choose(&picky, &nodes, &[]).is_err());
        let tolerant = pod(json!({"spec": {"nodeSelector": {"role": "cp"},
            "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}}));
        assert_eq!(choose(&tolerant, &nodes, &[]), Ok(0));
    }
}
