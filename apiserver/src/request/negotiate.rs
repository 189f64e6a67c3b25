//! Content negotiation: the body a request sends (JSON, YAML, protobuf) decoded into a
//! JSON object, and the answer shaped for what it accepts (JSON, YAML, a server-side
//! Table, PartialObjectMetadata).

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::table::{self, IncludeObject};
use crate::error::ApiError;
use crate::resources::ResourceInfo;

/// Kubernetes' limit on request bodies.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Output {
    Json,
    Yaml,
    Table(&'static str),
    Metadata,
}

pub fn negotiate(headers: &HeaderMap) -> Result<Output, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.trim().is_empty() {
        return Ok(Output::Json);
    }
    for entry in accept.split(',') {
        let mut parts = entry.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let params: HashMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        match (media, params.get("as").copied()) {
            ("application/json" | "*/*" | "application/*", Some("Table"))
                if params.get("g") == Some(&"meta.k8s.io") =>
            {
                return Ok(Output::Table(if params.get("v") == Some(&"v1beta1") {
                    "meta.k8s.io/v1beta1"
                } else {
                    "meta.k8s.io/v1"
                }));
            }
            ("application/json", Some("PartialObjectMetadata" | "PartialObjectMetadataList")) => {
                return Ok(Output::Metadata);
            }
            ("application/json" | "*/*" | "application/*", None) => return Ok(Output::Json),
            ("application/yaml", None) => return Ok(Output::Yaml),
            _ => {}
        }
    }
    Err(ApiError::NotAcceptable(format!(
        "only the following media types are accepted: application/json, application/yaml (got {accept})"
    )))
}

pub fn respond(code: StatusCode, body: &Value, output: Output, warnings: &[String]) -> Response {
    let (bytes, ct) = match output {
        Output::Yaml => (
            serde_saphyr::to_string(body)
                .unwrap_or_default()
                .into_bytes(),
            "application/yaml",
        ),
        _ => (
            serde_json::to_vec(body).expect("json values serialize"),
            "application/json",
        ),
    };
    let mut resp = (code, [(header::CONTENT_TYPE, ct)], bytes).into_response();
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - {:?}", w)) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// Shapes one object (or list) for the negotiated output.
pub fn present(res: &ResourceInfo, body: Value, output: Output, include: IncludeObject) -> Value {
    match output {
        Output::Table(api_version) => {
            let (items, meta) = match body.get("items") {
                Some(Value::Array(items)) => (items.clone(), body["metadata"].clone()),
                _ => (
                    vec![body.clone()],
                    json!({"resourceVersion": body["metadata"]["resourceVersion"]}),
                ),
            };
            let mut t = table::table(res, &items, include, true, meta);
            t["apiVersion"] = json!(api_version);
            t
        }
        Output::Metadata => match body.get("items") {
            Some(Value::Array(items)) => json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": body["metadata"],
                "items": items.iter().map(partial).collect::<Vec<_>>(),
            }),
            _ => partial(&body),
        },
        _ => body,
    }
}

pub fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
}

pub fn query(uri: &http::Uri) -> HashMap<String, String> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

pub async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => Ok(b),
        Err(_) => Err(ApiError::TooLarge(MAX_BODY)),
    }
}

pub fn decode_object(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = ct.split(';').next().unwrap_or_default().trim();
    let value: Value = match media {
        "application/json" | "" => serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}"))
        })?,
        super::protobuf::CONTENT_TYPE => super::protobuf::decode(body)?,
        "application/yaml" => serde_saphyr::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!("couldn't get version/kind; yaml parse error: {e}"))
        })?,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other:?})"
            )));
        }
    };
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    Ok(value)
}
