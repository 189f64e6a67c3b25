//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`),
//! which kubectl 1.32 and later sends for built-in types (`create deployment`,
//! `create service`, drain's evictions, typed deletes). The envelope is the `k8s\0`
//! magic and a `runtime.Unknown`; the payload is decoded with the k8s-pb message types
//! and turned into the JSON form the rest of the server works with. Responses stay
//! JSON, which every such client also accepts.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::authentication::v1 as authn;
use k8s_pb::api::authorization::v1 as authz;
use k8s_pb::api::autoscaling::v1 as autoscaling;
use k8s_pb::api::certificates::v1 as certificates;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::policy::v1 as policy;
use k8s_pb::api::rbac::v1 as rbac;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

/// A value's JSON form, or None where Kubernetes' JSON omits it (unset or empty).
trait ToJson {
    fn to_json(&self) -> Option<Value>;

    /// What an element of a list that `to_json` omits stands for in the list (a list
    /// keeps its empty strings: `apiGroups: [""]` is the core group).
    fn in_list(&self) -> Value {
        self.to_json().unwrap_or_else(|| json!({}))
    }
}

/// Go writes its plain (non-pointer) string fields even when empty; their JSON form
/// omits them, so an empty string is taken as unset.
impl ToJson for String {
    fn to_json(&self) -> Option<Value> {
        (!self.is_empty()).then(|| Value::String(self.clone()))
    }

    fn in_list(&self) -> Value {
        Value::String(self.clone())
    }
}

impl ToJson for i32 {
    fn to_json(&self) -> Option<Value> {
        Some(json!(self))
    }
}

impl ToJson for i64 {
    fn to_json(&self) -> Option<Value> {
        Some(json!(self))
    }
}

impl ToJson for bool {
    fn to_json(&self) -> Option<Value> {
        Some(json!(self))
    }
}

impl<T: ToJson> ToJson for Option<T> {
    fn to_json(&self) -> Option<Value> {
        self.as_ref().and_then(ToJson::to_json)
    }
}

impl<T: ToJson> ToJson for Vec<T> {
    fn to_json(&self) -> Option<Value> {
        (!self.is_empty()).then(|| Value::Array(self.iter().map(ToJson::in_list).collect()))
    }
}

impl ToJson for Vec<u8> {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(
            base64::engine::general_purpose::STANDARD.encode(self),
        ))
    }
}

impl<T: ToJson> ToJson for BTreeMap<String, T> {
    fn to_json(&self) -> Option<Value> {
        (!self.is_empty()).then(|| {
            Value::Object(
                self.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.to_json()?)))
                    .collect(),
            )
        })
    }
}

impl ToJson for meta::Time {
    fn to_json(&self) -> Option<Value> {
        // Go's zero time (no timestamp) arrives as an empty or pre-epoch value.
        let seconds = self.seconds.filter(|s| *s > 0)?;
        let t = jiff::Timestamp::from_second(seconds).ok()?;
        Some(json!(tinykube_api::format::rfc3339(t)))
    }
}

impl ToJson for IntOrString {
    fn to_json(&self) -> Option<Value> {
        match self.r#type {
            Some(1) => self.str_val.to_json(),
            _ => Some(json!(self.int_val.unwrap_or(0))),
        }
    }
}

impl ToJson for Quantity {
    fn to_json(&self) -> Option<Value> {
        self.string.to_json()
    }
}

/// Plain (non-pointer) Go fields that protobuf always carries but JSON omits when they
/// hold the zero value; pointer fields of the same types keep an explicit false or 0.
const OMIT_FALSE: &[&str] = &[
    "stdin",
    "stdinOnce",
    "tty",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "readOnly",
    "paused",
    "publishNotReadyAddresses",
    "unschedulable",
];
const OMIT_ZERO: &[&str] = &[
    "minReadySeconds",
    "hostPort",
    "nodePort",
    "initialDelaySeconds",
    "timeoutSeconds",
    "periodSeconds",
    "successThreshold",
    "failureThreshold",
    "generation",
    "healthCheckNodePort",
];

/// Inserts `v` under `name`; an empty name inlines an object's fields (Go's embedded
/// structs, such as a Probe's handler or a Volume's source).
fn put(m: &mut Map<String, Value>, name: &str, v: Option<Value>) {
    match (name, v) {
        (_, None) => {}
        (n, Some(Value::Bool(false))) if OMIT_FALSE.contains(&n) => {}
        (n, Some(Value::Number(z))) if z.as_i64() == Some(0) && OMIT_ZERO.contains(&n) => {}
        ("", Some(Value::Object(inner))) => m.extend(inner),
        (_, Some(v)) => {
            m.insert(name.to_string(), v);
        }
    }
}

macro_rules! to_json {
    ($($ty:ty { $($field:ident : $name:literal),* $(,)? })*) => {$(
        impl ToJson for $ty {
            fn to_json(&self) -> Option<Value> {
                let mut m = Map::new();
                $( put(&mut m, $name, self.$field.to_json()); )*
                Some(Value::Object(m))
            }
        }
    )*};
}

to_json! {
    meta::ObjectMeta {
        name: "name", generate_name: "generateName", namespace: "namespace", uid: "uid",
        resource_version: "resourceVersion", generation: "generation", creation_timestamp: "creationTimestamp",
        deletion_timestamp: "deletionTimestamp", deletion_grace_period_seconds: "deletionGracePeriodSeconds",
        labels: "labels", annotations: "annotations", owner_references: "ownerReferences", finalizers: "finalizers",
    }
    meta::OwnerReference {
        api_version: "apiVersion", kind: "kind", name: "name", uid: "uid", controller: "controller",
        block_owner_deletion: "blockOwnerDeletion",
    }
    meta::LabelSelector { match_labels: "matchLabels", match_expressions: "matchExpressions" }
    meta::LabelSelectorRequirement { key: "key", operator: "operator", values: "values" }
    meta::DeleteOptions {
        grace_period_seconds: "gracePeriodSeconds", preconditions: "preconditions", orphan_dependents: "orphanDependents",
        propagation_policy: "propagationPolicy", dry_run: "dryRun",
    }
    meta::Preconditions { uid: "uid", resource_version: "resourceVersion" }

    apps::Deployment { metadata: "metadata", spec: "spec" }
    apps::DeploymentSpec {
        replicas: "replicas", selector: "selector", template: "template", strategy: "strategy",
        min_ready_seconds: "minReadySeconds", revision_history_limit: "revisionHistoryLimit", paused: "paused",
        progress_deadline_seconds: "progressDeadlineSeconds",
    }
    apps::DeploymentStrategy { r#type: "type", rolling_update: "rollingUpdate" }
    apps::RollingUpdateDeployment { max_unavailable: "maxUnavailable", max_surge: "maxSurge" }
    apps::ReplicaSet { metadata: "metadata", spec: "spec" }
    apps::ReplicaSetSpec { replicas: "replicas", min_ready_seconds: "minReadySeconds", selector: "selector", template: "template" }
    autoscaling::Scale { metadata: "metadata", spec: "spec" }
    autoscaling::ScaleSpec { replicas: "replicas" }
    policy::Eviction { metadata: "metadata", delete_options: "deleteOptions" }

    core::PodTemplateSpec { metadata: "metadata", spec: "spec" }
    core::Pod { metadata: "metadata", spec: "spec" }
    core::PodSpec {
        volumes: "volumes", init_containers: "initContainers", containers: "containers",
        restart_policy: "restartPolicy", termination_grace_period_seconds: "terminationGracePeriodSeconds",
        active_deadline_seconds: "activeDeadlineSeconds", dns_policy: "dnsPolicy", node_selector: "nodeSelector",
        service_account_name: "serviceAccountName", service_account: "serviceAccount",
        automount_service_account_token: "automountServiceAccountToken", node_name: "nodeName",
        host_network: "hostNetwork", host_pid: "hostPID", host_ipc: "hostIPC",
        share_process_namespace: "shareProcessNamespace", security_context: "securityContext",
        image_pull_secrets: "imagePullSecrets", hostname: "hostname", subdomain: "subdomain", affinity: "affinity",
        scheduler_name: "schedulerName", tolerations: "tolerations", host_aliases: "hostAliases",
        priority_class_name: "priorityClassName", priority: "priority", dns_config: "dnsConfig",
        readiness_gates: "readinessGates", runtime_class_name: "runtimeClassName",
        enable_service_links: "enableServiceLinks", preemption_policy: "preemptionPolicy", overhead: "overhead",
        topology_spread_constraints: "topologySpreadConstraints", set_hostname_as_fqdn: "setHostnameAsFQDN",
        host_users: "hostUsers",
    }
    core::Container {
        name: "name", image: "image", command: "command", args: "args", working_dir: "workingDir", ports: "ports",
        env_from: "envFrom", env: "env", resources: "resources", restart_policy: "restartPolicy",
        volume_mounts: "volumeMounts", liveness_probe: "livenessProbe", readiness_probe: "readinessProbe",
        startup_probe: "startupProbe", lifecycle: "lifecycle", termination_message_path: "terminationMessagePath",
        termination_message_policy: "terminationMessagePolicy", image_pull_policy: "imagePullPolicy",
        security_context: "securityContext", stdin: "stdin", stdin_once: "stdinOnce", tty: "tty",
    }
    core::ContainerPort { name: "name", host_port: "hostPort", container_port: "containerPort", protocol: "protocol", host_ip: "hostIP" }
    core::EnvVar { name: "name", value: "value", value_from: "valueFrom" }
    core::EnvVarSource {
        field_ref: "fieldRef", resource_field_ref: "resourceFieldRef", config_map_key_ref: "configMapKeyRef",
        secret_key_ref: "secretKeyRef",
    }
    core::EnvFromSource { prefix: "prefix", config_map_ref: "configMapRef", secret_ref: "secretRef" }
    core::ConfigMapEnvSource { local_object_reference: "", optional: "optional" }
    core::SecretEnvSource { local_object_reference: "", optional: "optional" }
    core::ObjectFieldSelector { api_version: "apiVersion", field_path: "fieldPath" }
    core::ResourceFieldSelector { container_name: "containerName", resource: "resource", divisor: "divisor" }
    core::ConfigMapKeySelector { local_object_reference: "", key: "key", optional: "optional" }
    core::SecretKeySelector { local_object_reference: "", key: "key", optional: "optional" }
    core::LocalObjectReference { name: "name" }
    core::ResourceRequirements { limits: "limits", requests: "requests" }
    core::VolumeMount {
        name: "name", read_only: "readOnly", mount_path: "mountPath", sub_path: "subPath",
        mount_propagation: "mountPropagation", sub_path_expr: "subPathExpr",
    }
    core::Probe {
        handler: "", initial_delay_seconds: "initialDelaySeconds", timeout_seconds: "timeoutSeconds",
        period_seconds: "periodSeconds", success_threshold: "successThreshold", failure_threshold: "failureThreshold",
        termination_grace_period_seconds: "terminationGracePeriodSeconds",
    }
    core::ProbeHandler { exec: "exec", http_get: "httpGet", tcp_socket: "tcpSocket", grpc: "grpc" }
    core::ExecAction { command: "command" }
    core::HttpGetAction { path: "path", port: "port", host: "host", scheme: "scheme", http_headers: "httpHeaders" }
    core::HttpHeader { name: "name", value: "value" }
    core::TcpSocketAction { port: "port", host: "host" }
    core::GrpcAction { port: "port", service: "service" }
    core::Lifecycle { post_start: "postStart", pre_stop: "preStop" }
    core::LifecycleHandler { exec: "exec", http_get: "httpGet", tcp_socket: "tcpSocket", sleep: "sleep" }
    core::SleepAction { seconds: "seconds" }
    core::SecurityContext {
        capabilities: "capabilities", privileged: "privileged", run_as_user: "runAsUser", run_as_group: "runAsGroup",
        run_as_non_root: "runAsNonRoot", read_only_root_filesystem: "readOnlyRootFilesystem",
        allow_privilege_escalation: "allowPrivilegeEscalation",
    }
    core::Capabilities { add: "add", drop: "drop" }
    core::PodSecurityContext {
        run_as_user: "runAsUser", run_as_group: "runAsGroup", run_as_non_root: "runAsNonRoot",
        supplemental_groups: "supplementalGroups", fs_group: "fsGroup",
    }
    core::Volume { name: "name", volume_source: "" }
    core::VolumeSource {
        host_path: "hostPath", empty_dir: "emptyDir", secret: "secret", persistent_volume_claim: "persistentVolumeClaim",
        downward_api: "downwardAPI", config_map: "configMap",
    }
    core::HostPathVolumeSource { path: "path", r#type: "type" }
    core::EmptyDirVolumeSource { medium: "medium", size_limit: "sizeLimit" }
    core::SecretVolumeSource { secret_name: "secretName", items: "items", default_mode: "defaultMode", optional: "optional" }
    core::ConfigMapVolumeSource { local_object_reference: "", items: "items", default_mode: "defaultMode", optional: "optional" }
    core::PersistentVolumeClaimVolumeSource { claim_name: "claimName", read_only: "readOnly" }
    core::DownwardAPIVolumeSource { items: "items", default_mode: "defaultMode" }
    core::DownwardAPIVolumeFile { path: "path", field_ref: "fieldRef", resource_field_ref: "resourceFieldRef", mode: "mode" }
    core::KeyToPath { key: "key", path: "path", mode: "mode" }
    core::Toleration { key: "key", operator: "operator", value: "value", effect: "effect", toleration_seconds: "tolerationSeconds" }
    core::Affinity { node_affinity: "nodeAffinity", pod_affinity: "podAffinity", pod_anti_affinity: "podAntiAffinity" }
    core::NodeAffinity {
        required_during_scheduling_ignored_during_execution: "requiredDuringSchedulingIgnoredDuringExecution",
        preferred_during_scheduling_ignored_during_execution: "preferredDuringSchedulingIgnoredDuringExecution",
    }
    core::NodeSelector { node_selector_terms: "nodeSelectorTerms" }
    core::NodeSelectorTerm { match_expressions: "matchExpressions", match_fields: "matchFields" }
    core::NodeSelectorRequirement { key: "key", operator: "operator", values: "values" }
    core::PreferredSchedulingTerm { weight: "weight", preference: "preference" }
    core::PodAffinity {
        required_during_scheduling_ignored_during_execution: "requiredDuringSchedulingIgnoredDuringExecution",
        preferred_during_scheduling_ignored_during_execution: "preferredDuringSchedulingIgnoredDuringExecution",
    }
    core::PodAntiAffinity {
        required_during_scheduling_ignored_during_execution: "requiredDuringSchedulingIgnoredDuringExecution",
        preferred_during_scheduling_ignored_during_execution: "preferredDuringSchedulingIgnoredDuringExecution",
    }
    core::PodAffinityTerm {
        label_selector: "labelSelector", namespaces: "namespaces", topology_key: "topologyKey",
        namespace_selector: "namespaceSelector",
    }
    core::WeightedPodAffinityTerm { weight: "weight", pod_affinity_term: "podAffinityTerm" }
    core::HostAlias { ip: "ip", hostnames: "hostnames" }
    core::PodDnsConfig { nameservers: "nameservers", searches: "searches", options: "options" }
    core::PodDnsConfigOption { name: "name", value: "value" }
    core::PodReadinessGate { condition_type: "conditionType" }
    core::TopologySpreadConstraint {
        max_skew: "maxSkew", topology_key: "topologyKey", when_unsatisfiable: "whenUnsatisfiable",
        label_selector: "labelSelector", min_domains: "minDomains",
    }
    core::Service { metadata: "metadata", spec: "spec" }
    core::ServiceSpec {
        ports: "ports", selector: "selector", cluster_ip: "clusterIP", cluster_ips: "clusterIPs", r#type: "type",
        external_ips: "externalIPs", session_affinity: "sessionAffinity", load_balancer_ip: "loadBalancerIP",
        load_balancer_source_ranges: "loadBalancerSourceRanges", external_name: "externalName",
        external_traffic_policy: "externalTrafficPolicy", health_check_node_port: "healthCheckNodePort",
        publish_not_ready_addresses: "publishNotReadyAddresses", session_affinity_config: "sessionAffinityConfig",
        ip_families: "ipFamilies", ip_family_policy: "ipFamilyPolicy",
        allocate_load_balancer_node_ports: "allocateLoadBalancerNodePorts", load_balancer_class: "loadBalancerClass",
        internal_traffic_policy: "internalTrafficPolicy",
    }
    core::ServicePort {
        name: "name", protocol: "protocol", app_protocol: "appProtocol", port: "port", target_port: "targetPort",
        node_port: "nodePort",
    }
    core::SessionAffinityConfig { client_ip: "clientIP" }
    core::ClientIpConfig { timeout_seconds: "timeoutSeconds" }
    core::Namespace { metadata: "metadata", spec: "spec" }
    core::NamespaceSpec { finalizers: "finalizers" }
    core::ConfigMap { metadata: "metadata", immutable: "immutable", data: "data", binary_data: "binaryData" }
    core::Secret { metadata: "metadata", immutable: "immutable", data: "data", string_data: "stringData", r#type: "type" }
    core::ServiceAccount {
        metadata: "metadata", secrets: "secrets", image_pull_secrets: "imagePullSecrets",
        automount_service_account_token: "automountServiceAccountToken",
    }
    core::ObjectReference {
        kind: "kind", namespace: "namespace", name: "name", uid: "uid", api_version: "apiVersion",
        resource_version: "resourceVersion", field_path: "fieldPath",
    }
    core::Binding { metadata: "metadata", target: "target" }
    core::Node { metadata: "metadata", spec: "spec" }
    core::NodeSpec {
        pod_cidr: "podCIDR", pod_cid_rs: "podCIDRs", provider_id: "providerID", unschedulable: "unschedulable",
        taints: "taints",
    }
    core::Taint { key: "key", value: "value", effect: "effect", time_added: "timeAdded" }
    rbac::Role { metadata: "metadata", rules: "rules" }
    rbac::ClusterRole { metadata: "metadata", rules: "rules", aggregation_rule: "aggregationRule" }
    rbac::AggregationRule { cluster_role_selectors: "clusterRoleSelectors" }
    rbac::PolicyRule {
        verbs: "verbs", api_groups: "apiGroups", resources: "resources", resource_names: "resourceNames",
        non_resource_ur_ls: "nonResourceURLs",
    }
    rbac::RoleBinding { metadata: "metadata", subjects: "subjects", role_ref: "roleRef" }
    rbac::ClusterRoleBinding { metadata: "metadata", subjects: "subjects", role_ref: "roleRef" }
    rbac::RoleRef { api_group: "apiGroup", kind: "kind", name: "name" }
    rbac::Subject { kind: "kind", api_group: "apiGroup", name: "name", namespace: "namespace" }
    authz::SelfSubjectAccessReview { metadata: "metadata", spec: "spec" }
    authz::SelfSubjectAccessReviewSpec {
        resource_attributes: "resourceAttributes", non_resource_attributes: "nonResourceAttributes",
    }
    authz::SubjectAccessReview { metadata: "metadata", spec: "spec" }
    authz::LocalSubjectAccessReview { metadata: "metadata", spec: "spec" }
    authz::SubjectAccessReviewSpec {
        resource_attributes: "resourceAttributes", non_resource_attributes: "nonResourceAttributes",
        user: "user", groups: "groups", uid: "uid",
    }
    authz::ResourceAttributes {
        namespace: "namespace", verb: "verb", group: "group", version: "version", resource: "resource",
        subresource: "subresource", name: "name",
    }
    authz::NonResourceAttributes { path: "path", verb: "verb" }
    authz::SelfSubjectRulesReview { metadata: "metadata", spec: "spec" }
    authz::SelfSubjectRulesReviewSpec { namespace: "namespace" }
    authn::SelfSubjectReview { metadata: "metadata" }
    authn::TokenRequest { metadata: "metadata", spec: "spec" }
    authn::TokenRequestSpec {
        audiences: "audiences", expiration_seconds: "expirationSeconds", bound_object_ref: "boundObjectRef",
    }
    authn::BoundObjectReference { kind: "kind", api_version: "apiVersion", name: "name", u_id: "uid" }
    authn::TokenReview { metadata: "metadata", spec: "spec" }
    authn::TokenReviewSpec { token: "token", audiences: "audiences" }
    certificates::CertificateSigningRequest { metadata: "metadata", spec: "spec", status: "status" }
    certificates::CertificateSigningRequestSpec {
        request: "request", signer_name: "signerName", expiration_seconds: "expirationSeconds",
        usages: "usages", username: "username", uid: "uid", groups: "groups", extra: "extra",
    }
    certificates::CertificateSigningRequestStatus { conditions: "conditions", certificate: "certificate" }
    certificates::CertificateSigningRequestCondition {
        r#type: "type", status: "status", reason: "reason", message: "message",
        last_update_time: "lastUpdateTime", last_transition_time: "lastTransitionTime",
    }
}

/// `extra` is `map[string][]string` in JSON; protobuf wraps each list.
impl ToJson for certificates::ExtraValue {
    fn to_json(&self) -> Option<Value> {
        self.items.to_json()
    }
}

fn decode_as<T: Message + Default + ToJson>(raw: &[u8]) -> Result<Value, String> {
    let msg = T::decode(raw).map_err(|e| e.to_string())?;
    Ok(msg.to_json().unwrap_or_else(|| json!({})))
}

/// Decodes a protobuf-encoded object into its JSON form, with apiVersion and kind set.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let bad =
        |detail: String| ApiError::BadRequest(format!("unable to decode protobuf body: {detail}"));
    let payload = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("the body does not start with the k8s protobuf prefix".into()))?;
    let unknown = Unknown::decode(payload).map_err(|e| bad(e.to_string()))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let value = match (api_version.as_str(), kind.as_str()) {
        ("apps/v1", "Deployment") => decode_as::<apps::Deployment>(&raw),
        ("apps/v1", "ReplicaSet") => decode_as::<apps::ReplicaSet>(&raw),
        ("autoscaling/v1", "Scale") => decode_as::<autoscaling::Scale>(&raw),
        ("policy/v1", "Eviction") => decode_as::<policy::Eviction>(&raw),
        ("v1", "Pod") => decode_as::<core::Pod>(&raw),
        ("v1", "Service") => decode_as::<core::Service>(&raw),
        ("v1", "Namespace") => decode_as::<core::Namespace>(&raw),
        ("v1", "ConfigMap") => decode_as::<core::ConfigMap>(&raw),
        ("v1", "Secret") => decode_as::<core::Secret>(&raw),
        ("v1", "ServiceAccount") => decode_as::<core::ServiceAccount>(&raw),
        ("v1", "Binding") => decode_as::<core::Binding>(&raw),
        ("v1", "Node") => decode_as::<core::Node>(&raw),
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            decode_as::<authz::SelfSubjectAccessReview>(&raw)
        }
        ("authorization.k8s.io/v1", "SubjectAccessReview") => {
            decode_as::<authz::SubjectAccessReview>(&raw)
        }
        ("authorization.k8s.io/v1", "LocalSubjectAccessReview") => {
            decode_as::<authz::LocalSubjectAccessReview>(&raw)
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => {
            decode_as::<authz::SelfSubjectRulesReview>(&raw)
        }
        ("authentication.k8s.io/v1", "SelfSubjectReview") => {
            decode_as::<authn::SelfSubjectReview>(&raw)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => decode_as::<rbac::Role>(&raw),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => decode_as::<rbac::ClusterRole>(&raw),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => decode_as::<rbac::RoleBinding>(&raw),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            decode_as::<rbac::ClusterRoleBinding>(&raw)
        }
        ("authentication.k8s.io/v1", "TokenRequest") => decode_as::<authn::TokenRequest>(&raw),
        ("authentication.k8s.io/v1", "TokenReview") => decode_as::<authn::TokenReview>(&raw),
        ("certificates.k8s.io/v1", "CertificateSigningRequest") => {
            decode_as::<certificates::CertificateSigningRequest>(&raw)
        }
        ("v1" | "meta.k8s.io/v1", "DeleteOptions") => decode_as::<meta::DeleteOptions>(&raw),
        _ => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "protobuf bodies of {kind} ({api_version}) are not supported; send JSON"
            )));
        }
    };
    let mut value = value.map_err(bad)?;
    value["apiVersion"] = json!(api_version);
    value["kind"] = json!(kind);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(unknown.encode_to_vec());
        out
    }

    #[test]
    fn deployment_from_kubectl_create_decodes() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let d = apps::Deployment {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                labels: labels.clone(),
                ..Default::default()
            }),
            spec: Some(apps::DeploymentSpec {
                replicas: Some(3),
                selector: Some(meta::LabelSelector {
                    match_labels: labels.clone(),
                    ..Default::default()
                }),
                template: Some(core::PodTemplateSpec {
                    metadata: Some(meta::ObjectMeta {
                        labels: labels.clone(),
                        ..Default::default()
                    }),
                    spec: Some(core::PodSpec {
                        containers: vec![core::Container {
                            name: Some("nginx".into()),
                            image: Some("nginx".into()),
                            ports: vec![core::ContainerPort {
                                container_port: Some(80),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                strategy: Some(apps::DeploymentStrategy {
                    r#type: None,
                    rolling_update: Some(apps::RollingUpdateDeployment {
                        max_surge: Some(IntOrString {
                            r#type: Some(1),
                            int_val: None,
                            str_val: Some("25%".into()),
                        }),
                        max_unavailable: Some(IntOrString {
                            r#type: Some(0),
                            int_val: Some(1),
                            str_val: None,
                        }),
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let v = decode(&envelope("apps/v1", "Deployment", d.encode_to_vec())).unwrap();
        assert_eq!(v["kind"], "Deployment");
        assert_eq!(v["metadata"]["name"], "web");
        assert_eq!(v["spec"]["replicas"], 3);
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "web");
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
            80
        );
        assert_eq!(v["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(v["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 1);
    }

    #[test]
    fn embedded_structs_are_inlined() {
        let vol = core::Volume {
            name: Some("cfg".into()),
            volume_source: Some(core::VolumeSource {
                config_map: Some(core::ConfigMapVolumeSource {
                    local_object_reference: Some(core::LocalObjectReference {
                        name: Some("settings".into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        assert_eq!(
            vol.to_json().unwrap(),
            json!({"name": "cfg", "configMap": {"name": "settings"}})
        );
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert_eq!(decode(b"not protobuf").unwrap_err().code(), 400);
        assert_eq!(decode(b"k8s\0\xff\xff\xff").unwrap_err().code(), 400);
        let unsupported = decode(&envelope("batch/v1", "Job", vec![])).unwrap_err();
        assert_eq!(unsupported.code(), 415);
    }
}
