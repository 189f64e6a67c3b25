//! get and list.

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};

use super::Call;
use crate::error::ApiError;
use crate::registry::{ListOptions, Registry};
use crate::request::negotiate::{Output, present, respond};

pub fn list(c: &Call<'_>) -> Result<Response, ApiError> {
    let opts = ListOptions::from_query(&c.info.query)?;
    let list = c.shared.registry.list_raw(c.res, c.ns, &opts)?;
    if c.output == Output::Json {
        // Stored objects are spliced into the answer as they are, unparsed.
        let body = list.to_json_bytes();
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response());
    }
    let list = list.into_value()?;
    Ok(respond(
        StatusCode::OK,
        &present(c.res, list, c.output, c.include),
        c.output,
        &[],
    ))
}

pub fn get(c: &Call<'_>) -> Result<Response, ApiError> {
    let stored = c
        .shared
        .registry
        .get(c.res, c.ns, c.name.ok_or(ApiError::NoRoute)?)?;
    let body = if c.sub == Some("scale") {
        Registry::scale_of(&stored.object)
    } else {
        stored.object
    };
    Ok(respond(
        StatusCode::OK,
        &present(c.res, body, c.output, c.include),
        c.output,
        &[],
    ))
}
