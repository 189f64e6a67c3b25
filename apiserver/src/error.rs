//! API errors and their one conversion to a Kubernetes `Status` with code and reason.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use tinykube_api::validation::FieldError;

use crate::resources::ResourceInfo;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        resource: String,
        group: String,
        name: String,
    },
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        resource: String,
        group: String,
        name: String,
    },
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {detail}")]
    Conflict {
        resource: String,
        group: String,
        name: String,
        detail: String,
    },
    #[error("{}", invalid_message(.kind, .group, .name, .errors))]
    Invalid {
        kind: String,
        group: String,
        name: String,
        errors: Vec<FieldError>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("the request body is too large: the limit is {0} bytes")]
    TooLarge(usize),
    #[error("too old resource version: {requested} ({oldest})")]
    Gone { requested: u64, oldest: u64 },
    #[error("{0}")]
    Internal(String),
}

fn invalid_message(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> String {
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let joined = if list.len() == 1 {
        list[0].clone()
    } else {
        format!("[{}]", list.join(", "))
    };
    format!("{qualified} \"{name}\" is invalid: {joined}")
}

impl ApiError {
    pub fn not_found(res: &ResourceInfo, name: &str) -> Self {
        Self::NotFound {
            resource: res.plural.into(),
            group: res.group.into(),
            name: name.into(),
        }
    }

    pub fn already_exists(res: &ResourceInfo, name: &str) -> Self {
        Self::AlreadyExists {
            resource: res.plural.into(),
            group: res.group.into(),
            name: name.into(),
        }
    }

    pub fn conflict(res: &ResourceInfo, name: &str, detail: impl Into<String>) -> Self {
        Self::Conflict {
            resource: res.qualified(),
            group: res.group.into(),
            name: name.into(),
            detail: detail.into(),
        }
    }

    pub fn modified(res: &ResourceInfo, name: &str) -> Self {
        Self::conflict(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(res: &ResourceInfo, name: &str, errors: Vec<FieldError>) -> Self {
        Self::Invalid {
            kind: res.kind.into(),
            group: res.group.into(),
            name: name.into(),
            errors,
        }
    }

    /// Maps a storage error on `res`/`name` to the API error a client expects.
    pub fn from_store(res: &ResourceInfo, name: &str, e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::not_found(res, name),
            StoreError::AlreadyExists(_) => Self::already_exists(res, name),
            StoreError::Conflict { .. } => Self::modified(res, name),
            StoreError::Compacted { requested, oldest } => Self::Gone { requested, oldest },
            other => Self::Internal(error_chain(&other)),
        }
    }

    pub fn code(&self) -> StatusCode {
        match self {
            Self::NotFound { .. } | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::AlreadyExists { .. } | Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Gone { .. } => StatusCode::GONE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } | Self::NoRoute => "NotFound",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::Conflict { .. } => "Conflict",
            Self::Invalid { .. } => "Invalid",
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::MethodNotAllowed(_) => "MethodNotAllowed",
            Self::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Self::NotAcceptable(_) => "NotAcceptable",
            Self::TooLarge(_) => "RequestEntityTooLarge",
            Self::Gone { .. } => "Expired",
            Self::Internal(_) => "InternalError",
        }
    }

    /// The `metav1.Status` body.
    pub fn status(&self) -> Value {
        let mut details = serde_json::Map::new();
        match self {
            Self::NotFound {
                resource,
                group,
                name,
            }
            | Self::AlreadyExists {
                resource,
                group,
                name,
            } => {
                details.insert("name".into(), json!(name));
                if !group.is_empty() {
                    details.insert("group".into(), json!(group));
                }
                details.insert("kind".into(), json!(resource));
            }
            Self::Conflict {
                resource,
                group,
                name,
                ..
            } => {
                details.insert("name".into(), json!(name));
                if !group.is_empty() {
                    details.insert("group".into(), json!(group));
                }
                details.insert(
                    "kind".into(),
                    json!(resource.split('.').next().unwrap_or_default()),
                );
            }
            Self::Invalid {
                kind,
                group,
                name,
                errors,
            } => {
                details.insert("name".into(), json!(name));
                if !group.is_empty() {
                    details.insert("group".into(), json!(group));
                }
                details.insert("kind".into(), json!(kind));
                let causes: Vec<Value> = errors
                    .iter()
                    .map(|e| json!({"reason": e.kind.cause_reason(), "message": e.body(), "field": e.field}))
                    .collect();
                details.insert("causes".into(), Value::Array(causes));
            }
            _ => {}
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

pub use tinykube_api::error_chain;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(msg) = &self {
            tracing::error!(%msg, "internal error");
        }
        let body = serde_json::to_vec(&self.status()).expect("status serializes");
        (
            self.code(),
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    #[test]
    fn invalid_status_has_causes_and_kubernetes_message() {
        let res = resources::find("apps", "deployments").unwrap();
        let err = ApiError::invalid(
            res,
            "Web",
            vec![FieldError::invalid("metadata.name", "Web", "bad name")],
        );
        let s = err.status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["reason"], "Invalid");
        assert_eq!(
            s["message"],
            "Deployment.apps \"Web\" is invalid: metadata.name: Invalid value: \"Web\": bad name"
        );
        assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");
        assert_eq!(s["details"]["group"], "apps");
    }

    #[test]
    fn not_found_names_the_resource() {
        let res = resources::find("", "pods").unwrap();
        let s = ApiError::not_found(res, "web").status();
        assert_eq!(s["message"], "pods \"web\" not found");
        assert_eq!(s["details"]["kind"], "pods");
        assert_eq!(s["code"], 404);
    }
}
