//! The paths every client needs, as kube-apiserver's bootstrap roles grant them:
//! `system:public-info-viewer` (health, version; here also the cluster CA, which a
//! joining node checks against its token) to everyone, `system:discovery` (the API's
//! discovery documents) to every authenticated user, and the join to the join token's
//! group.

use super::{Attributes, Decision};
use crate::authn::{AUTHENTICATED, BOOTSTRAPPERS};

/// Where a joining node trades the join token for its client certificate.
pub const JOIN_PATH: &str = "/tinykube/v1/join";

const PUBLIC: [&str; 5] = ["/healthz", "/livez", "/readyz", "/version", "/cacerts"];
const DISCOVERY: [&str; 3] = ["/api", "/apis", "/openapi"];

fn under(path: &str, roots: &[&str]) -> bool {
    roots.iter().any(|r| {
        path == *r
            || path
                .strip_prefix(r)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

pub fn decide(a: &Attributes<'_>) -> Decision {
    if a.resource_request {
        return Decision::NoOpinion(String::new());
    }
    let allowed = match a.verb {
        "get" | "head" => {
            under(a.path, &PUBLIC) || (a.user.in_group(AUTHENTICATED) && under(a.path, &DISCOVERY))
        }
        "post" => a.path == JOIN_PATH && a.user.in_group(BOOTSTRAPPERS),
        _ => false,
    };
    if allowed {
        Decision::Allow
    } else {
        Decision::NoOpinion(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::UserInfo;

    fn path<'a>(user: &'a UserInfo, verb: &'a str, path: &'a str) -> Attributes<'a> {
        Attributes {
            user,
            verb,
            resource_request: false,
            api_group: "",
            resource: "",
            subresource: None,
            namespace: None,
            name: None,
            path,
        }
    }

    #[test]
    fn public_discovery_and_join_paths() {
        let anon = UserInfo::anonymous();
        let jane = UserInfo::new("jane", []);
        let joiner = UserInfo::new("j", [BOOTSTRAPPERS.to_string()]);
        let ok = |a: Attributes<'_>| decide(&a) == Decision::Allow;
        assert!(ok(path(&anon, "get", "/healthz")));
        assert!(ok(path(&anon, "get", "/version")));
        assert!(!ok(path(&anon, "get", "/api")));
        assert!(ok(path(&jane, "get", "/apis/apps/v1")));
        assert!(!ok(path(&jane, "get", "/apisx")));
        assert!(!ok(path(&jane, "post", JOIN_PATH)));
        assert!(ok(path(&joiner, "post", JOIN_PATH)));
        assert!(!ok(path(&joiner, "get", "/metrics")));
    }
}
