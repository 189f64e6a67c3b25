//! The handler chain, in kube-apiserver's order (`DefaultBuildHandlerChain`, read from
//! the outside in): the request is parsed into its `RequestInfo`, authenticated,
//! impersonation applied, authorized, and then served by the verbs (which run
//! admission on the objects they write).

use std::sync::Arc;

use axum::middleware::{from_fn, from_fn_with_state};

use crate::state::Shared;
use crate::{authn, authz, handlers};

/// The whole API as one router; the last `layer` is the first a request meets.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .fallback(handlers::serve)
        .layer(from_fn_with_state(shared.authorizer.clone(), authz::layer))
        .layer(from_fn_with_state(
            shared.authorizer.clone(),
            authn::impersonation::layer,
        ))
        .layer(from_fn_with_state(shared.tokens.clone(), authn::layer))
        .layer(from_fn_with_state(
            shared.metrics.clone(),
            crate::metrics::layer,
        ))
        .layer(from_fn(super::info::layer))
        .with_state(shared)
}
