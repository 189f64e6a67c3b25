//! Validation of objects, with Kubernetes' field paths and messages.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, PodTemplateSpec, Secret, Service};
use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tinykube_api::constants::{NODE_PORT_MAX, NODE_PORT_MIN};
use tinykube_api::selector::Selector;
use tinykube_api::validation::{self as v, FieldError};

const PORT_RANGE_MSG: &str = "must be between 1 and 65535, inclusive";

/// Go's `%#v` of a `map[string]string`, which Kubernetes puts in some messages.
pub fn go_map(m: &BTreeMap<String, String>) -> String {
    let items: Vec<String> = m.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
    format!("map[string]string{{{}}}", items.join(", "))
}

/// How an object's name is checked: most kinds use RFC 1123 subdomains.
#[derive(Clone, Copy)]
pub enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    /// Any name that is one URL path segment (RBAC objects: `system:discovery`).
    Path,
}

/// `path.ValidatePathSegmentName`.
fn path_segment(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    ["/", "%"]
        .iter()
        .filter(|c| name.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
        .collect()
}

pub fn object_meta(meta: &ObjectMeta, rule: NameRule, namespaced: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match meta.name.as_deref() {
        None | Some("") => errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(name) => {
            let msgs = match rule {
                NameRule::Subdomain => v::dns1123_subdomain(name),
                NameRule::Label => v::dns1123_label(name),
                NameRule::Dns1035 => v::dns1035_label(name),
                NameRule::Path => path_segment(name),
            };
            errs.extend(
                msgs.into_iter()
                    .map(|m| FieldError::invalid("metadata.name", name, m)),
            );
        }
    }
    if namespaced {
        match meta.namespace.as_deref() {
            None | Some("") => errs.push(FieldError::required("metadata.namespace", "")),
            Some(ns) => errs.extend(
                v::dns1123_label(ns)
                    .into_iter()
                    .map(|m| FieldError::invalid("metadata.namespace", ns, m)),
            ),
        }
    }
    if let Some(labels) = &meta.labels {
        errs.extend(v::labels(labels, "metadata.labels"));
    }
    let mut annotation_bytes = 0;
    for (k, val) in meta.annotations.iter().flatten() {
        annotation_bytes += k.len() + val.len();
        for m in v::label_key(k) {
            errs.push(FieldError::invalid("metadata.annotations", k, m));
        }
    }
    if annotation_bytes > 256 * 1024 {
        errs.push(FieldError {
            kind: v::FieldErrorType::TooLong,
            field: "metadata.annotations".into(),
            value: None,
            detail: "may not be more than 262144 bytes".into(),
        });
    }
    errs
}

fn port(field: String, value: i32, errs: &mut Vec<FieldError>) {
    if !(1..=65535).contains(&value) {
        errs.push(FieldError::invalid(field, value, PORT_RANGE_MSG));
    }
}

fn containers(
    list: &[Container],
    path: &str,
    names: &mut HashSet<String>,
    errs: &mut Vec<FieldError>,
) {
    for (i, c) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if c.name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        } else {
            for m in v::dns1123_label(&c.name) {
                errs.push(FieldError::invalid(format!("{p}.name"), &c.name, m));
            }
            if !names.insert(c.name.clone()) {
                errs.push(FieldError::duplicate(format!("{p}.name"), &c.name));
            }
        }
        if c.image.as_deref().unwrap_or_default().trim().is_empty() {
            errs.push(FieldError::required(format!("{p}.image"), ""));
        }
        for (j, cp) in c.ports.iter().flatten().enumerate() {
            port(
                format!("{p}.ports[{j}].containerPort"),
                cp.container_port,
                errs,
            );
            if let Some(proto) = cp.protocol.as_deref()
                && !["TCP", "UDP", "SCTP"].contains(&proto)
            {
                errs.push(FieldError::not_supported(
                    format!("{p}.ports[{j}].protocol"),
                    proto,
                    &["SCTP", "TCP", "UDP"],
                ));
            }
        }
        for (j, e) in c.env.iter().flatten().enumerate() {
            if e.name.is_empty() {
                errs.push(FieldError::required(format!("{p}.env[{j}].name"), ""));
            }
        }
        if let Some(policy) = c.image_pull_policy.as_deref()
            && !["Always", "IfNotPresent", "Never"].contains(&policy)
        {
            errs.push(FieldError::not_supported(
                format!("{p}.imagePullPolicy"),
                policy,
                &["Always", "IfNotPresent", "Never"],
            ));
        }
    }
}

pub fn pod_spec(spec: &PodSpec, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if spec.containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut names = HashSet::new();
    containers(
        &spec.containers,
        &format!("{path}.containers"),
        &mut names,
        &mut errs,
    );
    if let Some(init) = &spec.init_containers {
        containers(
            init,
            &format!("{path}.initContainers"),
            &mut names,
            &mut errs,
        );
    }
    if let Some(policy) = spec.restart_policy.as_deref()
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            policy,
            &["Always", "OnFailure", "Never"],
        ));
    }
    let mut volumes = HashSet::new();
    for (i, vol) in spec.volumes.iter().flatten().enumerate() {
        for m in v::dns1123_label(&vol.name) {
            errs.push(FieldError::invalid(
                format!("{path}.volumes[{i}].name"),
                &vol.name,
                m,
            ));
        }
        if !volumes.insert(vol.name.clone()) {
            errs.push(FieldError::duplicate(
                format!("{path}.volumes[{i}].name"),
                &vol.name,
            ));
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds
        && g < 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            g,
            "must be greater than or equal to 0",
        ));
    }
    errs
}

fn selector_and_template(
    selector: Option<&LabelSelector>,
    template: Option<&PodTemplateSpec>,
    replicas: Option<i32>,
    errs: &mut Vec<FieldError>,
) {
    if let Some(r) = replicas
        && r < 0
    {
        errs.push(FieldError::invalid(
            "spec.replicas",
            r,
            "must be greater than or equal to 0",
        ));
    }
    let empty = selector.is_none_or(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|m| m.is_empty())
    });
    if empty {
        errs.push(FieldError::required("spec.selector", ""));
        errs.push(FieldError::invalid(
            "spec.selector",
            "",
            "empty selector is invalid for deployment",
        ));
    }
    let Some(template) = template else {
        errs.push(FieldError::required("spec.template", ""));
        return;
    };
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    errs.extend(v::labels(&labels, "spec.template.metadata.labels"));
    if !empty {
        match Selector::from_label_selector(selector) {
            Ok(sel) if !sel.matches(&labels) => errs.push(FieldError {
                kind: v::FieldErrorType::Invalid,
                field: "spec.template.metadata.labels".into(),
                value: Some(go_map(&labels)),
                detail: "`selector` does not match template `labels`".into(),
            }),
            Ok(_) => {}
            Err(e) => errs.push(FieldError::invalid("spec.selector", "", e.to_string())),
        }
    }
    match template.spec.as_ref() {
        None => errs.push(FieldError::required("spec.template.spec", "")),
        Some(spec) => {
            errs.extend(pod_spec(spec, "spec.template.spec"));
            if let Some(policy) = spec.restart_policy.as_deref()
                && policy != "Always"
            {
                errs.push(FieldError::not_supported(
                    "spec.template.spec.restartPolicy",
                    policy,
                    &["Always"],
                ));
            }
        }
    }
}

pub fn deployment(d: &Deployment, old: Option<&Deployment>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(spec) = d.spec.as_ref() else {
        return vec![FieldError::required("spec", "")];
    };
    selector_and_template(
        Some(&spec.selector),
        Some(&spec.template),
        spec.replicas,
        &mut errs,
    );
    if let Some(kind) = spec.strategy.as_ref().and_then(|s| s.type_.as_deref())
        && !["RollingUpdate", "Recreate"].contains(&kind)
    {
        errs.push(FieldError::not_supported(
            "spec.strategy.type",
            kind,
            &["Recreate", "RollingUpdate"],
        ));
    }
    immutable_selector(
        old.and_then(|o| o.spec.as_ref()).map(|s| &s.selector),
        &spec.selector,
        &mut errs,
    );
    errs
}

pub fn replica_set(rs: &ReplicaSet, old: Option<&ReplicaSet>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(spec) = rs.spec.as_ref() else {
        return vec![FieldError::required("spec", "")];
    };
    selector_and_template(
        Some(&spec.selector),
        spec.template.as_ref(),
        spec.replicas,
        &mut errs,
    );
    immutable_selector(
        old.and_then(|o| o.spec.as_ref()).map(|s| &s.selector),
        &spec.selector,
        &mut errs,
    );
    errs
}

/// A workload's selector may not change once set (apps/v1).
fn immutable_selector<S: PartialEq + std::fmt::Debug>(
    old: Option<&S>,
    new: &S,
    errs: &mut Vec<FieldError>,
) {
    if old.is_some_and(|o| o != new) {
        errs.push(FieldError::invalid(
            "spec.selector",
            format!("{new:?}"),
            "field is immutable",
        ));
    }
}

/// An IANA service name, as a named port: at most 15 characters, lowercase letters,
/// digits and single inner hyphens, at least one letter.
fn is_port_name(name: &str) -> bool {
    name.len() <= 15
        && v::dns1123_label(name).is_empty()
        && !name.contains("--")
        && name.chars().any(|c| c.is_ascii_lowercase())
}

pub fn service(s: &Service, old: Option<&Service>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(spec) = s.spec.as_ref() else {
        return vec![FieldError::required("spec", "")];
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&kind) {
        errs.push(FieldError::not_supported(
            "spec.type",
            kind,
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if kind == "ExternalName" {
        // A trailing dot is allowed (a fully qualified name); the rest must be a
        // DNS-1123 subdomain, as Kubernetes checks it.
        let cname = spec
            .external_name
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('.');
        if cname.is_empty() {
            errs.push(FieldError::required("spec.externalName", ""));
        }
        for msg in if cname.is_empty() {
            Vec::new()
        } else {
            v::dns1123_subdomain(cname)
        } {
            errs.push(FieldError::invalid("spec.externalName", cname, msg));
        }
    } else if ports.is_empty() && spec.cluster_ip.as_deref() != Some("None") {
        errs.push(FieldError::required("spec.ports", ""));
    }
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        match p.name.as_deref() {
            None | Some("") if ports.len() > 1 => {
                errs.push(FieldError::required(format!("{path}.name"), ""))
            }
            Some(n) if !n.is_empty() => {
                for m in v::dns1123_label(n) {
                    errs.push(FieldError::invalid(format!("{path}.name"), n, m));
                }
                if !names.insert(n.to_string()) {
                    errs.push(FieldError::duplicate(format!("{path}.name"), n));
                }
            }
            _ => {}
        }
        port(format!("{path}.port"), p.port, &mut errs);
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&proto) {
            errs.push(FieldError::not_supported(
                format!("{path}.protocol"),
                proto,
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if !seen.insert((p.port, proto.to_string())) {
            errs.push(FieldError::duplicate(
                path.clone(),
                format!("{}/{proto}", p.port),
            ));
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) => port(format!("{path}.targetPort"), *t, &mut errs),
            Some(IntOrString::String(name)) if !is_port_name(name) => {
                errs.push(FieldError::invalid(
                    format!("{path}.targetPort"),
                    name,
                    "must contain at least one letter (a-z), at most 15 characters, lowercase alphanumerics and '-'",
                ));
            }
            Some(IntOrString::String(_)) => {}
            None => {}
        }
        if let Some(np) = p.node_port {
            if kind == "ClusterIP" && np != 0 {
                errs.push(FieldError::forbidden(
                    format!("{path}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if np != 0
                && !(i32::from(NODE_PORT_MIN)..=i32::from(NODE_PORT_MAX)).contains(&np)
            {
                errs.push(FieldError::invalid(
                    format!("{path}.nodePort"),
                    np,
                    format!("provided port is not in the valid range. The range of valid ports is {NODE_PORT_MIN}-{NODE_PORT_MAX}"),
                ));
            }
        }
    }
    // Session affinity and traffic policies, with Kubernetes' messages.
    match spec.session_affinity.as_deref() {
        None | Some("None") => {
            if spec.session_affinity_config.is_some() {
                errs.push(FieldError::invalid(
                    "spec.sessionAffinityConfig",
                    "{}",
                    "must not be set when session affinity is None",
                ));
            }
        }
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            if let Some(t) = t
                && !(1..=86400).contains(&t)
            {
                errs.push(FieldError::invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    t,
                    "must be greater than 0 and less than 86400",
                ));
            }
        }
        Some(other) => errs.push(FieldError::not_supported(
            "spec.sessionAffinity",
            other,
            &["ClientIP", "None"],
        )),
    }
    // loadBalancerSourceRanges: CIDRs (IPv4 or IPv6), as Kubernetes checks them.
    for (i, r) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        let ok = r.trim().split_once('/').is_some_and(|(ip, bits)| {
            let max = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => 32,
                Ok(std::net::IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            bits.parse::<u8>().is_ok_and(|b| b <= max)
        });
        if !ok {
            errs.push(FieldError::invalid(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                r,
                "must be a list of IP ranges. For example, 10.240.0.0/24,10.250.0.0/24 ",
            ));
        }
    }
    for (field, value) in [
        (
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
        ),
        (
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
        ),
    ] {
        if let Some(v) = value
            && v != "Cluster"
            && v != "Local"
        {
            errs.push(FieldError::not_supported(field, v, &["Cluster", "Local"]));
        }
    }
    if let Some(old_ip) = old
        .and_then(|o| o.spec.as_ref())
        .and_then(|sp| sp.cluster_ip.as_deref())
        && !old_ip.is_empty()
        && spec
            .cluster_ip
            .as_deref()
            .is_some_and(|ip| !ip.is_empty() && ip != old_ip)
        && kind != "ExternalName"
    {
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            spec.cluster_ip.clone().unwrap_or_default(),
            "may not change once set",
        ));
    }
    errs
}

fn data_keys<'a>(keys: impl Iterator<Item = &'a String>, path: &str, errs: &mut Vec<FieldError>) {
    for k in keys {
        let ok = !k.is_empty()
            && k != "."
            && k != ".."
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
        if !ok {
            errs.push(FieldError::invalid(
                format!("{path}[{k}]"),
                k,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            ));
        }
    }
}

pub fn config_map(cm: &ConfigMap) -> Vec<FieldError> {
    let mut errs = Vec::new();
    data_keys(cm.data.iter().flatten().map(|(k, _)| k), "data", &mut errs);
    data_keys(
        cm.binary_data.iter().flatten().map(|(k, _)| k),
        "binaryData",
        &mut errs,
    );
    errs
}

pub fn secret(s: &Secret) -> Vec<FieldError> {
    let mut errs = Vec::new();
    data_keys(s.data.iter().flatten().map(|(k, _)| k), "data", &mut errs);
    data_keys(
        s.string_data.iter().flatten().map(|(k, _)| k),
        "stringData",
        &mut errs,
    );
    // A token Secret names its account (kube's ValidateSecret).
    let annotation = crate::serviceaccount::legacy::NAME_ANNOTATION;
    if s.type_.as_deref() == Some(crate::serviceaccount::legacy::SECRET_TYPE)
        && s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotation))
            .is_none_or(|n| n.is_empty())
    {
        errs.push(FieldError::required(
            format!("metadata.annotations[{annotation}]"),
            "",
        ));
    }
    errs
}

/// The rules of a Role or ClusterRole (`ValidatePolicyRule`): verbs always; resources
/// and groups, or (only in a ClusterRole) non-resource URLs, never both.
pub fn policy_rules(rules: Option<&[PolicyRule]>, cluster: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, r) in rules.unwrap_or_default().iter().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        if r.verbs.is_empty() {
            errs.push(FieldError::required(
                at("verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = r.non_resource_urls.as_deref().unwrap_or_default();
        let resources = r.resources.as_deref().unwrap_or_default();
        let groups = r.api_groups.as_deref().unwrap_or_default();
        if !urls.is_empty() {
            if !cluster {
                errs.push(FieldError::invalid(
                    at("nonResourceURLs"),
                    urls,
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !resources.is_empty() || !groups.is_empty() {
                errs.push(FieldError::invalid(
                    at("nonResourceURLs"),
                    urls,
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if groups.is_empty() {
            errs.push(FieldError::required(
                at("apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if resources.is_empty() {
            errs.push(FieldError::required(
                at("resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
    errs
}

/// A RoleBinding's or ClusterRoleBinding's role and subjects; the role may not change.
pub fn binding(
    role: &RoleRef,
    subjects: Option<&[Subject]>,
    old: Option<RoleRef>,
    namespaced: bool,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if role.api_group != "rbac.authorization.k8s.io" {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            &role.api_group,
            &["rbac.authorization.k8s.io"],
        ));
    }
    if !kinds.contains(&role.kind.as_str()) {
        errs.push(FieldError::not_supported("roleRef.kind", &role.kind, kinds));
    }
    if role.name.is_empty() {
        errs.push(FieldError::required("roleRef.name", ""));
    }
    if let Some(old) = old
        && old != *role
    {
        errs.push(FieldError::invalid(
            "roleRef",
            role,
            "cannot change roleRef",
        ));
    }
    for (i, s) in subjects.unwrap_or_default().iter().enumerate() {
        let at = |f: &str| format!("subjects[{i}].{f}");
        if s.name.is_empty() {
            errs.push(FieldError::required(at("name"), ""));
        }
        match s.kind.as_str() {
            "ServiceAccount" => {
                if s.api_group.as_deref().is_some_and(|g| !g.is_empty()) {
                    errs.push(FieldError::not_supported(
                        at("apiGroup"),
                        s.api_group.as_deref().unwrap_or_default(),
                        &[""],
                    ));
                }
                if !namespaced && s.namespace.as_deref().unwrap_or_default().is_empty() {
                    errs.push(FieldError::required(at("namespace"), ""));
                }
            }
            "User" | "Group" => {
                if s.api_group.as_deref() != Some("rbac.authorization.k8s.io") {
                    errs.push(FieldError::not_supported(
                        at("apiGroup"),
                        s.api_group.as_deref().unwrap_or_default(),
                        &["rbac.authorization.k8s.io"],
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                at("kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_selector_must_match_template() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "other"}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
        }))
        .unwrap();
        let errs = deployment(&d, None);
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].to_string(),
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`"
        );
    }

    #[test]
    fn service_node_port_outside_range() {
        let s: Service = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 40000}]}
        }))
        .unwrap();
        let errs = service(&s, None);
        assert_eq!(
            errs[0].to_string(),
            "spec.ports[0].nodePort: Invalid value: 40000: provided port is not in the valid range. The range of valid ports is 30000-32767"
        );
    }

    #[test]
    fn source_ranges_must_be_cidrs() {
        let s: Service = serde_json::from_value(json!({
            "metadata": {"name": "lb"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}],
                     "loadBalancerSourceRanges": ["10.0.0.0/8", "2001:db8::/32", "10.0.0.1", "10.0.0.0/33"]}
        }))
        .unwrap();
        let msgs: Vec<String> = service(&s, None).iter().map(ToString::to_string).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs[0].starts_with("spec.loadBalancerSourceRanges[2]: Invalid value: \"10.0.0.1\": must be a list of IP ranges"), "{msgs:?}");
    }

    #[test]
    fn external_names_must_be_dns_subdomains() {
        let svc = |name: &str| -> Service {
            serde_json::from_value(json!({
                "metadata": {"name": "away"},
                "spec": {"type": "ExternalName", "externalName": name}
            }))
            .unwrap()
        };
        assert!(service(&svc("db.example.org."), None).is_empty());
        let errs = service(&svc("Not_A.Name"), None);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].to_string().starts_with(
                "spec.externalName: Invalid value: \"Not_A.Name\": a lowercase RFC 1123 subdomain must consist of"
            ),
            "{}",
            errs[0]
        );
        assert_eq!(
            service(&svc(""), None)[0].to_string(),
            "spec.externalName: Required value"
        );
    }

    #[test]
    fn pod_needs_containers_with_images_and_valid_ports() {
        let spec: PodSpec = serde_json::from_value(json!({
            "containers": [{"name": "a", "image": "", "ports": [{"containerPort": 70000}]}, {"name": "a", "image": "x"}]
        }))
        .unwrap();
        let msgs: Vec<String> = pod_spec(&spec, "spec")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(msgs.contains(&"spec.containers[0].image: Required value".to_string()));
        assert!(msgs.contains(&"spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive".to_string()));
        assert!(msgs.contains(&"spec.containers[1].name: Duplicate value: \"a\"".to_string()));
    }
}
