//! The roles and bindings a cluster starts with, as kube-apiserver's bootstrap policy
//! makes them (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`): the user-facing
//! roles (`cluster-admin`, and `admin`, `edit`, `view` aggregated from the
//! `system:aggregate-to-*` roles), the discovery, basic-user and public-info roles
//! every client needs, `system:auth-delegator`, the node bootstrapper's, and the roles
//! of this cluster's own controllers and scheduler. Each carries
//! `rbac.authorization.kubernetes.io/autoupdate: "true"`: at every start the missing
//! ones are made again and their rules and subjects put back, unless a user set the
//! annotation to "false".

use serde_json::{Value, json};

use super::index::GROUP;
use crate::authn::{AUTHENTICATED, BOOTSTRAPPERS, MASTERS, NODES, UNAUTHENTICATED};
use crate::serviceaccount::discovery::{CONFIGURATION_PATH, JWKS_PATH};

pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
/// The users this cluster's controllers and scheduler run as.
pub const CONTROLLER_MANAGER: &str = "system:kube-controller-manager";
pub const SCHEDULER: &str = "system:kube-scheduler";
/// Where a joining node trades the join token for its client certificate.
pub const JOIN_PATH: &str = "/tinykube/v1/join";

const READ: [&str; 3] = ["get", "list", "watch"];
const WRITE: [&str; 5] = ["create", "delete", "deletecollection", "patch", "update"];
const ALL_VERBS: [&str; 8] = crate::resources::VERBS;

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn paths(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn meta(name: &str, labels: Value) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/bootstrapping"] = json!("rbac-defaults");
    json!({"name": name, "labels": labels, "annotations": {AUTOUPDATE: "true"}})
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    json!({"apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRole",
           "metadata": meta(name, labels), "rules": rules})
}

fn aggregated(name: &str, labels: Value, selects: &str) -> Value {
    let mut r = cluster_role(name, labels, vec![]);
    r["aggregationRule"] = json!({"clusterRoleSelectors": [
        {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{selects}"): "true"}}]});
    r
}

fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, n)| json!({"apiGroup": GROUP, "kind": kind, "name": n}))
        .collect();
    json!({"apiVersion": format!("{GROUP}/v1"), "kind": "ClusterRoleBinding",
           "metadata": meta(name, json!({})),
           "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
           "subjects": subjects})
}

/// `system:certificates.k8s.io:<signer>-approver`: `approve` on that one signer.
fn signer_approver(signer: &str) -> Value {
    let mut r = rule(&["approve"], &["certificates.k8s.io"], &["signers"]);
    r["resourceNames"] = json!([format!("kubernetes.io/{signer}")]);
    cluster_role(
        &format!("system:certificates.k8s.io:{signer}-approver"),
        json!({}),
        vec![r],
    )
}

fn to(role: &str) -> Value {
    json!({format!("rbac.authorization.k8s.io/aggregate-to-{role}"): "true"})
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let workloads = [
        "deployments",
        "deployments/scale",
        "replicasets",
        "replicasets/scale",
        "statefulsets",
        "statefulsets/scale",
        "daemonsets",
    ];
    let core_view = [
        "pods",
        "pods/log",
        "pods/status",
        "services",
        "services/status",
        "endpoints",
        "persistentvolumeclaims",
        "persistentvolumeclaims/status",
        "configmaps",
        "serviceaccounts",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "replicationcontrollers/status",
        "limitranges",
        "resourcequotas",
        "resourcequotas/status",
        "bindings",
        "events",
        "namespaces",
        "namespaces/status",
    ];
    let core_edit = [
        "pods",
        "pods/attach",
        "pods/exec",
        "pods/portforward",
        "pods/proxy",
        "pods/eviction",
        "configmaps",
        "endpoints",
        "persistentvolumeclaims",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "secrets",
        "serviceaccounts",
        "services",
        "services/proxy",
    ];
    vec![
        cluster_role(
            "cluster-admin",
            json!({}),
            vec![rule(&["*"], &["*"], &["*"]), paths(&["*"], &["*"])],
        ),
        aggregated("admin", json!({}), "admin"),
        aggregated("edit", to("admin"), "edit"),
        aggregated("view", to("edit"), "view"),
        cluster_role(
            "system:aggregate-to-admin",
            to("admin"),
            vec![
                rule(&ALL_VERBS, &[GROUP], &["roles", "rolebindings"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            to("edit"),
            vec![
                rule(&WRITE, &[""], &core_edit),
                rule(
                    &READ,
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                rule(&["impersonate"], &[""], &["serviceaccounts"]),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(&WRITE, &["apps"], &workloads),
                rule(&WRITE, &["batch"], &["jobs", "cronjobs"]),
                rule(&WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(&WRITE, &["policy"], &["poddisruptionbudgets"]),
                rule(
                    &WRITE,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                rule(&WRITE, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            to("view"),
            vec![
                rule(&READ, &[""], &core_view),
                rule(&READ, &["apps"], &workloads),
                rule(&READ, &["batch"], &["jobs", "cronjobs"]),
                rule(&READ, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(&READ, &["policy"], &["poddisruptionbudgets"]),
                rule(
                    &READ,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                rule(&READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(&READ, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        // As metrics-server installs it, so `kubectl top pods` works for viewers.
        cluster_role(
            "system:aggregated-metrics-reader",
            json!({"rbac.authorization.k8s.io/aggregate-to-view": "true",
                   "rbac.authorization.k8s.io/aggregate-to-edit": "true",
                   "rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
            vec![rule(&READ, &["metrics.k8s.io"], &["pods", "nodes"])],
        ),
        cluster_role(
            "system:discovery",
            json!({}),
            vec![paths(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        // kube-apiserver's: who may read the metrics and health of the control plane.
        cluster_role(
            "system:monitoring",
            json!({}),
            vec![paths(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            json!({}),
            vec![paths(
                &["get"],
                &[
                    "/healthz",
                    "/livez",
                    "/readyz",
                    "/version",
                    "/version/",
                    "/cacerts",
                ],
            )],
        ),
        cluster_role(
            "system:auth-delegator",
            json!({}),
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:node-bootstrapper",
            json!({}),
            vec![
                rule(
                    &["create", "get", "list", "watch"],
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                ),
                paths(&["post"], &[JOIN_PATH]),
            ],
        ),
        // What the certificate approver checks a kubelet's client request against: a
        // bootstrapper asking for a node, a node asking for itself.
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            json!({}),
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            json!({}),
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
        // Anything holding a service-account token may find the keys that check it.
        cluster_role(
            "system:service-account-issuer-discovery",
            json!({}),
            vec![paths(
                &["get"],
                &[
                    CONFIGURATION_PATH,
                    &format!("{CONFIGURATION_PATH}/"),
                    JWKS_PATH,
                    &format!("{JWKS_PATH}/"),
                ],
            )],
        ),
        // Who may approve requests to each signer (bound to nobody: grant them).
        signer_approver("kube-apiserver-client"),
        signer_approver("kube-apiserver-client-kubelet"),
        // What this cluster's controllers read and write (one identity for all of them).
        cluster_role(
            CONTROLLER_MANAGER,
            json!({}),
            vec![
                rule(&READ, &["*"], &["*"]),
                rule(
                    &WRITE,
                    &[""],
                    &[
                        "pods",
                        "pods/status",
                        "pods/eviction",
                        "nodes",
                        "nodes/status",
                        "services",
                        "services/status",
                        "endpoints",
                        "events",
                        "namespaces",
                        "namespaces/status",
                        "namespaces/finalize",
                        "serviceaccounts",
                        "secrets",
                        "configmaps",
                        "persistentvolumes",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                    ],
                ),
                rule(
                    &WRITE,
                    &["apps"],
                    &[
                        "deployments",
                        "deployments/status",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/status",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/status",
                        "daemonsets",
                        "daemonsets/status",
                        "controllerrevisions",
                    ],
                ),
                rule(&WRITE, &["discovery.k8s.io"], &["endpointslices"]),
                rule(&WRITE, &["events.k8s.io"], &["events"]),
                rule(&WRITE, &["coordination.k8s.io"], &["leases"]),
                rule(
                    &WRITE,
                    &["batch"],
                    &["jobs", "jobs/status", "cronjobs", "cronjobs/status"],
                ),
                rule(&ALL_VERBS, &[GROUP], &["clusterroles", "roles"]),
                rule(&["escalate", "bind"], &[GROUP], &["clusterroles", "roles"]),
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                rule(
                    &ALL_VERBS,
                    &["certificates.k8s.io"],
                    &[
                        "certificatesigningrequests",
                        "certificatesigningrequests/approval",
                        "certificatesigningrequests/status",
                    ],
                ),
                rule(&["approve", "sign"], &["certificates.k8s.io"], &["signers"]),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
            ],
        ),
        cluster_role(
            SCHEDULER,
            json!({}),
            vec![
                rule(&READ, &["*"], &["*"]),
                rule(&["create"], &[""], &["pods/binding", "bindings"]),
                rule(&["patch", "update"], &[""], &["pods/status"]),
                rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                rule(
                    &["create", "get", "update"],
                    &["coordination.k8s.io"],
                    &["leases"],
                ),
            ],
        ),
    ]
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", "cluster-admin", &[("Group", MASTERS)]),
        binding(
            "system:discovery",
            "system:discovery",
            &[("Group", AUTHENTICATED)],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &[("Group", AUTHENTICATED)],
        ),
        binding(
            "system:monitoring",
            "system:monitoring",
            &[("Group", "system:monitoring")],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[("Group", AUTHENTICATED), ("Group", UNAUTHENTICATED)],
        ),
        binding(
            "system:node-bootstrapper",
            "system:node-bootstrapper",
            &[("Group", BOOTSTRAPPERS)],
        ),
        binding(
            CONTROLLER_MANAGER,
            CONTROLLER_MANAGER,
            &[("User", CONTROLLER_MANAGER)],
        ),
        binding(SCHEDULER, SCHEDULER, &[("User", SCHEDULER)]),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            &[("Group", crate::serviceaccount::ALL_GROUP)],
        ),
        // kubeadm's pair: the join token's holders get node client certificates
        // approved, and nodes get their own renewed.
        binding(
            "tinykube:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[("Group", BOOTSTRAPPERS)],
        ),
        binding(
            "tinykube:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[("Group", NODES)],
        ),
    ]
}

/// The stored object brought back to the default, or `None` when nothing needs
/// writing: its rules (or subjects) are the default's plus whatever a user added, and
/// an aggregated role keeps the rules its aggregation gathered.
pub fn reconcile(default: &Value, stored: &Value) -> Option<Value> {
    if stored["metadata"]["annotations"][AUTOUPDATE] == "false" {
        return None;
    }
    let mut out = stored.clone();
    let mut changed = false;
    for field in ["rules", "subjects"] {
        let Some(want) = default[field].as_array() else {
            continue;
        };
        if default.get("aggregationRule").is_some() && field == "rules" {
            continue;
        }
        let mut have = stored[field].as_array().cloned().unwrap_or_default();
        for w in want {
            if !have.contains(w) {
                have.push(w.clone());
                changed = true;
            }
        }
        out[field] = Value::Array(have);
    }
    for field in ["aggregationRule", "roleRef"] {
        if let Some(v) = default.get(field)
            && stored.get(field) != Some(v)
        {
            out[field] = v.clone();
            changed = true;
        }
    }
    for (k, v) in default["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if stored["metadata"]["labels"][k] != *v {
            out["metadata"]["labels"][k] = v.clone();
            changed = true;
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciling_puts_back_defaults_and_keeps_additions() {
        let d = cluster_roles().remove(0);
        assert_eq!(reconcile(&d, &d), None);
        let mut s = d.clone();
        s["rules"] = json!([{"verbs": ["get"], "apiGroups": ["x"], "resources": ["y"]}]);
        let r = reconcile(&d, &s).unwrap();
        assert_eq!(r["rules"].as_array().unwrap().len(), 3);
        s["metadata"]["annotations"][AUTOUPDATE] = json!("false");
        assert_eq!(reconcile(&d, &s), None);
    }

    #[test]
    fn every_default_binding_names_a_default_role() {
        let roles: Vec<String> = cluster_roles()
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        for b in cluster_role_bindings() {
            assert!(
                roles.iter().any(|r| b["roleRef"]["name"] == *r),
                "{}",
                b["metadata"]["name"]
            );
        }
    }
}
