//! Authentication (bearer tokens: admin and node join token) and authorization.

use crate::error::ApiError;
use crate::resources::ResourceInfo;

#[derive(Debug, Clone, PartialEq)]
pub enum User {
    Admin,
    /// A node agent; named when it presents `node:<name>:<join token>`.
    Node(Option<String>),
}

impl User {
    pub fn username(&self) -> String {
        match self {
            Self::Admin => "admin".into(),
            Self::Node(Some(n)) => format!("system:node:{n}"),
            Self::Node(None) => "system:node".into(),
        }
    }
}

#[derive(Clone)]
pub struct Tokens {
    pub admin: String,
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
    pub fn generate() -> Self {
        Self {
            admin: random_token(),
            node: random_token(),
        }
    }

    pub fn authenticate(&self, authorization: Option<&str>) -> Result<User, ApiError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        if same(token, &self.admin) {
            return Ok(User::Admin);
        }
        if same(token, &self.node) {
            return Ok(User::Node(None));
        }
        if let Some((name, secret)) = token.strip_prefix("node:").and_then(|t| t.rsplit_once(':'))
            && same(secret, &self.node)
            && !name.is_empty()
        {
            return Ok(User::Node(Some(name.to_string())));
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

/// Admins may do everything. Nodes may read everything but secrets (only those their
/// pods use, checked by the caller) and write only what
/// a kubelet writes: their own Node and Lease, pods and their status, events, and the
/// Leases of the LoadBalancer pool addresses they announce.
pub fn authorize(user: &User, a: &Attributes<'_>) -> Result<(), ApiError> {
    let node = match user {
        User::Admin => return Ok(()),
        User::Node(n) => n.as_deref(),
    };
    let read = matches!(a.verb, "get" | "list" | "watch");
    let own = |name: Option<&str>| node.is_some() && name == node;
    let allowed = match (a.resource.group, a.resource.plural) {
        ("", "secrets") => false,
        (_, _) if read => true,
        ("", "nodes") => match a.verb {
            "create" | "update" | "patch" | "delete" => own(a.name),
            _ => false,
        },
        ("", "pods") => {
            matches!(a.verb, "create" | "update" | "patch" | "delete")
                && !matches!(a.subresource, Some("binding") | Some("eviction"))
        }
        ("", "events") => matches!(a.verb, "create" | "update" | "patch"),
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
    fn tokens_identify_users() {
        let t = Tokens {
            admin: "a".repeat(48),
            node: "n".repeat(48),
        };
        assert_eq!(
            t.authenticate(Some(&format!("Bearer {}", t.admin)))
                .unwrap(),
            User::Admin
        );
        assert_eq!(
            t.authenticate(Some(&format!("Bearer node:w1:{}", t.node)))
                .unwrap(),
            User::Node(Some("w1".into()))
        );
        assert!(t.authenticate(None).is_err());
        assert!(t.authenticate(Some("Bearer wrong")).is_err());
        assert!(
            t.authenticate(Some(&format!("Bearer node:w1:{}x", t.node)))
                .is_err()
        );
    }

    #[test]
    fn nodes_are_limited_to_kubelet_work() {
        let w1 = User::Node(Some("w1".into()));
        assert!(authorize(&w1, &attrs("list", "", "pods", None, None)).is_ok());
        assert!(authorize(&w1, &attrs("update", "", "nodes", None, Some("w1"))).is_ok());
        assert!(authorize(&w1, &attrs("delete", "", "nodes", None, Some("w2"))).is_err());
        assert!(
            authorize(
                &w1,
                &attrs("create", "apps", "deployments", Some("default"), None)
            )
            .is_err()
        );
        assert!(
            authorize(
                &w1,
                &attrs("get", "", "secrets", Some("default"), Some("s"))
            )
            .is_err()
        );
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
    }
}
