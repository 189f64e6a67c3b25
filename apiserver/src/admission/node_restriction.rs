//! NodeRestriction: a kubelet creates only mirror pods bound to itself, updates the
//! status of and deletes only pods bound to itself, registers only its own Node and
//! renews only its own Lease, with the messages of Kubernetes' plugin.

use serde_json::Value;

use crate::error::ApiError;
use crate::resources::ResourceInfo;

/// The annotation that makes a pod a mirror of a node's static pod.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

fn forbidden(res: &ResourceInfo, obj: &Value, message: String) -> ApiError {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    ApiError::Forbidden(format!(
        "{} \"{name}\" is forbidden: {message}",
        res.qualified()
    ))
}

/// A create by node `node` of `obj` in `namespace` (the URL's).
pub fn create(
    node: &str,
    res: &ResourceInfo,
    namespace: Option<&str>,
    obj: &Value,
) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let message = match (res.group, res.plural) {
        ("", "pods") => {
            let bound_here = obj["spec"]["nodeName"].as_str() == Some(node);
            if obj["metadata"]["annotations"][MIRROR_ANNOTATION].is_null() {
                format!(
                    "pod does not have \"{MIRROR_ANNOTATION}\" annotation, node \"{node}\" can only create mirror pods"
                )
            } else if !bound_here {
                format!("node \"{node}\" can only create pods with spec.nodeName set to itself")
            } else {
                return Ok(());
            }
        }
        ("", "nodes") if name != node => {
            format!("node \"{node}\" is not allowed to modify node \"{name}\"")
        }
        ("coordination.k8s.io", "leases") => match namespace.unwrap_or_default() {
            "kube-node-lease" if name != node => {
                "can only access node lease with the same name as the requesting node".into()
            }
            "kube-system" if !name.starts_with(tinykube_api::constants::LB_LEASE_PREFIX) => {
                format!("node \"{node}\" can only create the leases of LoadBalancer addresses here")
            }
            "kube-node-lease" | "kube-system" => return Ok(()),
            _ => "can only access leases in kube-node-lease".into(),
        },
        _ => return Ok(()),
    };
    Err(forbidden(res, obj, message))
}

/// An update, patch or delete by node `node` of the stored pod `pod`.
pub fn change(node: &str, verb: &str, pod: &Value) -> Result<(), ApiError> {
    if pod["spec"]["nodeName"].as_str() == Some(node) {
        return Ok(());
    }
    let message = match verb {
        "delete" => {
            format!("node \"{node}\" can only delete pods with spec.nodeName set to itself")
        }
        _ => format!("node \"{node}\" can only update pod status for pods on itself"),
    };
    let pods = crate::resources::find("", "pods").expect("pods are served");
    Err(forbidden(pods, pod, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    fn pod(node: &str, mirror: bool) -> Value {
        let mut p = serde_json::json!({"metadata": {"name": "p"}, "spec": {"nodeName": node}});
        if mirror {
            p["metadata"]["annotations"] = serde_json::json!({MIRROR_ANNOTATION: "x"});
        }
        p
    }

    #[test]
    fn node_restriction_keeps_nodes_to_their_own_pods() {
        let pods = find("", "pods").unwrap();
        assert!(create("w1", pods, None, &pod("w1", true)).is_ok());
        let err = create("w1", pods, None, &pod("w1", false)).unwrap_err();
        assert!(
            err.to_string().contains("can only create mirror pods"),
            "{err}"
        );
        assert!(create("w1", pods, None, &pod("w2", true)).is_err());
        assert!(change("w1", "patch", &pod("w1", false)).is_ok());
        assert!(change("w1", "patch", &pod("w2", false)).is_err());
        assert!(change("w1", "delete", &pod("w2", false)).is_err());
        assert!(change("w1", "delete", &pod("w1", false)).is_ok());
    }

    #[test]
    fn nodes_register_and_renew_only_themselves() {
        let nodes = find("", "nodes").unwrap();
        let node = |n: &str| serde_json::json!({"metadata": {"name": n}});
        assert!(create("w1", nodes, None, &node("w1")).is_ok());
        assert_eq!(
            create("w1", nodes, None, &node("w2"))
                .unwrap_err()
                .to_string(),
            "nodes \"w2\" is forbidden: node \"w1\" is not allowed to modify node \"w2\""
        );
        let leases = find("coordination.k8s.io", "leases").unwrap();
        let lease = |n: &str| serde_json::json!({"metadata": {"name": n}});
        assert!(create("w1", leases, Some("kube-node-lease"), &lease("w1")).is_ok());
        assert!(create("w1", leases, Some("kube-node-lease"), &lease("w2")).is_err());
        assert!(
            create(
                "w1",
                leases,
                Some("kube-system"),
                &lease("tinykube-lb-1-2-3-4")
            )
            .is_ok()
        );
        assert!(create("w1", leases, Some("kube-system"), &lease("other")).is_err());
        assert!(create("w1", leases, Some("default"), &lease("w1")).is_err());
    }
}
