//! A pod's service account, end to end on a local cluster (root, real containerd): the
//! ServiceAccount admission plugin mounts a token bound to the pod, the cluster CA and
//! the namespace at /var/run/secrets/kubernetes.io/serviceaccount; the pod's in-cluster
//! client (kube-rs `Config::incluster()`) may do what its account's Role says and gets
//! 403 for the rest; the kubelet renews the token before it expires.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tinykube_tests::lab::TestLab;
use tinykube_tests::{Kubectl, eventually};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn in_pod(k: &Kubectl, pod: &str, args: &[&str]) -> tinykube_tests::Run {
    let mut all = vec!["exec", "-n", "team", pod, "--", "/tinykube", "toolbox"];
    all.extend_from_slice(args);
    k.run(&all)
}

fn claims(token: &str) -> Value {
    let part = token.trim().split('.').nth(1).expect("a JWT");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .expect("base64url"),
    )
    .expect("JSON")
}

fn pod_yaml(name: &str, automount: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: team}}\nspec:\n  serviceAccountName: reader\n  automountServiceAccountToken: {automount}\n  containers:\n  - name: c\n    image: tinykube.local/toolbox\n    imagePullPolicy: IfNotPresent\n    command: [\"/tinykube\", \"toolbox\", \"sleep\", \"3600\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_acts_as_its_service_account_with_a_token_the_kubelet_renews() {
    // Tokens of 20 s, so the kubelet's renewal (at 80%) is seen within the test.
    let lab =
        TestLab::start_with_master_args(0, &["--service-account-max-token-expiration", "20s"])
            .await;
    let k = lab.kubectl();
    k.ok(&["create", "namespace", "team"]);
    k.ok(&["create", "serviceaccount", "reader", "-n", "team"]);
    k.ok(&[
        "create",
        "role",
        "pod-reader",
        "-n",
        "team",
        "--verb=get,list",
        "--resource=pods",
    ]);
    k.ok(&[
        "create",
        "rolebinding",
        "reader-reads",
        "-n",
        "team",
        "--role=pod-reader",
        "--serviceaccount=team:reader",
    ]);
    k.ok_stdin(&["apply", "-f", "-"], &pod_yaml("api", true));
    k.ok_stdin(&["apply", "-f", "-"], &pod_yaml("quiet", false));
    k.ok(&[
        "wait",
        "-n",
        "team",
        "--for=condition=Ready",
        "pod/api",
        "pod/quiet",
        "--timeout=90s",
    ]);

    // What admission added.
    let spec: Value =
        serde_json::from_str(&k.ok(&["get", "pod", "api", "-n", "team", "-o", "jsonpath={.spec}"]))
            .unwrap();
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with("kube-api-access-"))
        .expect("the token volume")
        .clone();
    assert_eq!(
        volume["projected"]["sources"][0]["serviceAccountToken"]["path"],
        "token"
    );
    assert_eq!(
        spec["containers"][0]["volumeMounts"][0]["mountPath"],
        SA_DIR
    );
    let quiet = k.ok(&[
        "get",
        "pod",
        "quiet",
        "-n",
        "team",
        "-o",
        "jsonpath={.spec.volumes}",
    ]);
    assert!(!quiet.contains("kube-api-access-"), "{quiet}");
    assert!(!in_pod(&k, "quiet", &["cat", &format!("{SA_DIR}/token")]).ok);

    // The files: a token bound to this pod, the cluster CA, the namespace.
    let token = in_pod(&k, "api", &["cat", &format!("{SA_DIR}/token")]);
    assert!(token.ok, "{}", token.stderr);
    let first = claims(&token.stdout);
    let uid = k.ok(&[
        "get",
        "pod",
        "api",
        "-n",
        "team",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    assert_eq!(
        first["kubernetes.io"]["pod"],
        json!({"name": "api", "uid": uid})
    );
    assert_eq!(first["sub"], "system:serviceaccount:team:reader");
    assert_eq!(
        first["aud"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );
    assert_eq!(
        in_pod(&k, "api", &["cat", &format!("{SA_DIR}/namespace")]).stdout,
        "team"
    );
    let ca = in_pod(&k, "api", &["cat", &format!("{SA_DIR}/ca.crt")]).stdout;
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    // The in-cluster client: pods in its namespace yes, secrets and elsewhere no.
    let pods = in_pod(&k, "api", &["api", "get", "pods"]);
    assert!(
        pods.ok && pods.stdout.contains("pod/api"),
        "{} {}",
        pods.stdout,
        pods.stderr
    );
    let secrets = in_pod(&k, "api", &["api", "get", "secrets"]);
    assert!(!secrets.ok);
    assert!(
        secrets.stdout.contains("Error from server (Forbidden): secrets is forbidden: User \"system:serviceaccount:team:reader\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team\""),
        "{}",
        secrets.stdout
    );
    let elsewhere = in_pod(&k, "api", &["api", "get", "pods", "-n", "default"]);
    assert!(
        !elsewhere.ok && elsewhere.stdout.contains("in the namespace \"default\""),
        "{}",
        elsewhere.stdout
    );

    // Renewed before it runs out; the pod's client works past the first token's end.
    let renewed = eventually(Duration::from_secs(40), async || {
        let now = claims(&in_pod(&k, "api", &["cat", &format!("{SA_DIR}/token")]).stdout);
        (now["jti"] != first["jti"]).then_some(now)
    })
    .await
    .expect("the kubelet did not renew the token");
    assert!(
        renewed["iat"].as_i64().unwrap() < first["exp"].as_i64().unwrap(),
        "renewed after it expired"
    );
    let expired_at = first["exp"].as_i64().unwrap();
    while jiff::Timestamp::now().as_second() <= expired_at + 1 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let later = in_pod(
        &k,
        "api",
        &[
            "api",
            "get",
            "pods",
            "--count",
            "3",
            "--interval-ms",
            "1000",
        ],
    );
    assert!(later.ok, "{} {}", later.stdout, later.stderr);

    // (That a token bound to a pod dies with it is tests/tokens.rs's: here every token
    // lasts 20 s, so expiry and deletion could not be told apart.)
}
