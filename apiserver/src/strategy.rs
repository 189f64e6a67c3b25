//! Per-kind admission: decode into the typed object, default, validate, re-encode; and
//! the metadata rules every create and update follows.

use k8s_openapi::Metadata;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tinykube_api::validation::FieldError;

use crate::defaults;
use crate::error::ApiError;
use crate::resources::ResourceInfo;
use crate::validation::{self, NameRule};

/// The `fieldValidation` query parameter: what to do with fields the schema lacks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl FieldValidation {
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some("Ignore") => Ok(Self::Ignore),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation parameter unsupported: {other}. Must be one of Ignore, Warn, Strict"
            ))),
        }
    }
}

#[derive(Debug)]
pub struct Admitted {
    pub object: Value,
    /// Unknown fields that were dropped, for `Warning` headers.
    pub warnings: Vec<String>,
}

/// Paths present in `input` that decoding into the typed object dropped.
fn unknown_fields(input: &Value, decoded: &Value, path: &str, out: &mut Vec<String>) {
    match (input, decoded) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(d) => unknown_fields(v, d, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn typed<T>(
    res: &ResourceInfo,
    input: Value,
    old: Option<&Value>,
    fv: FieldValidation,
    rule: NameRule,
    check: impl FnOnce(&mut T, Option<T>) -> Vec<FieldError>,
) -> Result<Admitted, ApiError>
where
    T: DeserializeOwned + Serialize + Metadata<Ty = ObjectMeta>,
{
    let cannot = |detail: String| {
        ApiError::BadRequest(format!(
            "{} in version \"{}\" cannot be handled as a {}: {detail}",
            res.kind, res.version, res.kind
        ))
    };
    let mut obj: T = serde_json::from_value(input.clone()).map_err(|e| cannot(e.to_string()))?;
    let mut warnings = Vec::new();
    if fv != FieldValidation::Ignore {
        let decoded = serde_json::to_value(&obj).map_err(|e| ApiError::Internal(e.to_string()))?;
        unknown_fields(&input, &decoded, "", &mut warnings);
    }
    if fv == FieldValidation::Strict && !warnings.is_empty() {
        let list: Vec<String> = warnings
            .iter()
            .map(|w| format!("unknown field \"{w}\""))
            .collect();
        return Err(cannot(format!(
            "strict decoding error: {}",
            list.join(", ")
        )));
    }
    let old: Option<T> = old.and_then(|o| serde_json::from_value(o.clone()).ok());
    let name = obj.metadata().name.clone().unwrap_or_default();
    let mut errs = validation::object_meta(obj.metadata(), rule, res.namespaced);
    errs.extend(check(&mut obj, old));
    if !errs.is_empty() {
        return Err(ApiError::invalid(res, &name, errs));
    }
    let object = serde_json::to_value(&obj).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Admitted {
        object,
        warnings: warnings
            .into_iter()
            .map(|w| format!("unknown field \"{w}\""))
            .collect(),
    })
}

const POD_UPDATE_MSG: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

fn pod_update(new: &Pod, old: &Pod) -> Vec<FieldError> {
    let (Some(mut spec), Some(old_spec)) = (new.spec.clone(), old.spec.as_ref()) else {
        return vec![];
    };
    for (c, o) in spec.containers.iter_mut().zip(&old_spec.containers) {
        c.image = o.image.clone();
    }
    for (c, o) in spec
        .init_containers
        .iter_mut()
        .flatten()
        .zip(old_spec.init_containers.iter().flatten())
    {
        c.image = o.image.clone();
    }
    spec.active_deadline_seconds = old_spec.active_deadline_seconds;
    spec.tolerations = old_spec.tolerations.clone();
    if &spec != old_spec {
        vec![FieldError::forbidden("spec", POD_UPDATE_MSG)]
    } else {
        vec![]
    }
}

/// Decodes, defaults and validates an object of `res`; `old` is the stored object on update.
pub fn admit(
    res: &ResourceInfo,
    input: Value,
    old: Option<&Value>,
    fv: FieldValidation,
) -> Result<Admitted, ApiError> {
    use NameRule::*;
    match res.kind {
        "Pod" => typed::<Pod>(res, input, old, fv, Subdomain, |p, old| {
            let Some(spec) = p.spec.as_mut() else {
                return vec![FieldError::required("spec", "")];
            };
            defaults::pod_spec(spec);
            let mut errs = validation::pod_spec(spec, "spec");
            if let Some(old) = old {
                errs.extend(pod_update(p, &old));
            }
            errs
        }),
        "Deployment" => typed::<Deployment>(res, input, old, fv, Subdomain, |d, old| {
            defaults::deployment(d);
            validation::deployment(d, old.as_ref())
        }),
        "ReplicaSet" => typed::<ReplicaSet>(res, input, old, fv, Subdomain, |rs, old| {
            defaults::replica_set(rs);
            validation::replica_set(rs, old.as_ref())
        }),
        "Service" => typed::<Service>(res, input, old, fv, Dns1035, |s, old| {
            defaults::service(s);
            validation::service(s, old.as_ref())
        }),
        "Namespace" => typed::<Namespace>(res, input, old, fv, Label, |ns, _| {
            defaults::namespace(ns);
            vec![]
        }),
        "ConfigMap" => typed::<ConfigMap>(res, input, old, fv, Subdomain, |cm, _| {
            validation::config_map(cm)
        }),
        "Secret" => typed::<Secret>(res, input, old, fv, Subdomain, |s, _| {
            // stringData is write-only: merged into data, as Kubernetes does.
            if let Some(strings) = s.string_data.take() {
                let data = s.data.get_or_insert_with(Default::default);
                for (k, v) in strings {
                    data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
                }
            }
            s.type_.get_or_insert_with(|| "Opaque".into());
            validation::secret(s)
        }),
        "Node" => typed::<Node>(res, input, old, fv, Subdomain, |_, _| vec![]),
        "ServiceAccount" => typed::<ServiceAccount>(res, input, old, fv, Subdomain, |_, _| vec![]),
        "Endpoints" => typed::<Endpoints>(res, input, old, fv, Subdomain, |_, _| vec![]),
        "Event" => typed::<Event>(res, input, old, fv, Subdomain, |_, _| vec![]),
        "EndpointSlice" => typed::<EndpointSlice>(res, input, old, fv, Subdomain, |_, _| vec![]),
        "Lease" => typed::<Lease>(res, input, old, fv, Subdomain, |_, _| vec![]),
        other => Err(ApiError::Internal(format!("no admission for kind {other}"))),
    }
}

/// Kubernetes' DefaultTolerationSeconds admission: every pod tolerates a node being
/// not-ready or unreachable for a while (300 s by default) before it is evicted.
pub fn add_default_tolerations(pod: &mut Value, seconds: i64) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let list = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = list.as_array_mut() else {
        return;
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let covered = list.iter().any(|t| {
            let k = t["key"].as_str().unwrap_or_default();
            let e = t["effect"].as_str().unwrap_or_default();
            (k.is_empty() || k == key) && (e.is_empty() || e == "NoExecute")
        });
        if !covered {
            list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
        }
    }
}

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

    #[test]
    fn unknown_fields_are_reported_and_strict_refuses_them() {
        let pods = find("", "pods").unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
                         "spec": {"containers": [{"name": "c", "image": "nginx", "bogus": 1}]}});
        let ok = admit(pods, pod.clone(), None, FieldValidation::Warn).unwrap();
        assert_eq!(
            ok.warnings,
            vec!["unknown field \"spec.containers[0].bogus\""]
        );
        let err = admit(pods, pod, None, FieldValidation::Strict).unwrap_err();
        assert!(
            err.to_string()
                .contains("strict decoding error: unknown field \"spec.containers[0].bogus\"")
        );
    }

    #[test]
    fn wrong_types_are_bad_requests() {
        let pods = find("", "pods").unwrap();
        let pod = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": "nope"}});
        let err = admit(pods, pod, None, FieldValidation::Warn).unwrap_err();
        assert_eq!(err.code(), 400);
        assert!(
            err.to_string()
                .starts_with("Pod in version \"v1\" cannot be handled as a Pod")
        );
    }

    #[test]
    fn pod_spec_is_immutable_but_images_may_change() {
        let pods = find("", "pods").unwrap();
        let old = admit(pods, json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [{"name": "c", "image": "a"}]}}), None, FieldValidation::Warn).unwrap().object;
        let mut image = old.clone();
        image["spec"]["containers"][0]["image"] = json!("b");
        assert!(admit(pods, image, Some(&old), FieldValidation::Warn).is_ok());
        let mut node = old.clone();
        node["spec"]["nodeName"] = json!("n1");
        assert_eq!(
            admit(pods, node, Some(&old), FieldValidation::Warn)
                .unwrap_err()
                .code(),
            422
        );
    }

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
