//! The node authorizer: what a kubelet (a `system:node:<name>` in `system:nodes`) may
//! do, as Kubernetes' node authorizer and the `system:node` role let it. It reads what a
//! kubelet and the node's proxy and DNS read, never secrets or configmaps in general:
//! only those its own pods use (the authorizer's graph, here a look at the node's
//! pods). It writes what a kubelet writes: its Node and Lease (which name:
//! NodeRestriction checks on create), pods' status, events, and the Leases of the
//! LoadBalancer pool addresses nodes announce. Which pods: NodeRestriction.

use std::sync::Arc;

use serde_json::Value;

use super::{Attributes, Decision};
use crate::registry::ListOptions;
use crate::registry::Registry;
use crate::resources;

/// Asks for the node's serving certificate for the kubelet API.
pub const KUBELET_CERTIFICATE_PATH: &str = "/tinykube/v1/kubelet-certificate";

pub struct NodeAuthorizer {
    /// Where the node's pods are read (the authorizer's graph).
    registry: Arc<Registry>,
}

impl NodeAuthorizer {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    pub fn decide(&self, a: &Attributes<'_>) -> Decision {
        let Some(node) = a.user.node() else {
            return Decision::NoOpinion(String::new());
        };
        if !a.resource_request {
            return allow(a.verb == "post" && a.path == KUBELET_CERTIFICATE_PATH);
        }
        let own = a.name == Some(node);
        match (a.api_group, a.resource) {
            ("", kind @ ("secrets" | "configmaps")) => {
                match (a.verb, a.namespace, a.name, a.subresource) {
                    ("get", Some(ns), Some(name), None)
                        if may_read(&self.registry, node, kind, ns, name) =>
                    {
                        Decision::Allow
                    }
                    _ => Decision::NoOpinion(format!(
                        "no relationship found between node '{node}' and this object"
                    )),
                }
            }
            ("", "persistentvolumeclaims") => Decision::NoOpinion(String::new()),
            _ if a.is_read() => Decision::Allow,
            ("", "nodes") => allow(match a.verb {
                "create" => true,
                "update" | "patch" => own,
                _ => false,
            }),
            ("", "pods") => allow(matches!(
                (a.verb, a.subresource),
                ("create" | "delete", None) | ("update" | "patch", Some("status"))
            )),
            // Tokens for its pods' service accounts (bound to the pod: checked when the
            // request is served, as NodeRestriction does).
            ("", "serviceaccounts") if a.subresource == Some("token") => allow(a.verb == "create"),
            // A kubelet renews its client certificate through a request of its own
            // (kube's node rules); whether it is approved is RBAC's to say.
            ("certificates.k8s.io", "certificatesigningrequests") => {
                allow(a.verb == "create" && a.subresource.is_none())
            }
            ("", "events") | ("events.k8s.io", "events") => {
                allow(matches!(a.verb, "create" | "update" | "patch"))
            }
            ("coordination.k8s.io", "leases") => allow(match (a.namespace, a.verb) {
                (Some("kube-node-lease"), "create") => true,
                (Some("kube-node-lease"), "update" | "patch") => own,
                // The leases of LoadBalancer pool addresses, which nodes hold in turn.
                (Some("kube-system"), "create") => true,
                (Some("kube-system"), "update" | "patch" | "delete") => a
                    .name
                    .is_some_and(|n| n.starts_with(tinykube_api::constants::LB_LEASE_PREFIX)),
                _ => false,
            }),
            _ => Decision::NoOpinion(String::new()),
        }
    }
}

fn allow(yes: bool) -> Decision {
    if yes {
        Decision::Allow
    } else {
        Decision::NoOpinion(String::new())
    }
}

/// Whether a pod bound to `node` uses `kind` (secrets or configmaps) `ns/name` (a
/// volume, a projected source, an env reference, envFrom, an image pull secret): what
/// Kubernetes' node authorizer lets a kubelet read. The network settings every node
/// reads are readable too.
fn may_read(registry: &Registry, node: &str, kind: &str, ns: &str, name: &str) -> bool {
    if kind == "configmaps"
        && ns == "kube-system"
        && name == tinykube_api::constants::NETWORK_CONFIGMAP
    {
        return true;
    }
    let pods = resources::find("", "pods").expect("pods are served");
    let mut q = std::collections::HashMap::new();
    q.insert("fieldSelector".to_string(), format!("spec.nodeName={node}"));
    let Ok(opts) = ListOptions::from_query(&q) else {
        return false;
    };
    let Ok(list) = registry
        .list_raw(pods, Some(ns), &opts)
        .and_then(|l| l.into_value())
    else {
        return false;
    };
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| uses(&p["spec"], kind, name))
}

fn each(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// Whether a pod spec refers to the secret or configmap `name`.
fn uses(spec: &Value, kind: &str, name: &str) -> bool {
    let (volume, key, env_ref, env_from) = match kind {
        "secrets" => ("secret", "secretName", "secretKeyRef", "secretRef"),
        _ => ("configMap", "name", "configMapKeyRef", "configMapRef"),
    };
    let volumes = each(&spec["volumes"]).any(|v| {
        v[volume][key] == name
            || each(&v["projected"]["sources"]).any(|s| s[volume]["name"] == name)
    });
    let pull = kind == "secrets" && each(&spec["imagePullSecrets"]).any(|s| s["name"] == name);
    let refs = each(&spec["containers"])
        .chain(each(&spec["initContainers"]))
        .any(|c| {
            each(&c["env"]).any(|e| e["valueFrom"][env_ref]["name"] == name)
                || each(&c["envFrom"]).any(|e| e[env_from]["name"] == name)
        });
    volumes || pull || refs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::UserInfo;

    use Attributes as A;
    fn attrs<'a>(
        user: &'a UserInfo,
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        ns: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        A::resource(user, verb, group, resource, ns, name)
    }

    /// The rules that need no stored objects (secrets and configmaps do).
    fn decide(a: &Attributes<'_>) -> Decision {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = crate::store::SledStore::open(&dir.path().join("db"), Default::default())
            .expect("a store");
        let (cleanup, _) = tokio::sync::mpsc::unbounded_channel();
        let registry = Registry {
            store: Arc::new(store),
            alloc: Default::default(),
            namespace_cleanup: cleanup,
        };
        NodeAuthorizer::new(Arc::new(registry)).decide(a)
    }

    #[test]
    fn nodes_are_limited_to_kubelet_work() {
        let w1 = UserInfo::new("system:node:w1", ["system:nodes".to_string()]);
        let ok = |a: Attributes<'_>| decide(&a) == Decision::Allow;
        assert!(ok(attrs(&w1, "list", "", "pods", None, None)));
        assert!(ok(attrs(&w1, "update", "", "nodes", None, Some("w1"))));
        assert!(!ok(attrs(&w1, "patch", "", "nodes", None, Some("w2"))));
        assert!(!ok(attrs(&w1, "delete", "", "nodes", None, Some("w1"))));
        assert!(!ok(attrs(
            &w1,
            "create",
            "apps",
            "deployments",
            Some("default"),
            None
        )));
        for plural in ["secrets", "configmaps"] {
            assert!(!ok(attrs(
                &w1,
                "get",
                "",
                plural,
                Some("default"),
                Some("s")
            )));
            assert!(!ok(attrs(&w1, "list", "", plural, None, None)));
        }
        let mut patch = attrs(&w1, "patch", "", "pods", Some("default"), Some("p"));
        assert!(!ok(patch), "a pod's spec is not the node's");
        patch.subresource = Some("status");
        assert!(ok(patch));
        // Not a node: no opinion.
        let jane = UserInfo::new("system:node:w1", []);
        assert!(!ok(attrs(&jane, "list", "", "pods", None, None)));
    }

    #[test]
    fn a_pod_uses_the_secrets_and_configmaps_it_names() {
        let spec = serde_json::json!({
            "volumes": [{"name": "v", "secret": {"secretName": "s1"}},
                        {"name": "p", "projected": {"sources": [{"configMap": {"name": "c1"}}]}}],
            "imagePullSecrets": [{"name": "pull"}],
            "containers": [{"name": "c", "env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "s2", "key": "k"}}}],
                            "envFrom": [{"configMapRef": {"name": "c2"}}]}]});
        for s in ["s1", "s2", "pull"] {
            assert!(uses(&spec, "secrets", s), "{s}");
        }
        for c in ["c1", "c2"] {
            assert!(uses(&spec, "configmaps", c), "{c}");
        }
        assert!(!uses(&spec, "secrets", "c1"));
        assert!(!uses(&spec, "configmaps", "pull"));
    }
}
