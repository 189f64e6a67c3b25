//! The metadata rules every create and update follows, as kube-apiserver's
//! `rest.BeforeCreate`/`BeforeUpdate`: the type checked against the URL, server-owned
//! fields filled or carried over, generated names, generations, status updates.

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::resources::ResourceInfo;

const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Kubernetes' `SimpleNameGenerator`: the prefix and five random characters.
pub fn generate_name(prefix: &str) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| NAME_CHARS[rng.random_range(0..NAME_CHARS.len())] as char)
        .collect();
    let max = 63 - 5;
    let prefix = if prefix.len() > max {
        &prefix[..max]
    } else {
        prefix
    };
    format!("{prefix}{suffix}")
}

fn meta_mut(obj: &mut Value) -> Result<&mut serde_json::Map<String, Value>, ApiError> {
    if !obj.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    let meta = obj
        .as_object_mut()
        .expect("object")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))
}

/// Checks `apiVersion`/`kind` of a body against the resource it was sent to.
pub fn check_type(res: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or(res.kind);
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind != res.kind {
        return Err(ApiError::BadRequest(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({}) or the kind ({kind}) does not match {}",
            res.api_version(),
            res.kind
        )));
    }
    if !api_version.is_empty() && api_version != res.api_version() {
        return Err(ApiError::BadRequest(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            res.api_version()
        )));
    }
    Ok(())
}

/// Fills the server-owned metadata of a new object and resets what a client may not set.
pub fn prepare_create(
    res: &ResourceInfo,
    obj: &mut Value,
    namespace: Option<&str>,
) -> Result<(), ApiError> {
    check_type(res, obj)?;
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the request body must be a JSON object".into()))?;
    map.insert("apiVersion".into(), json!(res.api_version()));
    map.insert("kind".into(), json!(res.kind));
    let meta = meta_mut(obj)?;
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if name.is_empty()
        && let Some(prefix) = meta
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
    {
        let generated = generate_name(prefix);
        meta.insert("name".into(), json!(generated));
    }
    if res.namespaced {
        let body_ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let url_ns = namespace.unwrap_or_default();
        if !body_ns.is_empty() && body_ns != url_ns {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        meta.insert("namespace".into(), json!(url_ns));
    } else {
        meta.remove("namespace");
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert(
        "creationTimestamp".into(),
        json!(tinykube_api::format::now_rfc3339()),
    );
    meta.insert("generation".into(), json!(1));
    for k in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    ] {
        meta.remove(k);
    }
    if res.has_status() && res.kind != "Node" {
        let status = match res.kind {
            // The pod's QoS class, as the API server sets it on create.
            "Pod" => {
                let qos = serde_json::from_value::<k8s_openapi::api::core::v1::PodSpec>(
                    obj["spec"].clone(),
                )
                .map_or("BestEffort", |s| tinykube_api::qos::qos_class(&s));
                json!({"phase": "Pending", "qosClass": qos})
            }
            "Service" => json!({"loadBalancer": {}}),
            _ => json!({}),
        };
        obj.as_object_mut()
            .expect("object")
            .insert("status".into(), status);
    }
    Ok(())
}

/// Carries server-owned metadata (and status, when it is a subresource) over from the
/// stored object into an update.
pub fn prepare_update(
    res: &ResourceInfo,
    obj: &mut Value,
    old: &Value,
    name: &str,
) -> Result<(), ApiError> {
    check_type(res, obj)?;
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the request body must be a JSON object".into()))?;
    map.insert("apiVersion".into(), json!(res.api_version()));
    map.insert("kind".into(), json!(res.kind));
    let body_name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or(name);
    if body_name != name {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if res.has_status() {
        match old.get("status") {
            Some(s) => map.insert("status".into(), s.clone()),
            None => map.remove("status"),
        };
    }
    let old_meta = &old["metadata"];
    let meta = meta_mut(obj)?;
    meta.insert("name".into(), json!(name));
    for k in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
    ] {
        match old_meta.get(k) {
            Some(v) => meta.insert(k.into(), v.clone()),
            None => meta.remove(k),
        };
    }
    meta.remove("managedFields");
    let generation = old_meta
        .get("generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    meta.insert("generation".into(), json!(generation));
    Ok(())
}

/// After admission (so defaults are in): bumps `generation` when anything but
/// metadata and status changed, as Kubernetes does for objects with a spec.
pub fn bump_generation(obj: &mut Value, old: &Value) {
    if strip_meta_status(obj) != strip_meta_status(old) {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
        obj["metadata"]["generation"] = json!(g + 1);
    }
}

fn strip_meta_status(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// An update of the status subresource: the stored object with only its status replaced.
pub fn status_update(
    res: &ResourceInfo,
    input: &Value,
    old: &Value,
    name: &str,
) -> Result<Value, ApiError> {
    check_type(res, input)?;
    let body_name = input["metadata"]["name"].as_str().unwrap_or(name);
    if body_name != name {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let mut out = old.clone();
    match input.get("status") {
        Some(s) => out["status"] = s.clone(),
        None => {
            out.as_object_mut().expect("object").remove("status");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;
    use serde_json::json;

    #[test]
    fn generated_names_keep_the_prefix() {
        let n = generate_name("web-");
        assert!(n.starts_with("web-") && n.len() == 9);
    }

    #[test]
    fn create_resets_server_fields() {
        let deploys = find("apps", "deployments").unwrap();
        let mut d = json!({"metadata": {"name": "d", "resourceVersion": "5", "uid": "x"}, "status": {"replicas": 9}});
        prepare_create(deploys, &mut d, Some("default")).unwrap();
        assert_eq!(d["metadata"]["namespace"], "default");
        assert_ne!(d["metadata"]["uid"], "x");
        assert!(d["metadata"].get("resourceVersion").is_none());
        assert_eq!(d["status"], json!({}));
        let mut wrong = json!({"kind": "Pod", "metadata": {"name": "d"}});
        assert!(prepare_create(deploys, &mut wrong, Some("default")).is_err());
    }

    #[test]
    fn pods_are_created_with_their_qos_class() {
        let pods = find("", "pods").unwrap();
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "image": "toolbox", "resources": {"requests": {"cpu": "100m"}}}]}});
        prepare_create(pods, &mut p, Some("default")).unwrap();
        assert_eq!(p["status"]["qosClass"], "Burstable");
        let mut bare = json!({"metadata": {"name": "b"}, "spec": {"containers": [{"name": "c", "image": "toolbox"}]}});
        prepare_create(pods, &mut bare, Some("default")).unwrap();
        assert_eq!(bare["status"]["qosClass"], "BestEffort");
    }
}
