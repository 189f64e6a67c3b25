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
