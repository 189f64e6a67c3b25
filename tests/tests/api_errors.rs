//! Bad input and authentication: every refusal is a 4xx Kubernetes Status with a clear
//! message, never a 5xx, and the server keeps serving afterwards.

use http::{Method, Request};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tinykube_tests::TestMaster;

struct Reply {
    code: u16,
    body: Value,
}

async fn send(
    client: &kube::Client,
    method: Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .header("accept", "application/json")
        .body(kube::client::Body::from(body))
        .unwrap();
    let resp = client.send(req).await.expect("the server answers");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    Reply { code, body }
}

fn assert_status(r: &Reply, code: u16, reason: &str, message_part: &str) {
    assert_eq!(r.code, code, "{}", r.body);
    assert_eq!(r.body["kind"], "Status", "{}", r.body);
    assert_eq!(r.body["code"], code);
    assert_eq!(r.body["reason"], reason, "{}", r.body);
    let msg = r.body["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(message_part),
        "message {msg:?} lacks {message_part:?}"
    );
}

const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test]
async fn malformed_and_mismatched_bodies_get_a_status() {
    let m = TestMaster::start().await;
    let c = m.client().await;
    let json_ct = "application/json";

    let r = send(
        &c,
        Method::POST,
        PODS,
        json_ct,
        b"{\"kind\": \"Pod\", ".to_vec(),
    )
    .await;
    assert_status(&r, 400, "BadRequest", "json parse error");
    let r = send(
        &c,
        Method::POST,
        PODS,
        "application/yaml",
        b"kind: [unclosed".to_vec(),
    )
    .await;
    assert_status(&r, 400, "BadRequest", "yaml parse error");
    let r = send(&c, Method::POST, PODS, json_ct, b"[1, 2]".to_vec()).await;
    assert_status(&r, 400, "BadRequest", "must be a JSON object");
    let r = send(&c, Method::POST, PODS, "text/plain", b"hello".to_vec()).await;
    assert_status(&r, 415, "UnsupportedMediaType", "text/plain");
    let r = send(
        &c,
        Method::POST,
        PODS,
        "application/vnd.kubernetes.protobuf",
        b"k8s\0garbage".to_vec(),
    )
    .await;
    assert_status(&r, 400, "BadRequest", "protobuf");

    // A Deployment sent to the pods URL.
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}});
    let r = send(&c, Method::POST, PODS, json_ct, d.to_string().into_bytes()).await;
    assert_status(&r, 400, "BadRequest", "does not match");

    // Wrong field types and unknown fields under strict validation.
    let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": 7}});
    let r = send(&c, Method::POST, PODS, json_ct, p.to_string().into_bytes()).await;
    assert_status(&r, 400, "BadRequest", "cannot be handled as a Pod");
    let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "i", "colour": "red"}]}});
    let r = send(
        &c,
        Method::POST,
        &format!("{PODS}?fieldValidation=Strict"),
        json_ct,
        p.to_string().into_bytes(),
    )
    .await;
    assert_status(
        &r,
        400,
        "BadRequest",
        "unknown field \"spec.containers[0].colour\"",
    );

    // Invalid names, with the field cause.
    let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
    let r = send(&c, Method::POST, PODS, json_ct, p.to_string().into_bytes()).await;
    assert_status(
        &r,
        422,
        "Invalid",
        "Pod \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\"",
    );
    assert_eq!(r.body["details"]["causes"][0]["field"], "metadata.name");
    assert_eq!(
        r.body["details"]["causes"][0]["reason"],
        "FieldValueInvalid"
    );

    // Oversize bodies.
    let big = vec![b' '; 4 * 1024 * 1024];
    let r = send(&c, Method::POST, PODS, json_ct, big).await;
    assert_status(&r, 413, "RequestEntityTooLarge", "too large");

    // Unknown resources, versions and groups.
    let r = send(&c, Method::GET, "/api/v1/widgets", json_ct, vec![]).await;
    assert_status(&r, 404, "NotFound", "could not find the requested resource");
    let r = send(
        &c,
        Method::GET,
        "/apis/apps/v2/deployments",
        json_ct,
        vec![],
    )
    .await;
    assert_status(&r, 404, "NotFound", "could not find");
    let r = send(
        &c,
        Method::GET,
        "/apis/nope.example.com/v1",
        json_ct,
        vec![],
    )
    .await;
    assert_status(&r, 404, "NotFound", "could not find");
    let r = send(&c, Method::PUT, PODS, json_ct, b"{}".to_vec()).await;
    assert_status(&r, 405, "MethodNotAllowed", "does not allow");
    let r = send(
        &c,
        Method::PATCH,
        &format!("{PODS}/x"),
        "application/apply-patch+yaml",
        b"{}".to_vec(),
    )
    .await;
    assert_status(&r, 415, "UnsupportedMediaType", "server-side apply");
    let r = send(
        &c,
        Method::GET,
        "/api/v1/pods?labelSelector=a%20in%20(b",
        json_ct,
        vec![],
    )
    .await;
    assert_status(&r, 400, "BadRequest", "unable to parse requirement");
    let r = send(
        &c,
        Method::GET,
        "/api/v1/pods?watch=true&resourceVersion=abc",
        json_ct,
        vec![],
    )
    .await;
    assert_status(&r, 400, "BadRequest", "invalid resource version");

    // Still healthy.
    let r = send(
        &c,
        Method::GET,
        "/api/v1/namespaces/default",
        json_ct,
        vec![],
    )
    .await;
    assert_eq!(r.code, 200);
    m.shutdown().await;
}

#[tokio::test]
async fn tokens_are_required() {
    let m = TestMaster::start().await;
    let json_ct = "application/json";
    let anonymous = {
        let mut config =
            tinykube_tests::without_certificate(tinykube_tests::kube_config(m.kubeconfig()).await);
        config.auth_info.token = None;
        kube::Client::try_from(config).unwrap()
    };
    let r = send(&anonymous, Method::GET, PODS, json_ct, vec![]).await;
    assert_status(&r, 401, "Unauthorized", "Unauthorized");
    let wrong = m.client_with_token("not-the-token").await;
    let r = send(&wrong, Method::GET, "/api", json_ct, vec![]).await;
    assert_status(&r, 401, "Unauthorized", "Unauthorized");
    // Health is public, as in Kubernetes.
    assert_eq!(
        send(&anonymous, Method::GET, "/healthz", json_ct, vec![])
            .await
            .code,
        200
    );

    m.shutdown().await;
}

#[tokio::test]
async fn files_written_by_the_master_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let m = TestMaster::start().await;
    for f in [
        "kubeconfig.yaml",
        "node-token",
        "controller-manager.kubeconfig",
        "scheduler.kubeconfig",
        "tls/ca.key",
        "tls/server.key",
    ] {
        let mode = std::fs::metadata(m.dir.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f} must be readable by its owner only");
    }
    m.shutdown().await;
}

/// Service type changes both ways keep the allocations as Kubernetes does; a bad
/// `externalName`, session affinity timeout or `loadBalancerIP` is a 422 with
/// Kubernetes' message and field cause.
#[tokio::test]
async fn service_fields_validate_and_types_change_both_ways() {
    let m = TestMaster::start().await;
    let c = m.client().await;
    let svcs = "/api/v1/namespaces/default/services";
    let body = |v: Value| serde_json::to_vec(&v).unwrap();
    let r = send(
        &c,
        Method::POST,
        svcs,
        "application/json",
        body(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad"},
                    "spec": {"type": "ExternalName", "externalName": "no_such name"}}),
        ),
    )
    .await;
    assert_status(
        &r,
        422,
        "Invalid",
        "spec.externalName: Invalid value: \"no_such name\": a lowercase RFC 1123 subdomain",
    );
    assert_eq!(
        r.body["details"]["causes"][0]["field"], "spec.externalName",
        "{}",
        r.body
    );

    // A session affinity timeout out of range.
    let r = send(
        &c,
        Method::POST,
        svcs,
        "application/json",
        body(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sticky"},
                    "spec": {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}},
                             "ports": [{"port": 80}]}})),
    )
    .await;
    assert_status(
        &r,
        422,
        "Invalid",
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 86401: must be greater than 0 and less than 86400",
    );
    // A loadBalancerIP that is no address.
    let r = send(
        &c,
        Method::POST,
        svcs,
        "application/json",
        body(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"},
                    "spec": {"type": "LoadBalancer", "loadBalancerIP": "not-an-ip", "ports": [{"port": 80}]}})),
    )
    .await;
    assert_status(
        &r,
        422,
        "Invalid",
        "spec.loadBalancerIP: Invalid value: \"not-an-ip\": must be a valid IP address",
    );

    // ClusterIP -> ExternalName: the ClusterIP goes; and back: a new one is given.
    let r = send(
        &c,
        Method::POST,
        svcs,
        "application/json",
        body(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                    "spec": {"ports": [{"port": 80}]}}),
        ),
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert!(
        r.body["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10."))
    );
    let merge = "application/merge-patch+json";
    let r = send(
        &c,
        Method::PATCH,
        &format!("{svcs}/web"),
        merge,
        body(json!({"spec": {"type": "ExternalName", "externalName": "db.example.org", "clusterIP": null, "clusterIPs": null}})),
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert!(r.body["spec"]["clusterIP"].is_null(), "{}", r.body);
    let r = send(
        &c,
        Method::PATCH,
        &format!("{svcs}/web"),
        merge,
        body(json!({"spec": {"type": "NodePort", "externalName": null}})),
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert!(
        r.body["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.")),
        "{}",
        r.body
    );
    let np = r.body["spec"]["ports"][0]["nodePort"].as_i64().unwrap_or(0);
    assert!((30000..=32767).contains(&np), "{}", r.body);
}
