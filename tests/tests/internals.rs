//! End-to-end tests of the internals made visible (root, a local cluster with two
//! workers): `tinykube ctl inspect pod` shows a two-container pod sharing the pause
//! container's net/ipc/uts namespaces and not its pid/mnt ones, with its veth a port of
//! `cni0`; `inspect service` counts the connections each endpoint got; `trace` names
//! the overlay and the peer, and `--probe` moves the counters on both nodes;
//! `kubectl top` reads the metrics API fed by the kubelets' `/stats/summary`; bad
//! input is one line and a non-zero exit.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tinykube_tests::lab::TestLab;
use tinykube_tests::{eventually, tinykube_bin};

/// `count` requests to `url`, one connection each, from the network namespace at path
/// `netns`; the answers.
fn fetch(netns: &str, url: &str, count: u32) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .arg(tinykube_bin().unwrap())
        .args(["toolbox", "fetch", url, "--interval-ms", "0", "--count"])
        .arg(count.to_string())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Ctl {
    kubeconfig: std::path::PathBuf,
}

impl Ctl {
    /// `tinykube ctl` on lab `t`, and the names of its two workers.
    fn with_workers(t: &TestLab) -> (Self, String, String) {
        let nodes = &t.lab().state.nodes;
        let ctl = Self {
            kubeconfig: t.lab().kubeconfig().to_path_buf(),
        };
        (ctl, nodes[1].name.clone(), nodes[2].name.clone())
    }

    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(tinykube_bin().unwrap())
            .arg("ctl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "ctl {} failed: {err}", args.join(" "));
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("json")
    }

    /// Fails with one readable line on stderr.
    fn fails(&self, args: &[&str]) -> String {
        let (ok, _, err) = self.run(args);
        assert!(!ok, "ctl {} should fail", args.join(" "));
        assert_eq!(err.trim().lines().count(), 1, "one line: {err:?}");
        err
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inspect_trace_and_top_show_what_the_cluster_is_made_of() {
    tinykube_tests::lab::require_root();
    let t = TestLab::start(2).await;
    let kubectl = t.kubectl();
    let (ctl, w1, w2) = Ctl::with_workers(&t);
    let manifest = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: two, labels: {{app: two}}}}
spec:
  nodeName: {w1}
  containers:
  - {{name: app, image: tinykube.local/toolbox}}
  - name: side
    image: tinykube.local/toolbox
    command: [/tinykube, toolbox, alloc, '64']
---
apiVersion: v1
kind: Pod
metadata: {{name: server, labels: {{app: server}}}}
spec:
  nodeName: {w2}
  containers: [{{name: s, image: tinykube.local/toolbox}}]
---
apiVersion: v1
kind: Service
metadata: {{name: server}}
spec:
  selector: {{app: server}}
  ports: [{{port: 80, targetPort: 8080}}]
"
    );
    kubectl.ok_stdin(&["apply", "-f", "-"], &manifest);
    kubectl.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/two",
        "pod/server",
        "--timeout=90s",
    ]);

    // inspect pod: shared net/ipc/uts, own pid/mnt, the veth on cni0.
    let v = ctl.json(&["inspect", "pod", "two"]);
    let pause = &v["sandbox"]["namespaces"];
    let containers = v["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2, "{v}");
    for c in containers {
        for k in ["net", "ipc", "uts"] {
            assert_eq!(
                c["namespaces"][k]["inode"], pause[k],
                "{k} of {}",
                c["name"]
            );
            assert!(pause[k].as_u64().is_some());
        }
        for k in ["pid", "mnt"] {
            assert_ne!(
                c["namespaces"][k]["inode"], pause[k],
                "{k} of {}",
                c["name"]
            );
            assert!(c["namespaces"][k]["inode"].as_u64().is_some());
        }
        assert!(c["pid"].as_u64().is_some_and(|p| p > 1), "{c}");
        assert!(
            c["logs"][0].as_str().is_some_and(|l| l.ends_with("0.log")),
            "{c}"
        );
    }
    assert_eq!(v["veth"]["bridge"]["name"], "cni0", "{v}");
    assert_eq!(v["pod"]["node"], w1.as_str());
    assert_eq!(v["eth0"]["peerIndex"], v["veth"]["index"], "{v}");
    let node = ctl.json(&["inspect", "node", &w1]);
    let port_names: Vec<&str> = node["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        port_names.contains(&v["veth"]["name"].as_str().unwrap()),
        "{port_names:?}"
    );
    assert_eq!(node["overlay"]["backend"], "udp");
    assert_eq!(
        node["overlay"]["peers"].as_array().unwrap().len(),
        2,
        "{node}"
    );
    let text = ctl.ok(&["inspect", "pod", "two"]);
    assert!(text.contains("a port of bridge cni0"), "{text}");

    // inspect service after 60 connections entering on worker-1.
    let cluster_ip = kubectl.ok(&["get", "svc", "server", "-o", "jsonpath={.spec.clusterIP}"]);
    let ns1 = format!("/var/run/netns/{}", t.lab().node(&w1).unwrap().netns);
    let url = format!("http://{cluster_ip}/");
    let answered = eventually(Duration::from_secs(20), async || {
        fetch(&ns1, &url, 1).contains("pod=server").then_some(())
    })
    .await;
    assert!(answered.is_some(), "the service answers on {w1}");
    let count = |v: &Value| -> u64 {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == w1.as_str())
            .unwrap()["rules"]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["connections"].as_u64().unwrap())
            .sum()
    };
    let before = count(&ctl.json(&["inspect", "service", "server"]));
    let out = fetch(&ns1, &url, 60);
    assert_eq!(out.matches("pod=server").count(), 60, "{out}");
    let svc = ctl.json(&["inspect", "service", "server"]);
    assert_eq!(count(&svc) - before, 60, "{svc}");
    assert_eq!(svc["endpoints"][0]["node"], w2.as_str());
    let svc_text = ctl.ok(&["inspect", "service", "server"]);
    assert!(
        svc_text.contains("KUBE-SVC-") && svc_text.contains("DNAT"),
        "{svc_text}"
    );

    // trace from worker-1 to the service whose only endpoint is on worker-2.
    let w2_ip = t.lab().node(&w2).unwrap().ip.to_string();
    let tr = ctl.ok(&["trace", "two", "server"]);
    // kubectl's KIND/NAME forms name the same objects.
    assert_eq!(ctl.ok(&["trace", "pod/two", "svc/server"]), tr);
    let e = ctl.fails(&["trace", "two", "pod/server-nope"]);
    assert!(e.contains("no pod named \"server-nope\""), "{e}");
    assert!(tr.contains("flannel0"), "{tr}");
    assert!(tr.contains(&format!("{w2_ip}:8285")), "{tr}");
    assert!(tr.contains(&format!("node {w2}")), "{tr}");
    let probed = ctl.ok(&["trace", "two", "server", "--probe"]);
    let moved = |needle: &str| {
        probed
            .lines()
            .any(|l| l.contains(needle) && l.contains("[+") && !l.contains("did not move"))
    };
    assert!(
        moved("overlay flannel0"),
        "{w1}'s overlay counter: {probed}"
    );
    assert!(
        moved("takes it off the wire"),
        "{w2}'s overlay counter: {probed}"
    );
    assert!(moved("pod default/server eth0"), "{probed}");
    assert!(probed.contains("connected"), "{probed}");

    // kubectl top: the 64 MiB container, within 10 %, and every node.
    let top = eventually(Duration::from_secs(30), async || {
        let r = kubectl.run(&["top", "pods", "--containers", "--no-headers"]);
        let line = r
            .stdout
            .lines()
            .find(|l| l.contains("two") && l.contains("side"))?
            .to_string();
        Some(line)
    })
    .await
    .expect("kubectl top pods lists the pod's containers");
    let mib: f64 = top
        .split_whitespace()
        .nth(3)
        .and_then(|m| m.strip_suffix("Mi"))
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("memory column in {top:?}"));
    assert!(
        (57.6..=70.4).contains(&mib),
        "alloc 64 shows {mib} MiB: {top}"
    );
    let nodes = kubectl.ok(&["top", "nodes", "--no-headers"]);
    for n in &t.lab().state.nodes {
        assert!(
            nodes.lines().any(|l| l.starts_with(&n.name)),
            "{}: {nodes}",
            n.name
        );
    }

    // Bad input: one line and a non-zero exit.
    let e = ctl.fails(&["inspect", "pod", "nope"]);
    assert!(e.contains("NotFound") && e.contains("\"nope\""), "{e}");
    kubectl.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: waiting}\nspec:\n  nodeSelector: {nowhere: 'true'}\n  containers: [{name: c, image: tinykube.local/toolbox}]\n",
    );
    let e = ctl.fails(&["inspect", "pod", "waiting"]);
    assert!(e.contains("not running yet"), "{e}");
    let e = ctl.fails(&["trace", "two", "203.0.113.9"]);
    assert!(e.contains("outside the cluster"), "{e}");
    let e = ctl.fails(&["inspect", "node", "no-such-node"]);
    assert!(e.contains("NotFound"), "{e}");
    t.down().await;
}

/// The Python that runs the browser driver (scripts/test makes a venv with the official
/// client, which brings websocket-client).
fn python() -> String {
    std::env::var("TINYKUBE_PYTHON").unwrap_or_else(|_| {
        panic!("TINYKUBE_PYTHON is not set: run the tests with scripts/test, which sets it")
    })
}

/// Kills the dashboard server when the test ends, however it ends.
struct Serving(std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_draws_the_cluster_in_a_real_browser_and_follows_a_scale() {
    tinykube_tests::lab::require_root();
    let t = TestLab::start(2).await;
    let kubectl = t.kubectl();
    kubectl.ok(&[
        "create",
        "deployment",
        "web",
        "--image=tinykube.local/toolbox",
        "--replicas=2",
    ]);
    kubectl.ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
    ]);
    kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let web = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}default/{.metadata.name}{\"\\n\"}{end}",
    ]);
    let web: Vec<&str> = web.lines().collect();
    assert_eq!(web.len(), 2);

    let port = tinykube_tests::free_port();
    let server = Command::new(tinykube_bin().unwrap())
        .args(["ctl", "dashboard", "--port", &port.to_string()])
        .env("KUBECONFIG", t.lab().kubeconfig())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _server = Serving(server);
    let url = format!("http://127.0.0.1:{port}/");
    let up = eventually(Duration::from_secs(10), async || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await;
    assert!(up.is_some(), "the dashboard listens on {url}");

    // The screenshot is kept under target/ for CI to publish.
    let shot = format!("{}/../target/dashboard.png", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python())
        .arg(format!(
            "{}/browser/dashboard.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args([
            "--url",
            &url,
            "--screenshot",
            &shot,
            "--nodes",
            "3",
            "--pods",
            "2",
        ])
        .args(["--scale", "web", "--replicas", "6", "--click", web[0]])
        .env("KUBECONFIG", t.lab().kubeconfig())
        .env("HOME", t.lab().kubeconfig().parent().unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser driver failed: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("the driver prints JSON");
    assert_eq!(v["console_errors"], serde_json::json!([]), "{v}");
    assert_eq!(v["foreign_requests"], serde_json::json!([]), "{v}");
    assert!(v["requests"].as_u64().unwrap() > 3, "{v}");
    let nodes: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    for n in &t.lab().state.nodes {
        assert!(nodes.contains(&n.name.as_str()), "{} drawn: {v}", n.name);
    }
    for p in &web {
        assert!(
            v["pods"].as_array().unwrap().iter().any(|x| x == p),
            "{p} drawn: {v}"
        );
    }
    assert!(
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "default/web"),
        "{v}"
    );
    let scale = &v["scale"];
    assert_eq!(scale["before"], 2, "{v}");
    assert_eq!(scale["after"], 6, "{v}");
    assert_eq!(scale["reloaded"], false, "{v}");
    let secs = scale["seconds"].as_f64().expect("the new pods appeared");
    assert!(secs <= 2.0, "the scale took {secs} s to appear");
    let click = v["click"]
        .as_str()
        .expect("clicking a pod shows its inspect");
    assert!(
        click.contains("sandbox") && click.contains("veth"),
        "{click}"
    );
    assert!(v["heap_used_bytes"].as_u64().unwrap() < 50 << 20, "{v}");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a screenshot at {shot}"
    );
    t.down().await;
}

/// `trace` over the kernel backends: vxlan names `flannel.1`, port 8472 and VNI 1, and
/// its device counters move under `--probe`; host-gw routes the packet as it is, via
/// the peer's address, and `inspect node` shows each backend's VTEP or none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trace_follows_the_kernel_backends() {
    tinykube_tests::lab::require_root();
    for backend in ["vxlan", "host-gw"] {
        let t = TestLab::start_with_backend(2, backend).await;
        let kubectl = t.kubectl();
        let (ctl, w1, w2) = Ctl::with_workers(&t);
        let manifest = format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: a}}
spec:
  nodeName: {w1}
  containers: [{{name: c, image: tinykube.local/toolbox}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: b}}
spec:
  nodeName: {w2}
  containers: [{{name: c, image: tinykube.local/toolbox}}]
"
        );
        kubectl.ok_stdin(&["apply", "-f", "-"], &manifest);
        kubectl.ok(&[
            "wait",
            "--for=condition=Ready",
            "pod/a",
            "pod/b",
            "--timeout=90s",
        ]);
        let w2_ip = t.lab().node(&w2).unwrap().ip.to_string();
        let node = ctl.json(&["inspect", "node", &w1]);
        assert_eq!(node["overlay"]["backend"], backend, "{node}");
        let peer = node["overlay"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == w2.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{w2} is a peer: {node}"));
        assert_eq!(peer["publicIP"], w2_ip.as_str());
        assert_eq!(
            peer["vtepMAC"].is_string(),
            backend == "vxlan",
            "a VTEP MAC for vxlan only: {peer}"
        );
        let tr = ctl.ok(&["trace", "a", "b:8080", "--probe"]);
        let moved = |needle: &str| {
            tr.lines()
                .any(|l| l.contains(needle) && l.contains("[+") && !l.contains("did not move"))
        };
        match backend {
            "vxlan" => {
                assert!(tr.contains("flannel.1"), "{tr}");
                assert!(tr.contains(&format!("{w2_ip}:8472 VNI 1")), "{tr}");
                assert!(moved("overlay flannel.1"), "{tr}");
                assert!(moved("takes it off the wire"), "{tr}");
            }
            _ => {
                assert!(tr.contains(&format!("via {w2_ip}")), "{tr}");
                assert!(tr.contains("no encapsulation"), "{tr}");
            }
        }
        assert!(moved("pod default/b eth0"), "{tr}");
        assert!(tr.contains("connected"), "{tr}");
        t.down().await;
    }
}
