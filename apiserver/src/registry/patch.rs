//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge
//! patch, the form `kubectl apply`, `label` and `cordon` send for built-in types.

use serde_json::{Map, Value};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" => Err(ApiError::UnsupportedMediaType(
                "server-side apply is not supported by this server; use client-side `kubectl apply`".into(),
            )),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
            ))),
        }
    }
}

/// Applies `patch` (raw body) of `kind` to `target`.
pub fn apply(
    kind: PatchType,
    target: &Value,
    patch: &[u8],
    object_kind: &str,
) -> Result<Value, ApiError> {
    let bad = |e: String| ApiError::BadRequest(e);
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(patch)
                .map_err(|e| bad(format!("error decoding patch: {e}")))?;
            let mut out = target.clone();
            json_patch::patch(&mut out, &ops).map_err(|e| ApiError::Invalid {
                kind: object_kind.into(),
                group: String::new(),
                name: target["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                errors: vec![tinykube_api::validation::FieldError::invalid(
                    "",
                    "",
                    format!("the JSON patch failed: {e}"),
                )],
            })?;
            Ok(out)
        }
        PatchType::Merge => {
            let p: Value = serde_json::from_slice(patch)
                .map_err(|e| bad(format!("error decoding patch: {e}")))?;
            if !p.is_object() {
                return Err(bad("merge patch must be a JSON object".into()));
            }
            let mut out = target.clone();
            json_patch::merge(&mut out, &p);
            Ok(out)
        }
        PatchType::Strategic => {
            let p: Value = serde_json::from_slice(patch)
                .map_err(|e| bad(format!("error decoding patch: {e}")))?;
            let Value::Object(p) = p else {
                return Err(bad("strategic merge patch must be a JSON object".into()));
            };
            let mut out = target.clone();
            let Value::Object(o) = &mut out else {
                return Err(bad("the stored object is not a JSON object".into()));
            };
            let mut path = Vec::new();
            merge_map(o, &p, &mut path, object_kind);
            Ok(out)
        }
    }
}

enum ListStrategy {
    ByKey(&'static str),
    Primitive,
}

/// The `patchStrategy`/`patchMergeKey` tags of Kubernetes' Go types, by field.
fn list_strategy(path: &[String], field: &str, kind: &str) -> Option<ListStrategy> {
    use ListStrategy::*;
    let parent = path.last().map(String::as_str).unwrap_or_default();
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" => ByKey("name"),
        "env" | "volumes" | "imagePullSecrets" | "resourceClaims" => ByKey("name"),
        "volumeMounts" => ByKey("mountPath"),
        "volumeDevices" => ByKey("devicePath"),
        "hostAliases" => ByKey("ip"),
        "topologySpreadConstraints" => ByKey("topologyKey"),
        "conditions" => ByKey("type"),
        "addresses" if kind == "Node" => ByKey("type"),
        "ownerReferences" => ByKey("uid"),
        "finalizers" => Primitive,
        "ports" if kind == "Service" && parent == "spec" && path.len() == 1 => ByKey("port"),
        "ports"
            if matches!(
                parent,
                "containers" | "initContainers" | "ephemeralContainers"
            ) =>
        {
            ByKey("containerPort")
        }
        _ => return None,
    })
}

/// Removes patch directives from a value that is inserted as a whole.
fn clean(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), clean(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
        other => other.clone(),
    }
}

fn merge_map(
    orig: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
    kind: &str,
) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let Value::Object(m) = clean(&Value::Object(patch.clone())) else {
            unreachable!()
        };
        *orig = m;
        return;
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        orig.retain(|k, _| keep.contains(&k.as_str()) || patch.contains_key(k));
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (orig.get_mut(field), v) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            orig.remove(k);
            continue;
        }
        match (orig.get_mut(k), v) {
            (Some(Value::Object(o)), Value::Object(p)) => {
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    orig.remove(k);
                    continue;
                }
                path.push(k.clone());
                merge_map(o, p, path, kind);
                path.pop();
            }
            (Some(Value::Array(o)), Value::Array(p)) => match list_strategy(path, k, kind) {
                Some(ListStrategy::ByKey(key)) => {
                    path.push(k.clone());
                    merge_list(o, p, key, path, kind);
                    path.pop();
                }
                Some(ListStrategy::Primitive) => {
                    for item in p {
                        if !o.contains(item) {
                            o.push(item.clone());
                        }
                    }
                }
                None => {
                    orig.insert(k.clone(), clean(v));
                }
            },
            _ => {
                if v.get("$patch").and_then(Value::as_str) == Some("delete") {
                    orig.remove(k);
                } else {
                    orig.insert(k.clone(), clean(v));
                }
            }
        }
    }
}

fn merge_list(
    orig: &mut Vec<Value>,
    patch: &[Value],
    key: &str,
    path: &mut Vec<String>,
    kind: &str,
) {
    if patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *orig = patch
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(clean)
            .collect();
        return;
    }
    for item in patch {
        let Value::Object(p) = item else {
            if !orig.contains(item) {
                orig.push(item.clone());
            }
            continue;
        };
        let id = p.get(key);
        let pos = id.and_then(|id| orig.iter().position(|o| o.get(key) == Some(id)));
        if p.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                orig.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => {
                if let Value::Object(o) = &mut orig[i] {
                    merge_map(o, p, path, kind);
                }
            }
            None => orig.push(clean(item)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(target: Value, patch: Value, kind: &str) -> Value {
        apply(
            PatchType::Strategic,
            &target,
            patch.to_string().as_bytes(),
            kind,
        )
        .unwrap()
    }

    #[test]
    fn containers_merge_by_name() {
        let d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}]}}}});
        let out = smp(
            d,
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "a", "image": "a:2", "ports": [{"containerPort": 81}]}]}}}}),
            "Deployment",
        );
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["image"], "a:2");
        assert_eq!(c[0]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(c[1]["image"], "b:1");
    }

    #[test]
    fn delete_directives_and_nulls() {
        let d = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
                       "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let out = smp(
            d,
            json!({"metadata": {"labels": {"a": null}, "$deleteFromPrimitiveList/finalizers": ["x"]},
                   "spec": {"containers": [{"name": "b", "$patch": "delete"}]}}),
            "Pod",
        );
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
        assert_eq!(out["spec"]["containers"], json!([{"name": "a"}]));
    }

    #[test]
    fn service_ports_merge_by_port_and_other_lists_replace() {
        let s =
            json!({"spec": {"ports": [{"port": 80, "name": "http"}], "externalIPs": ["1.1.1.1"]}});
        let out = smp(
            s,
            json!({"spec": {"ports": [{"port": 443, "name": "https"}], "externalIPs": ["2.2.2.2"]}}),
            "Service",
        );
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(out["spec"]["externalIPs"], json!(["2.2.2.2"]));
    }

    #[test]
    fn json_patch_and_merge_patch() {
        let o = json!({"spec": {"unschedulable": false}});
        let j = apply(
            PatchType::Json,
            &o,
            br#"[{"op":"replace","path":"/spec/unschedulable","value":true}]"#,
            "Node",
        )
        .unwrap();
        assert_eq!(j["spec"]["unschedulable"], true);
        let m = apply(
            PatchType::Merge,
            &o,
            br#"{"spec":{"unschedulable":null}}"#,
            "Node",
        )
        .unwrap();
        assert_eq!(m["spec"], json!({}));
        assert!(
            apply(
                PatchType::Json,
                &o,
                br#"[{"op":"test","path":"/x","value":1}]"#,
                "Node"
            )
            .is_err()
        );
        assert!(apply(PatchType::Merge, &o, b"{not json", "Node").is_err());
    }
}
