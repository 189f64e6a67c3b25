//! Who may do what, through the real kubectl: a user with a certificate from the
//! cluster CA is refused with kube-apiserver's words until a Role and RoleBinding let
//! it in; impersonation is for those allowed to impersonate; a user cannot grant more
//! than it holds.

use std::path::Path;
use std::time::Duration;

use tinykube_tests::{Kubectl, TestMaster, eventually};

/// A key and a certificate for `user` in `group`, signed by the cluster CA with
/// openssl, and a kubeconfig for them made with kubectl's own `config` commands.
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
    std::fs::write(dir.join("ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    run(std::process::Command::new("openssl").args([
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &f("user.key"),
        "-out",
        &f("user.csr"),
        "-subj",
        &format!("/CN={user}/O={group}"),
    ]));
    let tls = m.dir.path().join("tls");
    run(std::process::Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &f("user.csr"),
        "-CA",
        &tls.join("ca.crt").display().to_string(),
        "-CAkey",
        &tls.join("ca.key").display().to_string(),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &f("ext"),
        "-out",
        &f("user.crt"),
    ]));
    let kubeconfig = dir.join("kubeconfig");
    std::fs::copy(m.kubeconfig(), &kubeconfig).unwrap();
    let k = Kubectl {
        kubeconfig,
        home: dir.to_path_buf(),
    };
    k.ok(&[
        "config",
        "set-credentials",
        user,
        &format!("--client-certificate={}", f("user.crt")),
        &format!("--client-key={}", f("user.key")),
        "--embed-certs=true",
    ]);
    k.ok(&[
        "config",
        "set-context",
        user,
        "--cluster=tinykube",
        &format!("--user={user}"),
    ]);
    k.ok(&["config", "use-context", user]);
    k
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
