//! Joining with the token alone, and what a node's credentials allow afterwards
//! (Kubernetes' node authorizer and NodeRestriction): a node reaches its own Node,
//! Lease and pods and the secrets its pods use, nothing of another node's; the join
//! token does nothing but join.

use std::sync::Arc;

use http::{Method, Request};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tinykube_api::pki::JoinToken;
use tinykube_client::join::{JoinError, join};
use tinykube_tests::TestMaster;

async fn send(client: &kube::Client, method: Method, path: &str, body: Value) -> (u16, Value) {
    let ct = if method == Method::PATCH {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ct)
        .header("accept", "application/json")
        .body(kube::client::Body::from(body))
        .unwrap();
    let resp = client.send(req).await.expect("the server answers");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn forbidden(r: &(u16, Value), part: &str) {
    assert_eq!(r.0, 403, "{}", r.1);
    assert_eq!(r.1["reason"], "Forbidden", "{}", r.1);
    let msg = r.1["message"].as_str().unwrap_or_default();
    assert!(msg.contains(part), "{msg:?} lacks {part:?}");
}

fn pod(name: &str, node: &str, secret: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"nodeName": node,
                    "containers": [{"name": "c", "image": "toolbox"}],
                    "volumes": [{"name": "s", "secret": {"secretName": secret}}]}})
}

#[tokio::test]
async fn a_node_reaches_its_own_objects_only() {
    let m = TestMaster::start().await;
    let admin = m.client().await;
    let dir = tempfile::tempdir().unwrap();
    let w1 = m.node_client("worker-1", dir.path()).await;
    let kubeconfig = std::fs::read_to_string(dir.path().join("kubelet.kubeconfig")).unwrap();
    assert!(
        kubeconfig.contains("client-certificate-data") && !kubeconfig.contains("token"),
        "a node's own credentials are a certificate, not the join token: {kubeconfig}"
    );

    // The join token is for joining only.
    let joiner = m.client_with_token(&m.join_token()).await;
    forbidden(
        &send(
            &joiner,
            Method::GET,
            "/api/v1/namespaces/default/pods",
            Value::Null,
        )
        .await,
        "User \"system:bootstrap:node-token\" cannot list resource \"pods\"",
    );
    forbidden(
        &send(
            &joiner,
            Method::POST,
            "/api/v1/namespaces/default/pods",
            pod("x", "worker-1", "s1"),
        )
        .await,
        "cannot create resource \"pods\"",
    );

    for n in ["worker-1", "worker-2"] {
        let c = if n == "worker-1" { &w1 } else { &admin };
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}});
        assert_eq!(send(c, Method::POST, "/api/v1/nodes", node).await.0, 201);
    }
    for s in ["s1", "s2"] {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": s},
                            "data": {"k": "dg=="}});
        let path = "/api/v1/namespaces/default/secrets";
        assert_eq!(send(&admin, Method::POST, path, secret).await.0, 201);
    }
    let pods = "/api/v1/namespaces/default/pods";
    assert_eq!(
        send(&admin, Method::POST, pods, pod("mine", "worker-1", "s1"))
            .await
            .0,
        201
    );
    assert_eq!(
        send(&admin, Method::POST, pods, pod("theirs", "worker-2", "s2"))
            .await
            .0,
        201
    );

    // Its own Node and pods' status, the secret its pod uses.
    let patch = json!({"metadata": {"labels": {"x": "y"}}});
    assert_eq!(
        send(&w1, Method::PATCH, "/api/v1/nodes/worker-1", patch.clone())
            .await
            .0,
        200
    );
    let status = json!({"status": {"phase": "Running"}});
    assert_eq!(
        send(
            &w1,
            Method::PATCH,
            &format!("{pods}/mine/status"),
            status.clone()
        )
        .await
        .0,
        200
    );
    assert_eq!(
        send(
            &w1,
            Method::GET,
            "/api/v1/namespaces/default/secrets/s1",
            Value::Null
        )
        .await
        .0,
        200
    );

    // Nothing of worker-2's.
    forbidden(
        &send(&w1, Method::PATCH, "/api/v1/nodes/worker-2", patch).await,
        "cannot patch resource \"nodes\"",
    );
    forbidden(
        &send(
            &w1,
            Method::GET,
            "/api/v1/namespaces/default/secrets/s2",
            Value::Null,
        )
        .await,
        "cannot get resource \"secrets\"",
    );
    forbidden(
        &send(
            &w1,
            Method::GET,
            "/api/v1/namespaces/default/secrets",
            Value::Null,
        )
        .await,
        "cannot list resource \"secrets\"",
    );
    forbidden(
        &send(&w1, Method::PATCH, &format!("{pods}/theirs/status"), status).await,
        "node \"worker-1\" can only update pod status for pods on itself",
    );
    forbidden(
        &send(&w1, Method::DELETE, &format!("{pods}/theirs"), Value::Null).await,
        "node \"worker-1\" can only delete pods with spec.nodeName set to itself",
    );
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": "worker-2"}, "spec": {"holderIdentity": "worker-1"}});
    forbidden(
        &send(
            &w1,
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            lease,
        )
        .await,
        "leases.coordination.k8s.io \"worker-2\" is forbidden: can only access node lease with the same name as the requesting node",
    );
    forbidden(
        &send(&w1, Method::DELETE, "/api/v1/nodes/worker-2", Value::Null).await,
        "User \"system:node:worker-1\" cannot delete resource \"nodes\"",
    );
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}});
    forbidden(
        &send(
            &w1,
            Method::POST,
            "/apis/apps/v1/namespaces/default/deployments",
            d,
        )
        .await,
        "cannot create resource \"deployments\"",
    );

    // Pods: mirror pods bound to itself only (no privileged pod anywhere by the back door).
    forbidden(
        &send(&w1, Method::POST, pods, pod("plain", "worker-1", "s1")).await,
        "can only create mirror pods",
    );
    let mirror = |name: &str, node: &str| {
        let mut p = pod(name, node, "s1");
        p["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "static"});
        p
    };
    forbidden(
        &send(&w1, Method::POST, pods, mirror("elsewhere", "worker-2")).await,
        "can only create pods with spec.nodeName set to itself",
    );
    assert_eq!(
        send(&w1, Method::POST, pods, mirror("static", "worker-1"))
            .await
            .0,
        201
    );
    assert_eq!(
        send(&w1, Method::DELETE, &format!("{pods}/mine"), Value::Null)
            .await
            .0,
        200
    );

    // Joining again with the same data dir reuses the credentials.
    let before = std::fs::read_to_string(dir.path().join("kubelet.kubeconfig")).unwrap();
    let _ = m.node_client("worker-1", dir.path()).await;
    let after = std::fs::read_to_string(dir.path().join("kubelet.kubeconfig")).unwrap();
    assert_eq!(before, after);
    m.shutdown().await;
}

#[tokio::test]
async fn a_wrong_ca_hash_or_an_impostor_is_refused() {
    let m = TestMaster::start().await;
    let token = JoinToken::parse(&m.join_token()).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // A token whose hash names another CA.
    let wrong = JoinToken {
        ca_hash: Some("0".repeat(64)),
        secret: token.secret.clone(),
    };
    let err = join(&m.master.url, &wrong, "w", None, dir.path())
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::WrongCa { .. }), "{err}");
    assert!(err.to_string().contains("refusing to join"), "{err}");
    assert!(!dir.path().join("kubelet.kubeconfig").exists());

    // Someone in between: serves the real CA (it is public) but cannot present a
    // certificate signed by it.
    let ca = served_ca(&m).await;
    let impostor = impostor(ca).await;
    let err = join(
        &format!("https://127.0.0.1:{impostor}"),
        &token,
        "w",
        None,
        dir.path(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, JoinError::NotSignedByCa { .. }), "{err}");
    assert!(
        err.to_string().contains("not signed by the cluster CA"),
        "{err}"
    );

    // A token with no hash and no CA file cannot check anything.
    let bare = JoinToken::parse(&token.secret).unwrap();
    let err = join(&m.master.url, &bare, "w", None, dir.path())
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::NoCa), "{err}");

    // The real one joins.
    join(&m.master.url, &token, "w", None, dir.path())
        .await
        .unwrap();
    m.shutdown().await;
}

/// The CA as the master serves it, to anyone.
async fn served_ca(m: &TestMaster) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-sk", &format!("{}/cacerts", m.master.url)])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let pem = String::from_utf8(out.stdout).unwrap();
    assert_eq!(pem, m.master.ca_pem);
    pem
}

/// A TLS server with a certificate of its own that answers every request with `body`.
async fn impostor(body: String) -> u16 {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// The node's certificate: (PEM, not-after in seconds since the epoch).
fn node_certificate(kubeconfig: &std::path::Path) -> (String, i64) {
    let kc: tinykube_api::kubeconfig::Kubeconfig =
        serde_saphyr::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let pem = kc.users[0].user.certificate_pem().unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    (pem, tinykube_api::pki::not_after(&der).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_renews_its_certificate_before_it_expires() {
    // Certificates of 30 s: the node renews between 21 and 24 s, through a request it
    // makes for itself, approved automatically; its client works throughout, and the
    // certificate it had before is refused once it has run out.
    let lifetime = std::time::Duration::from_secs(30);
    let m = TestMaster::builder()
        .signing_duration(lifetime)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let token = JoinToken::parse(&m.join_token()).unwrap();
    let (path, _) = join(&m.master.url, &token, "worker-1", None, dir.path())
        .await
        .unwrap();
    let (first, first_expiry) = node_certificate(&path);
    let left = first_expiry - jiff::Timestamp::now().as_second();
    assert!(
        (25..=30).contains(&left),
        "the join's certificate lasts {left}s"
    );
    let old = dir.path().join("old.kubeconfig");
    std::fs::copy(&path, &old).unwrap();

    let (client, rotation) = tinykube_client::rotation::node_client(&path).await.unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let renewal = tokio::spawn(rotation.run(client.clone(), cancel.clone()));
    let nodes = "/api/v1/nodes/worker-1".to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(55);
    let mut answered = 0;
    while std::time::Instant::now() < deadline {
        let (code, _) = send(&client, Method::GET, &nodes, Value::Null).await;
        // 404: the node is not registered, but the request was authenticated.
        if code != 404 {
            let (_, csrs) = send(
                &m.client().await,
                Method::GET,
                "/apis/certificates.k8s.io/v1/certificatesigningrequests",
                Value::Null,
            )
            .await;
            panic!("the node's client got {code} after {answered} requests; requests: {csrs}");
        }
        answered += 1;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    cancel.cancel();
    renewal.await.unwrap();

    let (now, expiry) = node_certificate(&path);
    assert_ne!(now, first, "the kubeconfig holds a new certificate");
    assert!(
        expiry > first_expiry + 15,
        "renewed: {first_expiry} -> {expiry}"
    );
    let admin = m.client().await;
    let (_, list) = send(
        &admin,
        Method::GET,
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        Value::Null,
    )
    .await;
    let renewals: Vec<&Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["spec"]["username"] == "system:node:worker-1")
        .collect();
    assert!(renewals.len() >= 2, "one request per renewal: {list}");
    for c in &renewals {
        assert_eq!(
            c["spec"]["signerName"],
            "kubernetes.io/kube-apiserver-client-kubelet"
        );
        assert_eq!(c["status"]["conditions"][0]["reason"], "AutoApproved");
        assert!(c["status"]["certificate"].is_string());
    }
    // The first certificate ran out: nothing it opens is let in.
    let stale = tinykube_tests::client_for(&old).await;
    let refused = stale
        .request_text(Request::get(nodes.as_str()).body(Vec::new()).unwrap())
        .await;
    assert!(
        refused.is_err(),
        "an expired certificate still authenticates"
    );
    m.shutdown().await;
}
