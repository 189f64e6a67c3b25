//! Who may do what, through the real kubectl: a user with a certificate from the
//! cluster CA is refused with kube-apiserver's words until a Role and RoleBinding let
//! it in; impersonation is for those allowed to impersonate; a user cannot grant more
//! than it holds.

use std::path::Path;
use std::time::Duration;

use tinykube_tests::{Kubectl, TestMaster, eventually};

/// A user made as the official "Certificate Signing Requests" tutorial makes one: an
/// openssl key and request, a CertificateSigningRequest applied with kubectl, approved
/// with `kubectl certificate approve`, the certificate read from its status; then a
/// kubeconfig for it made with kubectl's own `config` commands.
fn user_kubeconfig(m: &TestMaster, dir: &Path, user: &str, group: &str) -> Kubectl {
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("the command runs");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let f = |name: &str| dir.join(name).display().to_string();
    run(std::process::Command::new("openssl").args(["genrsa", "-out", &f("user.key"), "2048"]));
    run(std::process::Command::new("openssl").args([
        "req",
        "-new",
        "-key",
        &f("user.key"),
        "-out",
        &f("user.csr"),
        "-subj",
        &format!("/CN={user}/O={group}"),
    ]));
    let admin = m.kubectl();
    let request = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        std::fs::read(dir.join("user.csr")).unwrap(),
    );
    let csr = format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {user}\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client\n  expirationSeconds: 86400\n  usages:\n  - client auth\n"
    );
    assert_eq!(
        admin.ok_stdin(&["apply", "-f", "-"], &csr).trim(),
        format!("certificatesigningrequest.certificates.k8s.io/{user} created")
    );
    let pending = admin.ok(&["get", "csr", user]);
    assert!(
        pending.contains("kubernetes.io/kube-apiserver-client")
            && pending.contains("kubernetes-admin")
            && pending.contains("24h")
            && pending.contains("Pending"),
        "{pending}"
    );
    assert_eq!(
        admin.ok(&["certificate", "approve", user]).trim(),
        format!("certificatesigningrequest.certificates.k8s.io/{user} approved")
    );
    let issued = admin.ok(&["get", "csr", user]);
    assert!(issued.contains("Approved,Issued"), "{issued}");
    let cert = admin.ok(&["get", "csr", user, "-o", "jsonpath={.status.certificate}"]);
    let pem = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, cert.trim())
        .expect("the certificate is base64");
    std::fs::write(dir.join("user.crt"), &pem).unwrap();
    // Signed for the day the request asked, by the cluster CA.
    run(std::process::Command::new("openssl").args([
        "verify",
        "-CAfile",
        &m.dir
            .path()
            .join("tls")
            .join("ca.crt")
            .display()
            .to_string(),
        &f("user.crt"),
    ]));
    let der = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .unwrap()
        .unwrap();
    let left = tinykube_api::pki::not_after(&der).unwrap() - jiff::Timestamp::now().as_second();
    assert!((86_000..=86_400).contains(&left), "{left}");

    admin.as_user(
        dir,
        user,
        &[
            &format!("--client-certificate={}", f("user.crt")),
            &format!("--client-key={}", f("user.key")),
            "--embed-certs=true",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificate_requests_are_checked_approved_denied_and_signed() {
    let m = TestMaster::start().await;
    let admin = m.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let jane = user_kubeconfig(&m, dir.path(), "jane", "devs");
    let csr = |name: &str, request: &str, usages: &str| {
        format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {name}\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [{usages}]\n"
        )
    };
    // A request that is not PEM is refused whole, with the field that is wrong.
    let err = admin
        .run_stdin(
            &["create", "-f", "-"],
            &csr("bad", "bm90IHBlbQ==", "client auth"),
        )
        .stderr;
    assert!(
        err.contains("The CertificateSigningRequest \"bad\" is invalid: spec.request: Invalid value: []byte{0x6e, 0x6f, 0x74, 0x20, 0x70, 0x65, 0x6d}: PEM block type must be CERTIFICATE REQUEST"),
        "{err}"
    );
    let (status, body) = admin_post(&m, &csr("bad", "bm90IHBlbQ==", "client auth")).await;
    assert_eq!(status, 422);
    assert_eq!(body["reason"], "Invalid");
    assert_eq!(body["details"]["causes"][0]["field"], "spec.request");

    // Who asked is who sent it, whatever the body says; jane may ask but not approve.
    let request = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        std::fs::read(dir.path().join("user.csr")).unwrap(),
    );
    admin.ok(&[
        "create",
        "clusterrole",
        "csr-creator",
        "--verb=create,get",
        "--resource=certificatesigningrequests",
    ]);
    admin.ok(&[
        "create",
        "clusterrolebinding",
        "jane-asks",
        "--clusterrole=csr-creator",
        "--user=jane",
    ]);
    let mut body = csr("jane-again", &request, "client auth");
    body.push_str("  username: kubernetes-admin\n  groups: [system:masters]\n");
    let made = eventually(Duration::from_secs(10), async || {
        jane.run_stdin(&["create", "-f", "-"], &body)
            .ok
            .then_some(())
    })
    .await;
    assert!(made.is_some(), "jane could not create a request");
    assert_eq!(
        admin.ok(&[
            "get",
            "csr",
            "jane-again",
            "-o",
            "jsonpath={.spec.username} {.spec.groups}"
        ]),
        "jane [\"devs\",\"system:authenticated\"]"
    );
    let err = jane.fails(&["certificate", "approve", "jane-again"]);
    assert!(
        err.contains("certificatesigningrequests.certificates.k8s.io \"jane-again\" is forbidden"),
        "{err}"
    );
    admin.ok(&[
        "create",
        "clusterrolebinding",
        "jane-approves",
        "--clusterrole=system:certificates.k8s.io:kube-apiserver-client-approver",
        "--user=jane",
    ]);
    admin.ok(&[
        "create",
        "clusterrole",
        "csr-approval",
        "--verb=update",
        "--resource=certificatesigningrequests/approval",
    ]);
    admin.ok(&[
        "create",
        "clusterrolebinding",
        "jane-approval",
        "--clusterrole=csr-approval",
        "--user=jane",
    ]);
    let approved = eventually(Duration::from_secs(10), async || {
        jane.run(&["certificate", "deny", "jane-again"])
            .ok
            .then_some(())
    })
    .await;
    assert!(
        approved.is_some(),
        "the approver role did not let jane decide"
    );
    let denied = admin.ok(&["get", "csr", "jane-again"]);
    assert!(
        denied.contains("Denied") && !denied.contains("Issued"),
        "{denied}"
    );

    // A usage the signer does not give fails with its reason, and is never signed.
    admin.ok_stdin(
        &["create", "-f", "-"],
        &csr("server", &request, "client auth, server auth"),
    );
    admin.ok(&["certificate", "approve", "server"]);
    let failed = admin.ok(&[
        "get",
        "csr",
        "server",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Failed\")].message}",
    ]);
    assert_eq!(failed, "invalid usage for client certificate: server auth");
    m.shutdown().await;
}

/// POSTs a CertificateSigningRequest (YAML) as the admin: (status, body).
async fn admin_post(m: &TestMaster, yaml: &str) -> (u16, serde_json::Value) {
    let client = m.client().await;
    let obj: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    let req = http::Request::post("/apis/certificates.k8s.io/v1/certificatesigningrequests")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&obj).unwrap())
        .unwrap();
    match client.request::<serde_json::Value>(req).await {
        Ok(v) => (201, v),
        Err(kube::Error::Api(s)) => (s.code, serde_json::to_value(&s).unwrap()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_is_refused_until_a_role_binding_lets_it_in() {
    let m = TestMaster::start().await;
    let admin = m.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let jane = user_kubeconfig(&m, dir.path(), "jane", "devs");

    // Known, but allowed nothing yet: kube-apiserver's exact message.
    assert_eq!(
        jane.fails_out(&["auth", "can-i", "list", "pods"]).trim(),
        "no"
    );
    let whoami = jane.ok(&["auth", "whoami"]);
    assert!(
        whoami.contains("jane") && whoami.contains("[devs system:authenticated]"),
        "{whoami}"
    );
    let err = jane.fails(&["get", "pods"]);
    assert!(
        err.contains("Error from server (Forbidden): pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
        "{err}"
    );

    assert_eq!(
        admin
            .ok(&[
                "create",
                "role",
                "pod-reader",
                "--verb=get,list,watch",
                "--resource=pods"
            ])
            .trim(),
        "role.rbac.authorization.k8s.io/pod-reader created"
    );
    assert_eq!(
        admin
            .ok(&[
                "create",
                "rolebinding",
                "jane-reads-pods",
                "--role=pod-reader",
                "--user=jane"
            ])
            .trim(),
        "rolebinding.rbac.authorization.k8s.io/jane-reads-pods created"
    );
    let listed = eventually(Duration::from_secs(10), async || {
        jane.run(&["get", "pods"]).ok.then_some(())
    })
    .await;
    assert!(listed.is_some(), "jane could not list pods once bound");
    assert_eq!(jane.ok(&["auth", "can-i", "list", "pods"]).trim(), "yes");
    assert_eq!(
        jane.fails_out(&["auth", "can-i", "delete", "pods"]).trim(),
        "no"
    );
    assert_eq!(
        admin
            .ok(&["auth", "can-i", "list", "pods", "--as", "jane"])
            .trim(),
        "yes"
    );
    assert_eq!(
        admin
            .fails_out(&[
                "auth",
                "can-i",
                "list",
                "pods",
                "-n",
                "kube-system",
                "--as",
                "jane"
            ])
            .trim(),
        "no"
    );
    let rules = jane.ok(&["auth", "can-i", "--list"]);
    assert!(
        rules
            .lines()
            .any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "{rules}"
    );
    let table = admin.ok(&["get", "rolebindings", "-o", "wide"]);
    assert!(
        table.contains("Role/pod-reader") && table.contains("jane"),
        "{table}"
    );

    // Only what the role says, only where it is bound.
    let err = jane.fails(&["get", "secrets"]);
    assert!(
        err.contains("User \"jane\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\""),
        "{err}"
    );
    let err = jane.fails(&["get", "pods", "-n", "kube-system"]);
    assert!(err.contains("in the namespace \"kube-system\""), "{err}");
    let err = jane.fails(&["delete", "pod", "web"]);
    assert!(
        err.contains("pods \"web\" is forbidden: User \"jane\" cannot delete resource \"pods\""),
        "{err}"
    );

    // The admin may act as jane, and is then refused what she is refused.
    admin.ok(&["get", "pods", "--as", "jane"]);
    let err = admin.fails(&["get", "pods", "-n", "kube-system", "--as", "jane"]);
    assert!(
        err.contains("User \"jane\" cannot list resource \"pods\""),
        "{err}"
    );
    let err = admin.fails(&["get", "pods", "--as", "bob", "--as-group", "devs"]);
    assert!(err.contains("User \"bob\" cannot list"), "{err}");
    // Jane may not act as anyone.
    let err = jane.fails(&["get", "pods", "--as", "kubernetes-admin"]);
    assert!(
        err.contains("users \"kubernetes-admin\" is forbidden: User \"jane\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{err}"
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_cannot_grant_what_it_does_not_hold() {
    let m = TestMaster::start().await;
    let admin = m.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let jane = user_kubeconfig(&m, dir.path(), "jane", "devs");
    admin.ok(&[
        "create",
        "role",
        "binder",
        "--verb=create",
        "--resource=rolebindings",
    ]);
    admin.ok(&[
        "create",
        "role",
        "pod-reader",
        "--verb=get,list,watch",
        "--resource=pods",
    ]);
    admin.ok(&[
        "create",
        "rolebinding",
        "jane-binds",
        "--role=binder",
        "--user=jane",
    ]);
    admin.ok(&[
        "create",
        "rolebinding",
        "jane-reads",
        "--role=pod-reader",
        "--user=jane",
    ]);
    let ready = eventually(Duration::from_secs(10), async || {
        jane.run(&["get", "pods"]).ok.then_some(())
    })
    .await;
    assert!(ready.is_some());

    // What she holds she may pass on; cluster-admin she may not.
    jane.ok(&[
        "create",
        "rolebinding",
        "bob-reads",
        "--role=pod-reader",
        "--user=bob",
    ]);
    let err = jane.fails(&[
        "create",
        "rolebinding",
        "jane-is-admin",
        "--clusterrole=cluster-admin",
        "--user=jane",
    ]);
    assert!(
        err.contains("rolebindings.rbac.authorization.k8s.io \"jane-is-admin\" is forbidden: user \"jane\" (groups=[\"devs\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    // Nor a role with more than she has.
    let err = jane.fails(&[
        "create",
        "clusterrolebinding",
        "jane-everywhere",
        "--clusterrole=cluster-admin",
        "--user=jane",
    ]);
    assert!(
        err.contains("cannot create resource \"clusterrolebindings\""),
        "{err}"
    );
    assert!(
        admin
            .fails(&["get", "rolebinding", "jane-is-admin"])
            .contains("NotFound")
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_roles_aggregate_and_bind() {
    let m = TestMaster::builder()
        .control_plane(Default::default())
        .start()
        .await;
    let admin = m.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let jane = user_kubeconfig(&m, dir.path(), "jane", "devs");
    // `view` gathers the rules of system:aggregate-to-view and the metrics reader.
    let gathered = eventually(Duration::from_secs(10), async || {
        let rules = admin.ok(&["get", "clusterrole", "view", "-o", "jsonpath={.rules}"]);
        (rules.contains("deployments") && rules.contains("metrics.k8s.io")).then_some(())
    })
    .await;
    assert!(gathered.is_some(), "view did not gather its rules");
    for role in ["cluster-admin", "admin", "edit", "view", "system:discovery"] {
        let annotation = admin.ok(&[
            "get",
            "clusterrole",
            role,
            "-o",
            "jsonpath={.metadata.annotations.rbac\\.authorization\\.kubernetes\\.io/autoupdate}",
        ]);
        assert_eq!(annotation, "true", "{role}");
    }
    admin.ok(&["create", "namespace", "team"]);
    admin.ok(&[
        "create",
        "rolebinding",
        "jane-views",
        "-n",
        "team",
        "--clusterrole=view",
        "--user=jane",
    ]);
    let ok = eventually(Duration::from_secs(10), async || {
        jane.run(&["get", "deployments", "-n", "team"])
            .ok
            .then_some(())
    })
    .await;
    assert!(ok.is_some(), "view did not let jane list deployments");
    let err = jane.fails(&[
        "create",
        "deployment",
        "web",
        "-n",
        "team",
        "--image=toolbox",
    ]);
    assert!(
        err.contains(
            "cannot create resource \"deployments\" in API group \"apps\" in the namespace \"team\""
        ),
        "{err}"
    );

    // kubectl auth reconcile: creates what is missing, adds missing rules and
    // subjects, and keeps extra ones unless asked to remove them.
    let policy = |verbs: &str, subjects: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: deployer\n  namespace: team\nrules:\n- apiGroups: [apps]\n  resources: [deployments]\n  verbs: [{verbs}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: deployers\n  namespace: team\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: deployer\nsubjects: [{subjects}]\n"
        )
    };
    let jane_subject = "{kind: User, name: jane, apiGroup: rbac.authorization.k8s.io}";
    let out = admin.ok_stdin(
        &["auth", "reconcile", "-f", "-"],
        &policy("get", jane_subject),
    );
    assert!(
        out.contains("role.rbac.authorization.k8s.io/deployer reconciled")
            && out.contains("rolebinding.rbac.authorization.k8s.io/deployers reconciled"),
        "{out}"
    );
    let bob_subject = "{kind: User, name: bob, apiGroup: rbac.authorization.k8s.io}";
    let in_team = |kind: &str, name: &str, path: &str| {
        admin.ok(&[
            "get",
            kind,
            name,
            "-n",
            "team",
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    let role_verbs = || in_team("role", "deployer", "{.rules[*].verbs}");
    let bound_users = || in_team("rolebinding", "deployers", "{.subjects[*].name}");
    admin.ok_stdin(
        &["auth", "reconcile", "-f", "-"],
        &policy("create", bob_subject),
    );
    let verbs = role_verbs();
    assert!(
        verbs.contains("get") && verbs.contains("create"),
        "rules are added: {verbs}"
    );
    let users = bound_users();
    assert_eq!(users, "jane bob", "subjects are added");
    admin.ok_stdin(
        &[
            "auth",
            "reconcile",
            "-f",
            "-",
            "--remove-extra-permissions",
            "--remove-extra-subjects",
        ],
        &policy("create", bob_subject),
    );
    let verbs = role_verbs();
    assert_eq!(verbs, r#"["create"]"#, "extra rules removed");
    let users = bound_users();
    assert_eq!(users, "bob", "extra subjects removed");
    assert!(
        jane.ok(&["auth", "can-i", "get", "deployments", "-n", "team"])
            .trim()
            == "yes",
        "view still lets jane get deployments"
    );
    m.shutdown().await;
}

/// `tinykube ctl` with `kubeconfig`: (success, stdout, stderr).
fn ctl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(tinykube_tests::tinykube_bin().expect("binary built"))
        .arg("ctl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("tinykube runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctl_grants_and_checks_access() {
    let m = TestMaster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let jane = user_kubeconfig(&m, dir.path(), "jane", "devs").kubeconfig;
    let admin = m.kubeconfig();
    let (ok, out, err) = ctl(
        admin,
        &[
            "create",
            "role",
            "pod-reader",
            "--verb=get,list",
            "--resource=pods,deployments.apps",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "role.rbac.authorization.k8s.io/pod-reader created"
    );
    let (ok, out, err) = ctl(
        admin,
        &[
            "create",
            "rolebinding",
            "jane-reads",
            "--role=pod-reader",
            "--user=jane",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "rolebinding.rbac.authorization.k8s.io/jane-reads created"
    );
    let yes = eventually(Duration::from_secs(10), async || {
        let (ok, out, _) = ctl(&jane, &["auth", "can-i", "list", "deployments"]);
        (ok && out.trim() == "yes").then_some(())
    })
    .await;
    assert!(yes.is_some(), "jane may list deployments once bound");
    let (ok, out, _) = ctl(&jane, &["auth", "can-i", "delete", "pods"]);
    assert!(!ok, "a no exits non-zero");
    assert_eq!(out.trim(), "no");
    let (ok, out, _) = ctl(&jane, &["auth", "whoami"]);
    assert!(ok && out.contains("Username    jane"), "{out}");
    let (ok, _, err) = ctl(admin, &["get", "pods", "-n", "kube-system", "--as", "jane"]);
    assert!(!ok);
    assert!(
        err.contains("pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"kube-system\""),
        "{err}"
    );
    let (ok, out, err) = ctl(admin, &["auth", "can-i", "list", "pods", "--as", "jane"]);
    assert!(ok && out.trim() == "yes", "{out}{err}");

    let inspect = |args: &[&str]| ctl(admin, &[&["inspect", "access"], args].concat());
    // inspect access: the grant with its binding, role and rule...
    let (ok, out, err) = inspect(&["jane", "list", "pods"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("jane may list pods in namespace \"default\": yes\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "allowed by RoleBinding \"jane-reads/default\" of Role \"pod-reader\" to User \"jane\""
        ),
        "{out}"
    );
    assert!(
        out.contains(r#"the rule: {APIGroups:[""], Resources:["pods"], Verbs:["get" "list"]}"#),
        "{out}"
    );
    // ... and, refused, the closest rules with what missed: the verb, the namespace,
    // the group (the same answers as the authorizer's, from the same index).
    let (ok, out, err) = inspect(&["jane", "delete", "pods"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("jane may not delete pods in namespace \"default\": no"),
        "{out}"
    );
    assert!(
        out.contains(r#"verb "delete" is not in the rule's verbs ["get" "list"]"#),
        "{out}"
    );
    let (_, out, _) = inspect(&["jane", "list", "pods", "-n", "kube-system"]);
    assert!(
        out.contains(
            r#"the RoleBinding grants in namespace "default", the request is in "kube-system""#
        ),
        "{out}"
    );
    let (_, out, _) = inspect(&["jane", "list", "deployments.apps", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(v["decidedBy"], "RBAC");
    // A group's grant names the group; a service account is its own subject.
    let (_, out, _) = inspect(&["sa:default:default", "create", "selfsubjectreviews"]);
    assert!(
        out.contains(r#"allowed by ClusterRoleBinding "system:basic-user" of ClusterRole "system:basic-user" to Group "system:authenticated""#),
        "{out}"
    );
    let (_, out, _) = inspect(&["sa:default:default", "list", "secrets"]);
    assert!(
        out.starts_with("system:serviceaccount:default:default may not list secrets"),
        "{out}"
    );
    // The decision agrees with the review kubectl asks.
    let sar = m.kubectl().fails_out(&[
        "auth",
        "can-i",
        "list",
        "secrets",
        "--as",
        "system:serviceaccount:default:default",
    ]);
    assert_eq!(sar.trim(), "no");
    // A SubjectAccessReview gives RBAC's source as its reason, as kube-apiserver does,
    // and the same answer for a refusal.
    let review = |verb: &str| {
        let body = serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": "jane", "resourceAttributes": {"verb": verb, "resource": "pods", "namespace": "default"}}});
        let out = m
            .kubectl()
            .ok_stdin(&["create", "-f", "-", "-o", "json"], &body.to_string());
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["status"].clone()
    };
    let allowed = review("list");
    assert_eq!(
        allowed["reason"],
        r#"RBAC: allowed by RoleBinding "jane-reads/default" of Role "pod-reader" to User "jane""#,
        "{allowed}"
    );
    let refused = review("delete");
    assert_eq!(refused["allowed"], false, "{refused}");
    assert!(refused.get("reason").is_none(), "{refused}");
    // Bad input: one readable line, non-zero.
    let (ok, _, err) = inspect(&["sa:default", "list", "pods"]);
    assert!(!ok);
    assert!(
        err.contains("a service account is sa:NAMESPACE:NAME"),
        "{err}"
    );
    // Only those allowed the path may see another's rights.
    let (ok, _, err) = ctl(&jane, &["inspect", "access", "jane", "list", "pods"]);
    assert!(!ok);
    assert!(
        err.contains(r#"forbidden: User "jane" cannot post path "/tinykube/v1/access""#),
        "{err}"
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_cannot_be_widened_by_replace_or_patch() {
    let m = TestMaster::start().await;
    let admin = m.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let jane = user_kubeconfig(&m, dir.path(), "jane", "devs");
    admin.ok(&[
        "create",
        "role",
        "roles-editor",
        "--verb=get,update,patch",
        "--resource=roles",
    ]);
    admin.ok(&["create", "role", "small", "--verb=get", "--resource=pods"]);
    admin.ok(&[
        "create",
        "rolebinding",
        "jane-edits-roles",
        "--role=roles-editor",
        "--user=jane",
    ]);
    let ready = eventually(Duration::from_secs(10), async || {
        jane.run(&["get", "role", "small"]).ok.then_some(())
    })
    .await;
    assert!(ready.is_some());
    let patch = r#"{"rules":[{"verbs":["*"],"apiGroups":["*"],"resources":["*"]}]}"#;
    let err = jane.fails(&["patch", "role", "small", "--type=merge", "-p", patch]);
    assert!(
        err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    let mut role: serde_json::Value =
        serde_json::from_str(&jane.ok(&["get", "role", "small", "-o", "json"])).unwrap();
    role["rules"] = serde_json::json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]);
    let r = jane.run_stdin(&["replace", "-f", "-"], &role.to_string());
    assert!(!r.ok, "{}", r.stdout);
    let err = r.stderr;
    assert!(
        err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    let rules = admin.ok(&["get", "role", "small", "-o", "jsonpath={.rules[0].verbs}"]);
    assert_eq!(rules, "[\"get\"]");
    m.shutdown().await;
}
