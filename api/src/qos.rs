//! A pod's QoS class (BestEffort, Burstable, Guaranteed) from its containers'
//! requests and limits, as Kubernetes' `GetPodQOS` computes it.

use k8s_openapi::api::core::v1::{Container, PodSpec};

/// The QoS class of a pod with this spec.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let has = |c: &Container, limits: bool, k: &str| {
        c.resources
            .as_ref()
            .and_then(|r| {
                if limits {
                    r.limits.as_ref()
                } else {
                    r.requests.as_ref()
                }
            })
            .is_some_and(|m| m.contains_key(k))
    };
    if all.iter().all(|c| {
        !has(c, true, "cpu")
            && !has(c, true, "memory")
            && !has(c, false, "cpu")
            && !has(c, false, "memory")
    }) {
        return "BestEffort";
    }
    let guaranteed = all.iter().all(|c| {
        ["cpu", "memory"].iter().all(|k| {
            let r = c.resources.as_ref();
            let l = r.and_then(|r| r.limits.as_ref()).and_then(|m| m.get(*k));
            let q = r
                .and_then(|r| r.requests.as_ref())
                .and_then(|m| m.get(*k))
                .or(l);
            l.is_some() && l == q
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(resources: serde_json::Value) -> PodSpec {
        serde_json::from_value(
            serde_json::json!({"containers": [{"name": "c", "resources": resources}]}),
        )
        .unwrap()
    }

    #[test]
    fn classes_follow_requests_and_limits() {
        assert_eq!(qos_class(&spec(serde_json::json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&spec(serde_json::json!({"requests": {"cpu": "100m"}}))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&spec(
                serde_json::json!({"limits": {"cpu": "1", "memory": "64Mi"}})
            )),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&spec(
                serde_json::json!({"limits": {"cpu": "1", "memory": "64Mi"}, "requests": {"cpu": "500m"}})
            )),
            "Burstable"
        );
    }
}
