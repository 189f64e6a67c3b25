//! DefaultTolerationSeconds: every pod tolerates a node being not-ready or unreachable
//! for a while (300 s by default) before it is evicted.

use serde_json::{Value, json};

/// Adds the not-ready and unreachable tolerations a pod does not already have.
pub fn add_default_tolerations(pod: &mut Value, seconds: i64) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let list = spec.entry("tolerations").or_insert_with(|| json!([]));
    let Some(list) = list.as_array_mut() else {
        return;
    };
    for key in [
        tinykube_api::taint::NOT_READY,
        tinykube_api::taint::UNREACHABLE,
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
