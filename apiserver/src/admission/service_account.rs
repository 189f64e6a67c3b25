//! The ServiceAccount admission plugin: a pod runs as a service account (`default`
//! unless it names one) that must exist, and unless the pod or the account says
//! `automountServiceAccountToken: false`, it gets the projected volume
//! `kube-api-access-<random>` mounted in every container at
//! `/var/run/secrets/kubernetes.io/serviceaccount`: a token bound to the pod (which the
//! kubelet requests and renews), the cluster CA (`kube-root-ca.crt`) and the namespace.

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::registry::Registry;
use crate::registry::namespace::ROOT_CA_CONFIGMAP;
use crate::resources;

pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The token's lifetime the kubelet asks for (kube's 3607 seconds).
pub const TOKEN_EXPIRATION: i64 = 3607;

fn volume(name: &str) -> Value {
    json!({"name": name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION, "path": "token"}},
        {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                     "path": "namespace"}]}}
    ]}})
}

/// Sets the pod's account and mounts its token, or refuses a pod whose account does
/// not exist.
pub fn admit_pod(registry: &Registry, namespace: &str, pod: &mut Value) -> Result<(), ApiError> {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let account = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            spec.get("serviceAccount")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .unwrap_or("default")
        .to_string();
    spec.insert("serviceAccountName".into(), json!(account));
    let sas = resources::find("", "serviceaccounts").expect("served");
    let sa = registry.get(sas, Some(namespace), &account).map_err(|_| {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        ApiError::Forbidden(format!(
            "pods \"{name}\" is forbidden: error looking up service account {namespace}/{account}: serviceaccount \"{account}\" not found"
        ))
    })?;
    let spec = pod["spec"].as_object_mut().expect("an object");
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| sa.object["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let mounted = |c: &Value| {
        c["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["mountPath"] == MOUNT_PATH))
    };
    let containers = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec.get(*k).and_then(Value::as_array).into_iter().flatten());
    if containers.clone().count() > 0 && containers.clone().all(mounted) {
        return Ok(());
    }
    let name = crate::registry::prepare::generate_name("kube-api-access-");
    let volumes = spec
        .entry("volumes")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| ApiError::BadRequest("spec.volumes must be a list".into()))?;
    volumes.push(volume(&name));
    for key in ["initContainers", "containers"] {
        for c in spec
            .get_mut(key)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if mounted(c) {
                continue;
            }
            let mounts = c
                .as_object_mut()
                .map(|o| o.entry("volumeMounts").or_insert_with(|| json!([])));
            if let Some(Value::Array(m)) = mounts {
                m.push(json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH}));
            }
        }
    }
    Ok(())
}
