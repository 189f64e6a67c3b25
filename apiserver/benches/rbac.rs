//! The RBAC authorizer alone, in process: decisions per second on one core with 10,000
//! bindings (5,000 RoleBindings over 100 namespaces and 5,000 ClusterRoleBindings, each
//! for a user of its own, plus the default group bindings), for a mix of requests that
//! are allowed through a RoleBinding, through a ClusterRoleBinding, or refused after
//! looking at everything that names the user. Prints the median of five rounds.
//!
//! Run with `cargo bench -p tinykube-apiserver --bench rbac`.

use std::time::Instant;

use serde_json::json;
use tinykube_apiserver::authn::UserInfo;
use tinykube_apiserver::authz::Attributes;
use tinykube_apiserver::authz::Decision;
use tinykube_apiserver::authz::rbac::{RbacAuthorizer, bootstrap};

const BINDINGS: usize = 10_000;
const DECISIONS: usize = 1_000_000;
const ROUNDS: usize = 5;

fn main() {
    let rbac = RbacAuthorizer::default();
    let key = |plural: &str, ns: &str, name: &str| {
        format!("rbac.authorization.k8s.io/{plural}/{ns}/{name}")
    };
    for r in bootstrap::cluster_roles() {
        let name = r["metadata"]["name"].as_str().unwrap().to_string();
        rbac.apply(&key("clusterroles", "", &name), Some(&r));
    }
    for b in bootstrap::cluster_role_bindings() {
        let name = b["metadata"]["name"].as_str().unwrap().to_string();
        rbac.apply(&key("clusterrolebindings", "", &name), Some(&b));
    }
    let reader = json!({"kind": "ClusterRole", "metadata": {"name": "reader"},
        "rules": [{"verbs": ["get", "list", "watch"], "apiGroups": ["", "apps"],
                   "resources": ["pods", "services", "deployments"]}]});
    rbac.apply(&key("clusterroles", "", "reader"), Some(&reader));
    for i in 0..BINDINGS {
        let user = format!("user-{i}");
        let subjects =
            json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}]);
        let role_ref = json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "reader"});
        if i % 2 == 0 {
            let ns = format!("ns-{}", i % 100);
            let b = json!({"kind": "RoleBinding", "metadata": {"name": format!("b-{i}"), "namespace": ns},
                           "roleRef": role_ref, "subjects": subjects});
            rbac.apply(&key("rolebindings", &ns, &format!("b-{i}")), Some(&b));
        } else {
            let b = json!({"kind": "ClusterRoleBinding", "metadata": {"name": format!("c-{i}")},
                           "roleRef": role_ref, "subjects": subjects});
            rbac.apply(&key("clusterrolebindings", "", &format!("c-{i}")), Some(&b));
        }
    }
    let users: Vec<UserInfo> = (0..1000)
        .map(|i| UserInfo::new(format!("user-{}", i * 7 % BINDINGS), ["devs".to_string()]))
        .collect();
    let namespaces: Vec<String> = (0..100).map(|i| format!("ns-{i}")).collect();
    let verbs = ["get", "list", "delete"];
    let mut rates = Vec::new();
    let mut allowed = 0usize;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for n in 0..DECISIONS {
            let user = &users[n % users.len()];
            let a = Attributes {
                user,
                verb: verbs[n % verbs.len()],
                resource_request: true,
                api_group: "",
                resource: "pods",
                subresource: None,
                namespace: Some(&namespaces[n % namespaces.len()]),
                name: None,
                path: "",
            };
            if rbac.decide(&a) == Decision::Allow {
                allowed += 1;
            }
        }
        rates.push(DECISIONS as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!(
        "rbac authorizer, {BINDINGS} bindings: median {:.0} decisions/s on one core (rounds: {}), {:.1}% allowed",
        rates[ROUNDS / 2],
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        100.0 * allowed as f64 / (ROUNDS * DECISIONS) as f64
    );
}
