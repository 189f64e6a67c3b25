//! The non-resource paths: health, version, the cluster CA, discovery and OpenAPI, the
//! service-account issuer's discovery (OpenID configuration and keys), and
//! the two certificate requests of nodes (the join, a kubelet's serving certificate),
//! and the explanation of an access decision.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{StatusCode, header};

use super::ok;
use crate::authn::{Peer, UserInfo};
use crate::authz::explain::ACCESS_PATH;
use crate::authz::{node::KUBELET_CERTIFICATE_PATH, rbac::bootstrap::JOIN_PATH};
use crate::certificates;
use crate::discovery;
use crate::error::ApiError;
use crate::request::RequestInfo;
use crate::request::negotiate::{decode_object, read_body};
use crate::serviceaccount;
use crate::state::Shared;

pub async fn serve(
    shared: &Arc<Shared>,
    info: &RequestInfo,
    parts: Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = info.path.split('/').filter(|s| !s.is_empty()).collect();
    let not_found = || Err(ApiError::NoRoute);
    match (info.verb.as_str(), segs.as_slice()) {
        ("get" | "head", ["healthz" | "livez" | "readyz", ..]) => {
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "ok").into_response())
        }
        (_, ["version"]) => ok(discovery::version()),
        ("get", ["metrics"]) => Ok((
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::scrape(shared),
        )
            .into_response()),
        ("get", [".well-known", "openid-configuration"]) => ok(
            serviceaccount::discovery::configuration(&shared.service_accounts, &shared.advertise),
        ),
        ("get", ["openid", "v1", "jwks"]) => {
            ok(serviceaccount::discovery::jwks(&shared.service_accounts))
        }
        // The cluster CA is public: a joining node fetches it and checks it against the
        // hash in its token before it trusts anything this server says.
        ("get", ["cacerts"]) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            shared.pki.ca_pem.clone(),
        )
            .into_response()),
        ("get", ["api"]) => ok(discovery::core_versions(&shared.advertise)),
        ("get", ["api", v]) => discovery::resource_list("", v).map_or_else(not_found, ok),
        ("get", ["apis"]) => ok(discovery::group_list()),
        ("get", ["apis", g]) => discovery::api_group(g).map_or_else(not_found, ok),
        ("get", ["apis", g, v]) => discovery::resource_list(g, v).map_or_else(not_found, ok),
        ("get", ["openapi", "v3"]) => ok(discovery::openapi_index()),
        ("get", ["openapi", "v3", rest @ ..]) => {
            discovery::openapi_group_version(&rest.join("/")).map_or_else(not_found, ok)
        }
        ("post", _) if info.path == JOIN_PATH => {
            let req = decode_object(&parts.headers, &read_body(body).await?)?;
            let from = parts.extensions.get::<Peer>().and_then(|p| p.addr);
            ok(certificates::join::join(
                &shared.registry,
                &shared.pki,
                &req,
                from,
                shared.signer.duration,
            )?)
        }
        ("post", _) if info.path == ACCESS_PATH => {
            ok(super::reviews::explain(shared, &parts.headers, body).await?)
        }
        ("post", _) if info.path == KUBELET_CERTIFICATE_PATH => {
            let user = parts.extensions.get::<Arc<UserInfo>>();
            let node = user.and_then(|u| u.node()).ok_or_else(|| {
                ApiError::Forbidden("only a node can get a kubelet serving certificate".into())
            })?;
            ok(certificates::kubelet::issue_certificate(
                &shared.registry,
                &shared.pki,
                node,
            )?)
        }
        _ => not_found(),
    }
}
