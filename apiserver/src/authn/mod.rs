//! Authentication: who sent the request. A client certificate signed by the cluster CA
//! names its user (CN) and groups (O), as kube-apiserver's x509 authenticator reads
//! them, and comes first (the admin is one in `system:masters`); else the bearer token
//! decides (the join token). With no credentials at all a request is `system:anonymous`, allowed only on
//! the public paths (health, version, the CA); anywhere else it gets 401, as
//! kube-apiserver does when anonymous access is limited to those endpoints.

pub mod impersonation;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header;
use tinykube_api::pki::{Identity, JoinToken};

use crate::error::ApiError;
use crate::request::RequestInfo;
use crate::serviceaccount::{self, ServiceAccountTokens};

/// The group whose members may do anything (kube-apiserver's privileged group).
pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
pub const ANONYMOUS: &str = "system:anonymous";
pub const NODES: &str = "system:nodes";
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// The user the join token authenticates as.
pub const JOIN_USER: &str = "system:bootstrap:node-token";

/// The paths anonymous requests may reach.
const ANONYMOUS_PATHS: [&str; 5] = ["/healthz", "/livez", "/readyz", "/version", "/cacerts"];

/// kube's `user.Info`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// An authenticated user: its own groups and `system:authenticated`.
    pub fn new(name: impl Into<String>, groups: impl IntoIterator<Item = String>) -> Self {
        let mut groups: Vec<String> = groups.into_iter().collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.into());
        }
        Self {
            name: name.into(),
            uid: String::new(),
            groups,
        }
    }

    pub fn anonymous() -> Self {
        Self {
            name: ANONYMOUS.into(),
            uid: String::new(),
            groups: vec![UNAUTHENTICATED.into()],
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The node a kubelet's identity names (`system:node:<name>` in `system:nodes`),
    /// as kube's `NodeIdentifier` reads it.
    pub fn node(&self) -> Option<&str> {
        self.name
            .strip_prefix(tinykube_api::pki::NODE_USER_PREFIX)
            .filter(|n| !n.is_empty() && self.in_group(NODES))
    }
}

/// The secrets bearer tokens are checked against.
#[derive(Clone)]
pub struct Tokens {
    /// The secret part of the join token.
    pub node: String,
    /// Service-account tokens (JWTs), checked when a bearer token is one.
    pub service_accounts: Option<Arc<ServiceAccountTokens>>,
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
    /// The user a request's credentials name; `None` when it carries none.
    pub fn authenticate(
        &self,
        peer: Option<&Identity>,
        authorization: Option<&str>,
    ) -> Result<Option<UserInfo>, ApiError> {
        if let Some(id) = peer {
            return Ok(Some(UserInfo::new(id.user.clone(), id.groups.clone())));
        }
        let Some(header) = authorization else {
            return Ok(None);
        };
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        if let Some(sa) = self
            .service_accounts
            .as_ref()
            .filter(|_| serviceaccount::is_jwt(token))
        {
            return match sa.verify(token, &[]) {
                Ok(claims) => Ok(Some(service_account_user(&claims))),
                Err(e) => {
                    tracing::debug!(error = %e, "bearer token refused");
                    Err(ApiError::Unauthorized)
                }
            };
        }
        let join = JoinToken::parse(token).map_err(|_| ApiError::Unauthorized)?;
        if same(&join.secret, &self.node) {
            return Ok(Some(UserInfo::new(JOIN_USER, [BOOTSTRAPPERS.to_string()])));
        }
        Err(ApiError::Unauthorized)
    }
}

/// The user a good service-account token names: `system:serviceaccount:<ns>:<name>`
/// in `system:serviceaccounts` and `system:serviceaccounts:<ns>`, with the account's uid.
pub fn service_account_user(claims: &serviceaccount::Claims) -> UserInfo {
    let (name, groups) = claims.user();
    let mut user = UserInfo::new(name, groups);
    user.uid = claims.kubernetes.serviceaccount.uid.clone();
    user
}

pub fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who is at the other end of the connection a request came on: the verified client
/// certificate, if any, and the address.
#[derive(Clone, Default)]
pub struct Peer {
    pub identity: Option<Identity>,
    /// When the client certificate expires (seconds since the epoch): checked on
    /// every request, as kube-apiserver's x509 authenticator does, so a long-lived
    /// connection does not outlive its certificate.
    pub not_after: Option<i64>,
    pub addr: Option<std::net::IpAddr>,
}

/// The authentication layer: puts the request's `UserInfo` in its extensions, or
/// answers 401.
pub async fn layer(State(tokens): State<Tokens>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<Peer>();
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if peer
        .and_then(|p| p.not_after)
        .is_some_and(|t| t < jiff::Timestamp::now().as_second())
    {
        return ApiError::Unauthorized.into_response();
    }
    let user = match tokens.authenticate(peer.and_then(|p| p.identity.as_ref()), header) {
        Ok(Some(user)) => user,
        Ok(None) if anonymous_may_reach(req.extensions().get::<Arc<RequestInfo>>()) => {
            UserInfo::anonymous()
        }
        Ok(None) | Err(_) => return ApiError::Unauthorized.into_response(),
    };
    req.extensions_mut().insert(Arc::new(user));
    next.run(req).await
}

fn anonymous_may_reach(info: Option<&Arc<RequestInfo>>) -> bool {
    info.is_some_and(|i| {
        !i.is_resource_request
            && ANONYMOUS_PATHS
                .iter()
                .any(|p| i.path == *p || i.path.starts_with(&format!("{p}/")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_and_tokens_identify_users() {
        let t = Tokens {
            node: "n".repeat(48),
            service_accounts: None,
        };
        let bearer = |s: &str| format!("Bearer {s}");
        let admin = Identity {
            user: "kubernetes-admin".into(),
            groups: vec![MASTERS.into()],
        };
        let admin = t.authenticate(Some(&admin), None).unwrap();
        assert!(admin.unwrap().in_group(MASTERS));
        let join = JoinToken::new("CA", &t.node).to_string();
        let joiner = t.authenticate(None, Some(&bearer(&join))).unwrap().unwrap();
        assert_eq!(joiner.name, JOIN_USER);
        assert!(joiner.in_group(BOOTSTRAPPERS) && joiner.in_group(AUTHENTICATED));
        let bare = t.authenticate(None, Some(&bearer(&t.node))).unwrap();
        assert_eq!(bare.unwrap().name, JOIN_USER);
        let cert = Identity {
            user: "system:node:w1".into(),
            groups: vec!["system:nodes".into()],
        };
        let node = t.authenticate(Some(&cert), None).unwrap().unwrap();
        assert_eq!(node.node(), Some("w1"));
        // A certificate's CN without the nodes group is no node.
        let jane = Identity {
            user: "system:node:w1".into(),
            groups: vec!["devs".into()],
        };
        let jane = t.authenticate(Some(&jane), None).unwrap().unwrap();
        assert_eq!(jane.node(), None);
        // The old node:<name>:<token> form names nobody any more.
        assert!(
            t.authenticate(None, Some(&bearer(&format!("node:w1:{}", t.node))))
                .is_err()
        );
        assert_eq!(t.authenticate(None, None).unwrap(), None);
        assert!(t.authenticate(None, Some("Bearer wrong")).is_err());
        assert!(t.authenticate(None, Some("Basic eDp5")).is_err());
    }

    #[test]
    fn anonymous_requests_reach_only_public_paths() {
        let info = |p: &str| {
            Some(Arc::new(RequestInfo::parse(
                &http::Method::GET,
                &p.parse().unwrap(),
            )))
        };
        assert!(anonymous_may_reach(info("/healthz").as_ref()));
        assert!(anonymous_may_reach(info("/readyz/ping").as_ref()));
        assert!(anonymous_may_reach(info("/cacerts").as_ref()));
        assert!(!anonymous_may_reach(info("/healthzzz").as_ref()));
        assert!(!anonymous_may_reach(info("/api").as_ref()));
        assert!(!anonymous_may_reach(info("/api/v1/pods").as_ref()));
    }
}
