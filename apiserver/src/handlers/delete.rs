//! delete and deletecollection, with DeleteOptions from the body and the query.

use std::collections::HashMap;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::Call;
use crate::error::ApiError;
use crate::registry::{DeleteOptions, ListOptions};
use crate::request::negotiate::{Output, decode_object, present, read_body, respond};

pub async fn delete(c: &Call<'_>, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let opts = delete_options_of(headers, body, &c.info.query).await?;
    let name = c.name.ok_or(ApiError::NoRoute)?;
    let reg = &c.shared.registry;
    c.shared.admission.change(reg, c.user, c.info, c.res)?;
    let obj = reg.delete(c.res, c.ns, name, &opts).await?;
    Ok(respond(
        StatusCode::OK,
        &present(c.res, obj, c.output, c.include),
        c.output,
        &[],
    ))
}

pub async fn delete_collection(
    c: &Call<'_>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let q = &c.info.query;
    let opts = delete_options_of(headers, body, q).await?;
    let list = c
        .shared
        .registry
        .delete_collection(c.res, c.ns, &ListOptions::from_query(q)?, &opts)
        .await?;
    Ok(respond(StatusCode::OK, &list, Output::Json, &[]))
}

/// DeleteOptions from a delete's body (which may be empty) and its query.
async fn delete_options_of(
    headers: &HeaderMap,
    body: Body,
    q: &HashMap<String, String>,
) -> Result<DeleteOptions, ApiError> {
    let bytes = read_body(body).await?;
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        decode_object(headers, &bytes)?
    };
    delete_options(&body, q)
}

pub fn delete_options(
    body: &Value,
    q: &HashMap<String, String>,
) -> Result<DeleteOptions, ApiError> {
    let grace = match q.get("gracePeriodSeconds") {
        Some(g) => Some(
            g.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid gracePeriodSeconds {g:?}")))?,
        ),
        None => body["gracePeriodSeconds"].as_i64(),
    };
    let propagation = q
        .get("propagationPolicy")
        .cloned()
        .or_else(|| body["propagationPolicy"].as_str().map(str::to_string))
        .or_else(|| match body["orphanDependents"].as_bool() {
            Some(true) => Some("Orphan".into()),
            _ => None,
        });
    if let Some(p) = &propagation
        && !["Background", "Foreground", "Orphan"].contains(&p.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "propagationPolicy: Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
        )));
    }
    let dry_run = q.get("dryRun").is_some_and(|d| d == "All")
        || body["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|d| d == "All"));
    Ok(DeleteOptions {
        grace_period: grace,
        propagation,
        precondition_uid: body["preconditions"]["uid"].as_str().map(str::to_string),
        precondition_rv: body["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        dry_run,
    })
}
