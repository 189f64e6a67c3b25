//! Per-kind decoding: the body into its typed object (unknown fields warned of or
//! refused), defaulted and validated, and back to JSON; what kube-apiserver's scheme and
//! each resource's strategy `Validate` do.

use k8s_openapi::Metadata;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tinykube_api::validation::FieldError;

use super::defaults;
use super::validation::{self, NameRule};
use crate::error::ApiError;
use crate::resources::ResourceInfo;

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
pub struct Decoded {
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
) -> Result<Decoded, ApiError>
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
    Ok(Decoded {
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
pub fn decode(
    res: &ResourceInfo,
    input: Value,
    old: Option<&Value>,
    fv: FieldValidation,
) -> Result<Decoded, ApiError> {
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
        "Role" => typed::<Role>(res, input, old, fv, Path, |r, _| {
            validation::policy_rules(r.rules.as_deref(), false)
        }),
        "ClusterRole" => typed::<ClusterRole>(res, input, old, fv, Path, |r, _| {
            validation::policy_rules(r.rules.as_deref(), true)
        }),
        "RoleBinding" => typed::<RoleBinding>(res, input, old, fv, Path, |b, old| {
            validation::binding(
                &b.role_ref,
                b.subjects.as_deref(),
                old.map(|o| o.role_ref),
                true,
            )
        }),
        "ClusterRoleBinding" => typed::<ClusterRoleBinding>(res, input, old, fv, Path, |b, old| {
            validation::binding(
                &b.role_ref,
                b.subjects.as_deref(),
                old.map(|o| o.role_ref),
                false,
            )
        }),
        "CertificateSigningRequest" => {
            typed::<CertificateSigningRequest>(res, input, old, fv, Subdomain, |c, old| {
                super::csr::validate(c, old)
            })
        }
        other => Err(ApiError::Internal(format!("no decoding for kind {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_reported_and_strict_refuses_them() {
        let pods = find("", "pods").unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
                         "spec": {"containers": [{"name": "c", "image": "nginx", "bogus": 1}]}});
        let ok = decode(pods, pod.clone(), None, FieldValidation::Warn).unwrap();
        assert_eq!(
            ok.warnings,
            vec!["unknown field \"spec.containers[0].bogus\""]
        );
        let err = decode(pods, pod, None, FieldValidation::Strict).unwrap_err();
        assert!(
            err.to_string()
                .contains("strict decoding error: unknown field \"spec.containers[0].bogus\"")
        );
    }

    #[test]
    fn wrong_types_are_bad_requests() {
        let pods = find("", "pods").unwrap();
        let pod = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"containers": "nope"}});
        let err = decode(pods, pod, None, FieldValidation::Warn).unwrap_err();
        assert_eq!(err.code(), 400);
        assert!(
            err.to_string()
                .starts_with("Pod in version \"v1\" cannot be handled as a Pod")
        );
    }

    #[test]
    fn pod_spec_is_immutable_but_images_may_change() {
        let pods = find("", "pods").unwrap();
        let old = decode(pods, json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [{"name": "c", "image": "a"}]}}), None, FieldValidation::Warn).unwrap().object;
        let mut image = old.clone();
        image["spec"]["containers"][0]["image"] = json!("b");
        assert!(decode(pods, image, Some(&old), FieldValidation::Warn).is_ok());
        let mut node = old.clone();
        node["spec"]["nodeName"] = json!("n1");
        assert_eq!(
            decode(pods, node, Some(&old), FieldValidation::Warn)
                .unwrap_err()
                .code(),
            422
        );
    }
}
