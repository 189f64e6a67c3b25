//! List and watch options: label and field selectors, `limit` and the `continue`
//! token, the list as stored bytes, and which watch events pass the selectors.

use std::collections::HashMap;

use serde_json::{Value, json};
use tinykube_api::selector::{FieldSelector, Selector};

use super::strategy;
use crate::error::ApiError;
use crate::resources::ResourceInfo;
use crate::store::EventType;

/// Query options of list and watch.
#[derive(Default)]
pub struct ListOptions {
    pub labels: Selector,
    pub fields: FieldSelector,
    pub limit: usize,
    pub continue_key: Option<String>,
}

impl ListOptions {
    pub fn from_query(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let labels = match q.get("labelSelector") {
            Some(s) => Selector::parse(s).map_err(|e| ApiError::BadRequest(e.to_string()))?,
            None => Selector::everything(),
        };
        let fields = match q.get("fieldSelector") {
            Some(s) => FieldSelector::parse(s).map_err(|e| ApiError::BadRequest(e.to_string()))?,
            None => FieldSelector::default(),
        };
        let limit = match q.get("limit") {
            Some(l) => l
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid limit {l:?}")))?,
            None => 0,
        };
        let continue_key = match q.get("continue").filter(|c| !c.is_empty()) {
            Some(c) => Some(decode_continue(c)?),
            None => None,
        };
        Ok(Self {
            labels,
            fields,
            limit,
            continue_key,
        })
    }

    pub fn matches(&self, res: &ResourceInfo, obj: &Value) -> bool {
        self.labels.matches_json(obj["metadata"].get("labels"))
            && self.fields.matches(|f| field_value(res, obj, f))
    }

    pub fn check_fields(&self, res: &ResourceInfo) -> Result<(), ApiError> {
        let strategy = strategy::for_kind(res.kind);
        for r in &self.fields.requirements {
            let common = matches!(r.field.as_str(), "metadata.name" | "metadata.namespace");
            if !common && !strategy.selectable_field(&r.field) {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {}",
                    r.field
                )));
            }
        }
        Ok(())
    }
}

/// The value of a selectable field, as Kubernetes' `GetAttrs` functions give them.
pub fn field_value(_res: &ResourceInfo, obj: &Value, field: &str) -> Option<String> {
    let mut cur = obj;
    for part in field.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
    .or_else(|| (field == "spec.unschedulable").then(|| "false".to_string()))
}

pub fn encode_continue(key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

pub fn decode_continue(token: &str) -> Result<String, ApiError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ApiError::BadRequest("continue key is not valid: illegal base64 data".into())
        })
}

/// A list whose items are still the stored JSON bytes.
pub struct RawList {
    pub kind: String,
    pub api_version: String,
    pub meta: Value,
    pub items: Vec<bytes::Bytes>,
}

impl RawList {
    /// The list's JSON, with the stored items spliced in as they are.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let size: usize = self.items.iter().map(|i| i.len() + 1).sum();
        let mut out = Vec::with_capacity(size + 256);
        out.extend_from_slice(b"{\"kind\":");
        serde_json::to_writer(&mut out, &self.kind).expect("string");
        out.extend_from_slice(b",\"apiVersion\":");
        serde_json::to_writer(&mut out, &self.api_version).expect("string");
        out.extend_from_slice(b",\"metadata\":");
        serde_json::to_writer(&mut out, &self.meta).expect("json");
        out.extend_from_slice(b",\"items\":[");
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item);
        }
        out.extend_from_slice(b"]}");
        out
    }

    pub fn into_value(self) -> Result<Value, ApiError> {
        let items = self
            .items
            .iter()
            .map(|b| {
                serde_json::from_slice(b)
                    .map_err(|e| ApiError::Internal(format!("stored object is not JSON: {e}")))
            })
            .collect::<Result<Vec<Value>, _>>()?;
        Ok(
            json!({"kind": self.kind, "apiVersion": self.api_version, "metadata": self.meta, "items": items}),
        )
    }
}

/// Whether a watch event passes the selectors, and as what: an object that starts or
/// stops matching shows up as ADDED or DELETED, as Kubernetes' watch cache does it.
pub fn filter_event(
    res: &ResourceInfo,
    opts: &ListOptions,
    kind: EventType,
    obj: &Value,
    prev: Option<&Value>,
) -> Option<EventType> {
    let now = opts.matches(res, obj);
    match (kind, prev) {
        (EventType::Modified, Some(p)) => match (opts.matches(res, p), now) {
            (true, true) => Some(EventType::Modified),
            (false, true) => Some(EventType::Added),
            (true, false) => Some(EventType::Deleted),
            (false, false) => None,
        },
        _ => now.then_some(kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn continue_tokens_round_trip_and_garbage_is_refused() {
        let key = "/registry/pods/default/web-1";
        assert_eq!(decode_continue(&encode_continue(key)).unwrap(), key);
        let e = ListOptions::from_query(&query(&[("continue", "%%%")]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("continue key is not valid"), "{e}");
    }

    #[test]
    fn field_selectors_are_checked_per_kind() {
        let pods = resources::find("", "pods").unwrap();
        let svcs = resources::find("", "services").unwrap();
        let by_node =
            ListOptions::from_query(&query(&[("fieldSelector", "spec.nodeName=worker-1")]))
                .unwrap();
        assert!(by_node.check_fields(pods).is_ok());
        let e = by_node.check_fields(svcs).unwrap_err();
        assert!(
            e.to_string()
                .contains("field label not supported: spec.nodeName"),
            "{e}"
        );
        let by_name =
            ListOptions::from_query(&query(&[("fieldSelector", "metadata.name=web")])).unwrap();
        assert!(by_name.check_fields(svcs).is_ok());
    }
}
