//! `tinykube ctl`, the project's own CLI, against an in-process master: tables like
//! kubectl's, every output format, apply from files, directories and stdin, the
//! imperative verbs, and one-line errors with a non-zero exit.

use std::io::Write;
use std::process::{Command, Stdio};

use tinykube_tests::{TestMaster, tinykube_bin};

struct Ctl {
    kubeconfig: std::path::PathBuf,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Ctl {
    fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut child = Command::new(tinykube_bin().expect("binary built"))
            .arg("ctl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run_with(args, None);
        assert!(o.ok, "ctl {} failed: {}", args.join(" "), o.stderr);
        o.stdout
    }

    /// Fails, with exactly one line on stderr.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run_with(args, None);
        assert!(!o.ok, "ctl {} should fail", args.join(" "));
        assert_eq!(
            o.stderr.trim().lines().count(),
            1,
            "one readable line: {:?}",
            o.stderr
        );
        o.stderr
    }
}

fn data(name: &str) -> String {
    format!("{}/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctl_covers_the_everyday_verbs() {
    let m = TestMaster::start().await;
    let ctl = Ctl {
        kubeconfig: m.kubeconfig().to_path_buf(),
    };

    let ns = ctl.ok(&["get", "namespaces"]);
    assert!(ns.starts_with("NAME"), "{ns}");
    assert!(
        ns.lines()
            .any(|l| l.starts_with("kube-system") && l.contains("Active"))
    );

    assert_eq!(
        ctl.ok(&["apply", "-f", &data("nginx-deployment.yaml")])
            .trim(),
        "deployment.apps/nginx-deployment created"
    );
    assert_eq!(
        ctl.ok(&["apply", "-f", &data("nginx-deployment.yaml")])
            .trim(),
        "deployment.apps/nginx-deployment unchanged"
    );
    let multi = ctl.ok(&["apply", "-f", &data("labelled-pods.yaml")]);
    assert_eq!(multi.lines().count(), 3, "{multi}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(data("my-service.yaml"), dir.path().join("svc.yaml")).unwrap();
    assert_eq!(
        ctl.ok(&["apply", "-f", dir.path().to_str().unwrap()])
            .trim(),
        "service/my-service created"
    );
    let stdin_cm =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: \"1\"\n";
    let o = ctl.run_with(&["apply", "-f", "-"], Some(stdin_cm));
    assert!(
        o.ok && o.stdout.contains("configmap/settings created"),
        "{}",
        o.stderr
    );

    let wide = ctl.ok(&["get", "deploy", "-o", "wide"]);
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    assert!(
        ctl.ok(&["get", "deploy", "nginx-deployment", "-o", "yaml"])
            .contains("image: nginx:1.14.2")
    );
    let json: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["get", "pods", "-o", "json"])).unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 3);
    assert_eq!(
        ctl.ok(&["get", "pods", "-l", "tier=front", "-o", "name"])
            .trim(),
        "pod/front-1"
    );
    assert!(
        ctl.ok(&["get", "svc", "-A"])
            .lines()
            .next()
            .unwrap()
            .starts_with("NAMESPACE")
    );

    assert_eq!(
        ctl.ok(&[
            "create",
            "deployment",
            "server",
            "--image=nginx",
            "--replicas=2"
        ])
        .trim(),
        "deployment.apps/server created"
    );
    assert_eq!(
        ctl.ok(&["scale", "deployment/server", "--replicas=6"])
            .trim(),
        "deployment.apps/server scaled"
    );
    assert!(ctl.ok(&["get", "deploy", "server"]).contains("0/6"));
    assert_eq!(
        ctl.ok(&[
            "expose",
            "deployment",
            "server",
            "--port=80",
            "--type=NodePort"
        ])
        .trim(),
        "service/server exposed"
    );
    assert_eq!(
        ctl.ok(&[
            "create",
            "service",
            "nodeport",
            "fixed",
            "--tcp=80:8080",
            "--node-port=30081"
        ])
        .trim(),
        "service/fixed created"
    );
    let err = ctl.fails(&[
        "create",
        "service",
        "nodeport",
        "clash",
        "--tcp=80:8080",
        "--node-port=30081",
    ]);
    assert!(err.contains("provided port is already allocated"), "{err}");
    ctl.ok(&[
        "create",
        "service",
        "clusterip",
        "internal",
        "--tcp=8080:80",
    ]);
    assert_eq!(
        ctl.ok(&["label", "deploy", "server", "env=prod"]).trim(),
        "deployment.apps/server labeled"
    );
    assert_eq!(
        ctl.ok(&["get", "deploy", "-l", "env=prod", "-o", "name"])
            .trim(),
        "deployment.apps/server"
    );

    ctl.ok(&["apply", "-f", &data("worker-node.yaml")]);
    assert_eq!(
        ctl.ok(&["cordon", "worker1"]).trim(),
        "node/worker1 cordoned"
    );
    assert!(
        ctl.ok(&["get", "nodes"])
            .contains("Ready,SchedulingDisabled")
    );
    assert_eq!(
        ctl.ok(&["uncordon", "worker1"]).trim(),
        "node/worker1 uncordoned"
    );
    assert!(
        ctl.ok(&["describe", "node", "worker1"])
            .contains("Name:         worker1")
    );

    assert_eq!(
        ctl.ok(&["delete", "deployment", "server"]).trim(),
        "deployment.apps \"server\" deleted"
    );
    assert!(
        ctl.fails(&["get", "deploy", "server"])
            .contains("Error from server (NotFound): deployments \"server\" not found")
    );
    assert!(
        ctl.fails(&["get", "widgets"])
            .contains("the server doesn't have a resource type \"widgets\"")
    );
    assert!(
        ctl.fails(&["apply", "-f", "/nonexistent.yaml"])
            .contains("does not exist")
    );
    let bad = ctl.run_with(&["apply", "-f", "-"], Some("kind: [oops"));
    assert!(
        !bad.ok && bad.stderr.trim().lines().count() == 1,
        "{}",
        bad.stderr
    );
    let none = Ctl {
        kubeconfig: dir.path().join("missing-kubeconfig"),
    };
    assert!(
        none.fails(&["get", "pods"])
            .contains("cannot read kubeconfig")
    );
    m.shutdown().await;
}

fn first_web_pod(ctl: &Ctl) -> String {
    ctl.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ])
    .trim()
    .to_string()
}

/// The verbs that need running pods and nodes, on a local cluster: version, run, logs,
/// exec, rollout status/history/undo, taint, drain, and a watch with event types; with
/// kubectl's output and one-line errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drives_pods_and_nodes_on_a_cluster() {
    let cluster = tinykube_tests::lab::TestLab::start(2).await;
    let ctl = Ctl {
        kubeconfig: cluster.lab().kubeconfig().to_path_buf(),
    };
    let w1 = cluster.lab().state.nodes[1].name.clone();

    let v = ctl.ok(&["version"]);
    assert!(
        v.contains("Client Version: v1.33") && v.contains("Server Version: v1.33"),
        "{v}"
    );

    // run: kubectl's pod, or its manifest with --dry-run=client.
    let dry = ctl.ok(&[
        "run",
        "x",
        "--image=tinykube.local/toolbox",
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    assert!(dry.contains("kind: Pod") && dry.contains("run: x"), "{dry}");
    assert!(
        ctl.run_with(&["get", "pod", "x"], None)
            .stderr
            .contains("not found")
    );
    let made = ctl.ok(&[
        "run",
        "one",
        "--image=tinykube.local/toolbox",
        "--restart=Never",
        "--",
        "env",
    ]);
    assert_eq!(made.trim(), "pod/one created");

    // A deployment to work with.
    let web = |value: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - name: web\n        image: tinykube.local/toolbox\n        imagePullPolicy: IfNotPresent\n        env: [{{name: V, value: \"{value}\"}}]\n"
        )
    };
    let apply = |text: String| {
        let o = ctl.run_with(&["apply", "-f", "-"], Some(&text));
        assert!(o.ok, "{}", o.stderr);
    };
    apply(web("1"));
    let status = ctl.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert!(
        status
            .trim_end()
            .ends_with("deployment \"web\" successfully rolled out"),
        "{status}"
    );

    // logs, by deployment and by pod, --tail; a bad container is one line.
    let logs = ctl.ok(&["logs", "deployment/web"]);
    assert!(logs.contains("serving on :8080"), "{logs}");
    let pod = first_web_pod(&ctl);
    assert_eq!(ctl.ok(&["logs", &pod, "--tail=1"]).lines().count(), 1);
    let e = ctl.fails(&["logs", &pod, "-c", "nope"]);
    assert!(e.contains("container nope is not valid"), "{e}");

    // exec: output, stdin, and the command's exit code.
    let env = ctl.ok(&["exec", &pod, "--", "/tinykube", "toolbox", "env"]);
    assert!(env.contains("V=1"), "{env}");
    let o = ctl.run_with(
        &[
            "exec",
            "-i",
            &pod,
            "--",
            "/tinykube",
            "toolbox",
            "cat",
            "/dev/stdin",
        ],
        Some("through stdin\n"),
    );
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(o.stdout, "through stdin\n");
    let code = Command::new(tinykube_bin().unwrap())
        .args([
            "ctl",
            "exec",
            &pod,
            "--",
            "/tinykube",
            "toolbox",
            "exit",
            "4",
        ])
        .env("KUBECONFIG", &ctl.kubeconfig)
        .output()
        .unwrap();
    assert_eq!(code.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&code.stderr).contains("command terminated with exit code 4"));

    // rollout: a second revision, the history, and back to the first.
    apply(web("2"));
    ctl.ok(&["rollout", "status", "deployment", "web", "--timeout=90s"]);
    let history = ctl.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains("REVISION  CHANGE-CAUSE"), "{history}");
    assert_eq!(
        history.lines().filter(|l| l.ends_with("<none>")).count(),
        2,
        "{history}"
    );
    assert_eq!(
        ctl.ok(&["rollout", "undo", "deployment/web"]).trim(),
        "deployment.apps/web rolled back"
    );
    ctl.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    // The old revision's pods may still be terminating: ask until a current one answers.
    let mut env = String::new();
    for _ in 0..60 {
        let pod = first_web_pod(&ctl);
        let o = ctl.run_with(&["exec", &pod, "--", "/tinykube", "toolbox", "env"], None);
        env = format!("{}{}", o.stdout, o.stderr);
        if o.ok && env.contains("V=1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(env.contains("V=1"), "back to revision 1's template: {env}");
    let e = ctl.fails(&["rollout", "undo", "deployment/web", "--to-revision=9"]);
    assert!(e.contains("unable to find specified revision 9"), "{e}");

    // taint: add, refuse a duplicate without --overwrite, remove, refuse a missing one.
    let t = "dedicated=course:NoSchedule";
    assert_eq!(
        ctl.ok(&["taint", "nodes", &w1, t]).trim(),
        format!("node/{w1} tainted")
    );
    let e = ctl.fails(&["taint", "nodes", &w1, t]);
    assert!(e.contains("--overwrite is false"), "{e}");
    let node = ctl.ok(&["get", "node", &w1, "-o", "jsonpath={.spec.taints[*].key}"]);
    assert!(node.contains("dedicated"), "{node}");
    assert_eq!(
        ctl.ok(&["taint", "nodes", &w1, "dedicated:NoSchedule-"])
            .trim(),
        format!("node/{w1} untainted")
    );
    let e = ctl.fails(&["taint", "nodes", &w1, "dedicated:NoSchedule-"]);
    assert!(e.contains("not found"), "{e}");

    // A watch with event types, while the deployment scales.
    let mut watch = Command::new(tinykube_bin().unwrap())
        .args([
            "ctl",
            "get",
            "pods",
            "-l",
            "app=web",
            "-w",
            "--output-watch-events",
        ])
        .env("KUBECONFIG", &ctl.kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    ctl.ok(&["scale", "deployment", "web", "--replicas=3"]);
    ctl.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let _ = watch.kill();
    let seen = String::from_utf8_lossy(&watch.wait_with_output().unwrap().stdout).into_owned();
    assert!(seen.starts_with("EVENT"), "{seen}");
    assert!(
        seen.lines().filter(|l| l.starts_with("ADDED")).count() >= 3,
        "{seen}"
    );
    assert!(seen.lines().any(|l| l.starts_with("MODIFIED")), "{seen}");

    // drain: a pod no controller manages stops it without --force; with it, the node's
    // pods are evicted (the deployment's come back elsewhere) and the node is cordoned.
    apply(format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: bare}}\nspec:\n  nodeName: {w1}\n  containers:\n  - name: c\n    image: tinykube.local/toolbox\n    imagePullPolicy: IfNotPresent\n"
    ));
    let e = ctl.fails(&[
        "drain",
        &w1,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
    ]);
    assert!(
        e.contains(
            "cannot delete Pods that declare no controller (use --force to override): default/bare"
        ),
        "{e}"
    );
    let drained = ctl.ok(&[
        "drain",
        &w1,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--timeout=120s",
    ]);
    assert!(drained.contains("evicting pod default/bare"), "{drained}");
    assert!(drained.contains("pod/bare evicted"), "{drained}");
    assert!(
        drained.trim_end().ends_with(&format!("node/{w1} drained")),
        "{drained}"
    );
    let on_w1 = ctl.ok(&["get", "pods", "-o", "wide", "-l", "app=web"]);
    assert!(!on_w1.contains(&w1), "no web pod left on {w1}: {on_w1}");
    let unschedulable = ctl.ok(&["get", "node", &w1, "-o", "jsonpath={.spec.unschedulable}"]);
    assert_eq!(unschedulable.trim(), "true");
    cluster.down().await;
}
