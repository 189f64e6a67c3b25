//! Service-account tokens through the real kubectl: `kubectl create token` signs one,
//! it authenticates as the account (403 until a RoleBinding lets it in), TokenReview
//! says whose it is, a token bound to a pod dies with the pod, and a malformed,
//! expired, wrong-audience or wrong-issuer token gets 401 with a Status.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tinykube_tests::{Kubectl, TestMaster, eventually};

/// A kubeconfig whose user is the bearer `token` (no client certificate).
fn token_kubeconfig(m: &TestMaster, dir: &Path, token: &str) -> Kubectl {
    m.kubectl()
        .as_user(dir, "bot", &[&format!("--token={token}")])
}

/// The claims of a JWT, unverified.
fn claims(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// GET `path` with only `token`: (status, body).
async fn with_token(m: &TestMaster, token: &str, path: &str) -> (u16, Value) {
    let client = m.client_with_token(token).await;
    let req = http::Request::get(path).body(Vec::new()).unwrap();
    match client.request::<Value>(req).await {
        Ok(v) => (200, v),
        Err(kube::Error::Api(s)) => (s.code, serde_json::to_value(&s).unwrap()),
        Err(e) => panic!("{e}"),
    }
}

fn review(admin: &Kubectl, token: &str, audiences: &[&str]) -> Value {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                      "spec": {"token": token, "audiences": audiences}});
    let out = admin.ok_stdin(&["create", "-f", "-", "-o", "json"], &body.to_string());
    serde_json::from_str::<Value>(&out).unwrap()["status"].clone()
}

/// The TokenReview status once `token` is refused (within 20 s: the verified-token
/// cache keeps a good token for ten), or none.
async fn until_refused(admin: &Kubectl, token: &str) -> Option<Value> {
    eventually(Duration::from_secs(20), async || {
        let s = review(admin, token, &[]);
        (s["authenticated"] == false).then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_account_token_authenticates_until_its_pod_is_gone() {
    let m = TestMaster::start().await;
    let admin = m.kubectl();
    admin.ok(&["create", "serviceaccount", "bot"]);
    let token = admin.ok(&["create", "token", "bot", "--duration=1h"]);
    let token = token.trim();
    let c = claims(token);
    assert_eq!(c["sub"], "system:serviceaccount:default:bot");
    assert_eq!(c["iss"], "https://kubernetes.default.svc.cluster.local");
    assert_eq!(
        c["aud"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );
    let lifetime = c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 3600);

    // The account is someone, allowed nothing until bound.
    let dir = tempfile::tempdir().unwrap();
    let bot = token_kubeconfig(&m, dir.path(), token);
    let whoami = bot.ok(&["auth", "whoami"]);
    assert!(
        whoami.contains("system:serviceaccount:default:bot")
            && whoami.contains("system:serviceaccounts:default"),
        "{whoami}"
    );
    let err = bot.fails(&["get", "pods"]);
    assert!(
        err.contains("pods is forbidden: User \"system:serviceaccount:default:bot\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
        "{err}"
    );
    admin.ok(&[
        "create",
        "role",
        "pod-reader",
        "--verb=get,list",
        "--resource=pods",
    ]);
    admin.ok(&[
        "create",
        "rolebinding",
        "bot-reads",
        "--role=pod-reader",
        "--serviceaccount=default:bot",
    ]);
    let listed = eventually(Duration::from_secs(10), async || {
        bot.run(&["get", "pods"]).ok.then_some(())
    })
    .await;
    assert!(listed.is_some(), "the bound account could not list pods");
    assert!(
        bot.fails(&["get", "secrets"])
            .contains("cannot list resource \"secrets\"")
    );

    // TokenReview: whose it is, and for which audience.
    let status = review(&admin, token, &[]);
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(
        status["user"]["username"],
        "system:serviceaccount:default:bot"
    );
    let other = review(&admin, token, &["vault"]);
    assert_eq!(other["authenticated"], false, "{other}");
    assert!(
        other["error"].as_str().unwrap().contains("audiences"),
        "{other}"
    );

    // Bound to a pod, the token dies with it.
    admin.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  serviceAccountName: bot\n  containers:\n  - name: c\n    image: toolbox\n",
    );
    let bound = admin.ok(&[
        "create",
        "token",
        "bot",
        "--bound-object-kind=Pod",
        "--bound-object-name=p",
    ]);
    let bound = bound.trim();
    let uid = admin.ok(&["get", "pod", "p", "-o", "jsonpath={.metadata.uid}"]);
    let c = claims(bound);
    assert_eq!(c["kubernetes.io"]["pod"], json!({"name": "p", "uid": uid}));
    let status = review(&admin, bound, &[]);
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(
        status["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["p"])
    );
    admin.ok(&["delete", "pod", "p", "--grace-period=0", "--force"]);
    let dead = until_refused(&admin, bound)
        .await
        .expect("the token outlived its pod");
    assert!(
        dead["error"].as_str().unwrap().contains("pod \"p\""),
        "{dead}"
    );
    let (code, _) = with_token(&m, bound, "/api/v1/namespaces/default/pods").await;
    assert_eq!(code, 401);

    // Issuer discovery: the keys that check the tokens.
    let (code, config) = with_token(&m, token, "/.well-known/openid-configuration").await;
    assert_eq!(code, 200, "{config}");
    assert_eq!(
        config["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    let (_, jwks) = with_token(&m, token, "/openid/v1/jwks").await;
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(jwks["keys"][0]["kid"], header["kid"], "{jwks}");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_bearer_tokens_get_401_with_a_status() {
    let m = TestMaster::builder()
        .max_token_expiration(Duration::from_secs(2))
        .start()
        .await;
    let admin = m.kubectl();
    admin.ok(&["create", "serviceaccount", "bot"]);
    let unauthorized = |(code, body): (u16, Value)| {
        assert_eq!(code, 401, "{body}");
        assert_eq!(body["reason"], "Unauthorized", "{body}");
        assert_eq!(body["message"], "Unauthorized", "{body}");
        assert_eq!(body["status"], "Failure", "{body}");
    };
    let pods = "/api/v1/namespaces/default/pods";
    unauthorized(with_token(&m, "eyJhbGciOiJFUzI1NiJ9.bm90LWpzb24.c2ln", pods).await);
    unauthorized(with_token(&m, "not-a-token-at-all", pods).await);

    // Wrong audience: signed here, for someone else.
    let vault = admin.ok(&["create", "token", "bot", "--audience=vault"]);
    unauthorized(with_token(&m, vault.trim(), pods).await);

    // Expired: this cluster keeps tokens to two seconds.
    let short = admin.ok(&["create", "token", "bot"]);
    let c = claims(short.trim());
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    unauthorized(with_token(&m, short.trim(), pods).await);

    // Wrong issuer: this cluster's own key, another issuer's name.
    let key = std::fs::read_to_string(m.dir.path().join("tls").join("sa.key")).unwrap();
    let der = rcgen::KeyPair::from_pem(&key).unwrap().serialize_der();
    let mut forged = c.clone();
    forged["iss"] = json!("https://elsewhere.example");
    forged["exp"] = json!(jiff::Timestamp::now().as_second() + 600);
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    let forged = jsonwebtoken::encode(
        &header,
        &forged,
        &jsonwebtoken::EncodingKey::from_ec_der(&der),
    )
    .unwrap();
    unauthorized(with_token(&m, &forged, pods).await);
    let status = review(&admin, &forged, &[]);
    assert!(
        status["error"].as_str().unwrap().contains("issuer"),
        "{status}"
    );

    // TokenRequest's own rules.
    let err = admin.fails(&["create", "token", "bot", "--duration=1m"]);
    assert!(
        err.contains("spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"),
        "{err}"
    );
    let err = admin.fails(&["create", "token", "nobody"]);
    assert!(
        err.contains("serviceaccounts \"nobody\" not found"),
        "{err}"
    );
    m.shutdown().await;
}

/// The Secret older tutorials make: filled by the controller with a token that never
/// expires, good while the Secret holds it, gone with the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_legacy_token_secret_is_filled_and_dies_with_its_account() {
    let m = TestMaster::start().await;
    let admin = m.kubectl();
    admin.ok(&["create", "serviceaccount", "old"]);
    let secret = |name: &str, account: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/service-account-token\nmetadata:\n  name: {name}\n  annotations:\n    kubernetes.io/service-account.name: {account}\n"
        )
    };
    admin.ok_stdin(&["apply", "-f", "-"], &secret("old-token", "old"));
    let token = eventually(Duration::from_secs(10), async || {
        let t = admin.ok(&["get", "secret", "old-token", "-o", "jsonpath={.data.token}"]);
        (!t.is_empty()).then_some(t)
    })
    .await
    .expect("the controller fills the token");
    let token = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .unwrap(),
    )
    .unwrap();
    let c = claims(&token);
    assert_eq!(c["iss"], "kubernetes/serviceaccount", "{c}");
    assert_eq!(c["kubernetes.io/serviceaccount/secret.name"], "old-token");
    assert!(c.get("exp").is_none(), "a legacy token never expires: {c}");
    let uid = admin.ok(&["get", "sa", "old", "-o", "jsonpath={.metadata.uid}"]);
    assert_eq!(c["kubernetes.io/serviceaccount/service-account.uid"], uid);
    let held = admin.ok(&["get", "secret", "old-token", "-o", "json"]);
    let held: Value = serde_json::from_str(&held).unwrap();
    assert_eq!(
        held["metadata"]["annotations"]["kubernetes.io/service-account.uid"],
        uid
    );
    let ca = base64::engine::general_purpose::STANDARD
        .decode(held["data"]["ca.crt"].as_str().unwrap())
        .unwrap();
    assert_eq!(ca, m.master.ca_pem.as_bytes(), "the cluster CA");
    assert_eq!(held["data"]["namespace"], "ZGVmYXVsdA==");

    // It authenticates as the account.
    let dir = tempfile::tempdir().unwrap();
    let old = token_kubeconfig(&m, dir.path(), &token);
    let whoami = old.ok(&["auth", "whoami"]);
    assert!(
        whoami.contains("system:serviceaccount:default:old"),
        "{whoami}"
    );
    let status = review(&admin, &token, &[]);
    assert_eq!(status["authenticated"], true, "{status}");

    // A token Secret must name an account; one naming no account is deleted.
    let r = admin.run_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/service-account-token\nmetadata:\n  name: nobody\n",
    );
    let err = r.stderr;
    assert!(!r.ok, "a token Secret without its account is refused");
    assert!(
        err.contains("metadata.annotations[kubernetes.io/service-account.name]: Required value"),
        "{err}"
    );
    admin.ok_stdin(&["apply", "-f", "-"], &secret("ghost-token", "ghost"));
    let gone = eventually(Duration::from_secs(10), async || {
        let r = admin.run(&["get", "secret", "ghost-token"]);
        (!r.ok && r.stderr.contains("NotFound")).then_some(())
    })
    .await;
    assert!(gone.is_some(), "a Secret naming no account is deleted");

    // Deleting the account deletes its Secret, and the token stops working.
    admin.ok(&["delete", "serviceaccount", "old"]);
    let gone = eventually(Duration::from_secs(10), async || {
        let r = admin.run(&["get", "secret", "old-token"]);
        (!r.ok && r.stderr.contains("NotFound")).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the account's token Secret is deleted with it"
    );
    let dead = until_refused(&admin, &token)
        .await
        .expect("the token outlived its account");
    assert!(
        dead["error"].as_str().unwrap().contains("not found"),
        "{dead}"
    );
    m.shutdown().await;
}
