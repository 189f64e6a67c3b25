//! What RBAC costs a request: GETs of one pod by a user whose access comes from a
//! RoleBinding, among 1,000 RoleBindings and 1,000 ClusterRoleBindings for other users,
//! against the same GETs by the admin (`system:masters`, allowed before any authorizer
//! is asked), in the same run, rounds alternating. 32 clients over their own
//! connections against a master running as users run it (release build, controllers
//! and scheduler on, three hollow nodes). Prints the medians of five rounds each.
//!
//! Run with `bench/authorization` (builds the release binary first).

use std::time::{Duration, Instant};

use http::Request;
use serde_json::json;
use tinykube_tests::{MasterProcess, client_for, free_port, median, percentile};

const CLIENTS: usize = 32;
const GETS_PER_CLIENT: usize = 200;
const ROUNDS: usize = 5;
const BINDINGS: usize = 1000;

async fn request(client: &kube::Client, method: &str, uri: &str, body: Vec<u8>) -> String {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    client.request_text(req).await.expect("request succeeds")
}

/// A kubeconfig for `user`, with a client certificate signed by the master's CA.
fn user_kubeconfig(data: &std::path::Path, user: &str) -> std::path::PathBuf {
    let ca_pem = std::fs::read_to_string(data.join("tls/ca.crt")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(data.join("tls/ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, user);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let admin = std::fs::read_to_string(data.join("kubeconfig.yaml")).unwrap();
    let mut kc: tinykube_api::kubeconfig::Kubeconfig = serde_saphyr::from_str(&admin).unwrap();
    kc.users[0].user =
        tinykube_api::kubeconfig::User::certificate(&cert.pem(), &key.serialize_pem());
    let path = data.join(format!("{user}.kubeconfig"));
    std::fs::write(&path, kc.to_yaml()).unwrap();
    path
}

/// One round of GETs from every client; (p50, p99) in milliseconds.
async fn get_round(clients: &[kube::Client]) -> (f64, f64) {
    let mut tasks = Vec::new();
    for client in clients {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(GETS_PER_CLIENT);
            for _ in 0..GETS_PER_CLIENT {
                let t = Instant::now();
                request(
                    &client,
                    "GET",
                    "/api/v1/namespaces/default/pods/target",
                    vec![],
                )
                .await;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (percentile(&mut all, 0.50), percentile(&mut all, 0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tinykube_tests::init_crypto();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("master");
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let master = MasterProcess::start_with(&data, addr, &[])
        .expect("release master starts (run bench/authorization)");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let admin = client_for(&master.kubeconfig()).await;
    let config = tinykube_node::hollow::HollowConfig {
        cpu: "100".into(),
        memory: "100Gi".into(),
        ..Default::default()
    };
    let names = (1..=3).map(|i| format!("hollow{i}")).collect();
    let _nodes = tinykube_node::hollow::HollowNodes::start(admin.clone(), names, config)
        .await
        .expect("hollow nodes register");
    let rbac = "/apis/rbac.authorization.k8s.io/v1";
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "pod-reader"},
        "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]});
    request(
        &admin,
        "POST",
        &format!("{rbac}/namespaces/default/roles"),
        role.to_string().into_bytes(),
    )
    .await;
    let role_ref =
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"});
    let view =
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"});
    let subject =
        |u: &str| json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u}]);
    for i in 0..BINDINGS {
        let b = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("rb-{i}")}, "roleRef": role_ref, "subjects": subject(&format!("other-{i}"))});
        request(
            &admin,
            "POST",
            &format!("{rbac}/namespaces/default/rolebindings"),
            b.to_string().into_bytes(),
        )
        .await;
        let c = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("crb-{i}")}, "roleRef": view, "subjects": subject(&format!("viewer-{i}"))});
        request(
            &admin,
            "POST",
            &format!("{rbac}/clusterrolebindings"),
            c.to_string().into_bytes(),
        )
        .await;
    }
    let b = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "reader"}, "roleRef": role_ref, "subjects": subject("reader")});
    request(
        &admin,
        "POST",
        &format!("{rbac}/namespaces/default/rolebindings"),
        b.to_string().into_bytes(),
    )
    .await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "target"},
        "spec": {"containers": [{"name": "c", "image": "toolbox"}]}});
    request(
        &admin,
        "POST",
        "/api/v1/namespaces/default/pods",
        pod.to_string().into_bytes(),
    )
    .await;
    let reader_config = user_kubeconfig(&data, "reader");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut admins = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..CLIENTS {
        admins.push(client_for(&master.kubeconfig()).await);
        readers.push(client_for(&reader_config).await);
    }
    // Warm the connections.
    get_round(&admins).await;
    get_round(&readers).await;
    let (mut a50, mut a99, mut r50, mut r99) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let (p50, p99) = get_round(&admins).await;
        let (q50, q99) = get_round(&readers).await;
        println!(
            "round {round}: system:masters p50 {p50:.3} p99 {p99:.3} ms; RBAC user p50 {q50:.3} p99 {q99:.3} ms"
        );
        a50.push(p50);
        a99.push(p99);
        r50.push(q50);
        r99.push(q99);
    }
    let (a50, a99, r50, r99) = (median(a50), median(a99), median(r50), median(r99));
    println!(
        "GET pod, {CLIENTS} clients, {} RoleBindings + {BINDINGS} ClusterRoleBindings: system:masters p50 {a50:.3} ms p99 {a99:.3} ms; through RBAC p50 {r50:.3} ms p99 {r99:.3} ms; p99 added {:.3} ms",
        BINDINGS + 1,
        r99 - a99
    );
}
