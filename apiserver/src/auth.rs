//! Authentication (node client certificates, the admin token and the join token) and
//! authorization (admins do anything; nodes what Kubernetes' node authorizer and
//! NodeRestriction let a kubelet do; the join token only joins).

use serde_json::Value;
use tinykube_api::pki::{Identity, JoinToken};

use crate::error::ApiError;
use crate::resources::ResourceInfo;

#[derive(Debug, Clone, PartialEq)]
pub enum User {
    Admin,
    /// A node agent, named by its client certificate (`system:node:<name>`).
    Node(String),
    /// A holder of the join token: it may fetch the CA and ask for node credentials.
    Bootstrap,
}

impl User {
    pub fn username(&self) -> String {
        match self {
            Self::Admin => "admin".into(),
            Self::Node(n) => format!("{}{n}", tinykube_api::pki::NODE_USER_PREFIX),
            Self::Bootstrap => "system:bootstrap:node-token".into(),
        }
    }
}

#[derive(Clone)]
pub struct Tokens {
    pub admin: String,
    /// The secret part of the join token.
    pub node: String,
}

/// Equal-time comparison, so a wrong token's timing says nothing about the right one.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Tokens {
    /// A verified client certificate naming a node wins (as Kubernetes' x509
    /// authenticator comes first); else the bearer token decides.
    pub fn authenticate(
        &self,
        peer: Option<&Identity>,
        authorization: Option<&str>,
    ) -> Result<User, ApiError> {
        if let Some(node) = peer.and_then(Identity::node) {
            return Ok(User::Node(node.to_string()));
        }
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        if same(token, &self.admin) {
            return Ok(User::Admin);
        }
        let join = JoinToken::parse(token).map_err(|_| ApiError::Unauthorized)?;
        if same(&join.secret, &self.node) {
            return Ok(User::Bootstrap);
        }
        Err(ApiError::Unauthorized)
    }
}

pub fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a request wants to do, in Kubernetes' authorization terms.
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub resource: &'a ResourceInfo,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// Admins may do everything; the join token nothing here (it only joins). Nodes may
/// read what a kubelet and the node's proxy and DNS read (never secrets or configmaps
/// in general: those their pods use are let through by the caller, which knows the
/// pods) and write what a kubelet writes: their own Node and Lease, the status of pods
/// (which pods: `node_restriction` checks against the object), events, and the Leases
/// of the LoadBalancer pool addresses they announce.
pub fn authorize(user: &User, a: &Attributes<'_>) -> Result<(), ApiError> {
    let node = match user {
        User::Admin => return Ok(()),
        User::Node(n) => Some(n.as_str()),
        User::Bootstrap => None,
    };
    let read = matches!(a.verb, "get" | "list" | "watch");
    let own = |name: Option<&str>| node.is_some() && name == node;
    let allowed = node.is_some()
        && match (a.resource.group, a.resource.plural) {
            ("", "secrets" | "configmaps" | "persistentvolumeclaims") => false,
            (_, _) if read => true,
            ("", "nodes") => match a.verb {
                "create" | "update" | "patch" => own(a.name),
                _ => false,
            },
            ("", "pods") => matches!(
                (a.verb, a.subresource),
                ("create" | "delete", None) | ("update" | "patch", Some("status"))
            ),
            ("", "events") | ("events.k8s.io", "events") => {
                matches!(a.verb, "create" | "update" | "patch")
            }
            ("coordination.k8s.io", "leases") => {
                (a.namespace == Some("kube-node-lease")
                    && matches!(a.verb, "create" | "update" | "patch")
                    && own(a.name))
                    // The leases of LoadBalancer pool addresses, which nodes hold in turn.
                    || (a.namespace == Some("kube-system")
                        && matches!(a.verb, "create" | "update" | "patch" | "delete")
                        && a.name.is_some_and(|n| n.starts_with("tinykube-lb-")))
            }
            _ => false,
        };
    if allowed {
        return Ok(());
    }
    let what = match a.name {
        Some(n) => format!("{} \"{n}\"", a.resource.qualified()),
        None => a.resource.qualified(),
    };
    let resource = match a.subresource {
        Some(s) => format!("{}/{s}", a.resource.plural),
        None => a.resource.plural.to_string(),
    };
    let scope = match a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    Err(ApiError::Forbidden(format!(
        "{what} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        user.username(),
        a.verb,
        a.resource.group
    )))
}

/// The annotation that makes a pod a mirror of a node's static pod.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// NodeRestriction's rules for pods, given the object: a node creates only mirror pods
/// bound to itself, and updates the status of, or deletes, only pods bound to itself.
/// `pod` is the new object on create and the stored one otherwise.
pub fn node_restriction(node: &str, verb: &str, pod: &Value) -> Result<(), ApiError> {
    let bound_here = pod["spec"]["nodeName"].as_str() == Some(node);
    let message = match verb {
        "create" if pod["metadata"]["annotations"][MIRROR_ANNOTATION].is_null() => format!(
            "pod does not have \"{MIRROR_ANNOTATION}\" annotation, node \"{node}\" can only create mirror pods"
        ),
        "create" if !bound_here => {
            format!("node \"{node}\" can only create pods with spec.nodeName set to itself")
        }
        "update" | "patch" if !bound_here => {
            format!("node \"{node}\" can only update pod status for pods on itself")
        }
        "delete" if !bound_here => {
            format!("node \"{node}\" can only delete pods with spec.nodeName set to itself")
        }
        _ => return Ok(()),
    };
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    Err(ApiError::Forbidden(format!(
        "pods \"{name}\" is forbidden: {message}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    fn attrs<'a>(
        verb: &'a str,
        group: &str,
        plural: &str,
        ns: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Attributes<'a> {
        Attributes {
            verb,
            resource: find(group, plural).unwrap(),
            subresource: None,
            namespace: ns,
            name,
        }
    }

    #[test]
    fn certificates_and_tokens_identify_users() {
        let t = Tokens {
            admin: "a".repeat(48),
            node: "n".repeat(48),
        };
        let bearer = |s: &str| format!("Bearer {s}");
        assert_eq!(
            t.authenticate(None, Some(&bearer(&t.admin))).unwrap(),
            User::Admin
        );
        let join = JoinToken::new("CA", &t.node).to_string();
        assert_eq!(
            t.authenticate(None, Some(&bearer(&join))).unwrap(),
            User::Bootstrap
        );
        assert_eq!(
            t.authenticate(None, Some(&bearer(&t.node))).unwrap(),
            User::Bootstrap
        );
        let cert = Identity {
            user: "system:node:w1".into(),
            groups: vec!["system:nodes".into()],
        };
        assert_eq!(
            t.authenticate(Some(&cert), None).unwrap(),
            User::Node("w1".into())
        );
        // The old node:<name>:<token> form names nobody any more.
        assert!(
            t.authenticate(None, Some(&bearer(&format!("node:w1:{}", t.node))))
                .is_err()
        );
        assert!(t.authenticate(None, None).is_err());
        assert!(t.authenticate(None, Some("Bearer wrong")).is_err());
    }

    #[test]
    fn nodes_are_limited_to_kubelet_work() {
        let w1 = User::Node("w1".into());
        assert!(authorize(&w1, &attrs("list", "", "pods", None, None)).is_ok());
        assert!(authorize(&w1, &attrs("update", "", "nodes", None, Some("w1"))).is_ok());
        assert!(authorize(&w1, &attrs("patch", "", "nodes", None, Some("w2"))).is_err());
        assert!(authorize(&w1, &attrs("delete", "", "nodes", None, Some("w1"))).is_err());
        assert!(
            authorize(
                &w1,
                &attrs("create", "apps", "deployments", Some("default"), None)
            )
            .is_err()
        );
        for plural in ["secrets", "configmaps"] {
            assert!(authorize(&w1, &attrs("get", "", plural, Some("default"), Some("s"))).is_err());
            assert!(authorize(&w1, &attrs("list", "", plural, None, None)).is_err());
        }
        let mut patch = attrs("patch", "", "pods", Some("default"), Some("p"));
        assert!(
            authorize(&w1, &patch).is_err(),
            "a pod's spec is not the node's"
        );
        patch.subresource = Some("status");
        assert!(authorize(&w1, &patch).is_ok());
        let err = authorize(&w1, &attrs("delete", "", "nodes", None, Some("w2"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "nodes \"w2\" is forbidden: User \"system:node:w1\" cannot delete resource \"nodes\" in API group \"\" at the cluster scope"
        );
        assert!(
            authorize(
                &User::Admin,
                &attrs("delete", "", "nodes", None, Some("w2"))
            )
            .is_ok()
        );
        assert!(authorize(&User::Bootstrap, &attrs("list", "", "pods", None, None)).is_err());
    }

    #[test]
    fn node_restriction_keeps_nodes_to_their_own_pods() {
        let pod = |node: &str, mirror: bool| {
            let mut p = serde_json::json!({"metadata": {"name": "p"}, "spec": {"nodeName": node}});
            if mirror {
                p["metadata"]["annotations"] = serde_json::json!({MIRROR_ANNOTATION: "x"});
            }
            p
        };
        assert!(node_restriction("w1", "create", &pod("w1", true)).is_ok());
        let err = node_restriction("w1", "create", &pod("w1", false)).unwrap_err();
        assert!(
            err.to_string().contains("can only create mirror pods"),
            "{err}"
        );
        assert!(node_restriction("w1", "create", &pod("w2", true)).is_err());
        assert!(node_restriction("w1", "patch", &pod("w1", false)).is_ok());
        assert!(node_restriction("w1", "patch", &pod("w2", false)).is_err());
        assert!(node_restriction("w1", "delete", &pod("w2", false)).is_err());
        assert!(node_restriction("w1", "delete", &pod("w1", false)).is_ok());
    }
}
