//! The real kubectl against an in-process master: the documentation's examples, every
//! output format, watch, cordon, scale, expose, NodePort conflicts, selectors, conflicts.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tinykube_tests::TestMaster;

fn data(name: &str) -> String {
    format!("{}/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn columns(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn documentation_examples_apply_and_print_like_kubernetes() {
    let m = TestMaster::start().await;
    let k = m.kubectl();
    assert_eq!(
        k.ok(&["apply", "-f", &data("nginx-deployment.yaml")])
            .trim(),
        "deployment.apps/nginx-deployment created"
    );
    assert_eq!(
        k.ok(&["apply", "-f", &data("my-service.yaml")]).trim(),
        "service/my-service created"
    );
    assert_eq!(
        k.ok(&["apply", "-f", &data("nginx-deployment.yaml")])
            .trim(),
        "deployment.apps/nginx-deployment unchanged"
    );

    let table = k.ok(&["get", "deployments"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        columns(lines[0]),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert_eq!(
        columns(lines[1])[..4],
        ["nginx-deployment", "0/3", "0", "0"]
    );

    let wide = k.ok(&["get", "deployment", "nginx-deployment", "-o", "wide"]);
    assert!(
        wide.lines()
            .next()
            .unwrap()
            .ends_with("CONTAINERS   IMAGES         SELECTOR"),
        "{wide}"
    );
    assert!(wide.contains("nginx:1.14.2") && wide.contains("app=nginx"));

    let svc = k.ok(&["get", "svc", "my-service"]);
    let header = columns(svc.lines().next().unwrap());
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    let row = columns(svc.lines().nth(1).unwrap());
    assert_eq!((row[1], row[3], row[4]), ("ClusterIP", "<none>", "80/TCP"));
    assert!(
        row[2].starts_with("10."),
        "cluster IP from 10.96.0.0/12: {}",
        row[2]
    );
    assert_eq!(
        k.ok(&[
            "get",
            "svc",
            "my-service",
            "-o",
            "jsonpath={.spec.ports[0].targetPort}"
        ]),
        "9376"
    );

    let yaml = k.ok(&["get", "deploy", "nginx-deployment", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("maxSurge: 25%"),
        "{yaml}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "deploy", "-o", "json"])).unwrap();
    assert_eq!(
        json["items"][0]["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.14.2"
    );
    assert_eq!(
        k.ok(&["get", "deploy", "-o", "name"]).trim(),
        "deployment.apps/nginx-deployment"
    );
    let all = k.ok(&["get", "all"]);
    assert!(
        all.contains("service/kubernetes") && all.contains("deployment.apps/nginx-deployment"),
        "{all}"
    );

    // A changed manifest is configured, and the generation moves on.
    let changed = std::fs::read_to_string(data("nginx-deployment.yaml"))
        .unwrap()
        .replace("replicas: 3", "replicas: 5");
    assert_eq!(
        k.ok_stdin(&["apply", "-f", "-"], &changed).trim(),
        "deployment.apps/nginx-deployment configured"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "nginx-deployment",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.generation}"
        ]),
        "5 2"
    );

    assert!(
        k.ok(&["describe", "deployment", "nginx-deployment"])
            .contains("nginx:1.14.2")
    );
    k.ok(&["delete", "-f", &data("nginx-deployment.yaml")]);
    assert!(
        k.fails(&["get", "deploy", "nginx-deployment"])
            .contains("NotFound")
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn imperative_commands_cordon_scale_expose() {
    let m = TestMaster::start().await;
    let k = m.kubectl();
    k.ok(&["apply", "-f", &data("worker-node.yaml")]);
    let nodes = k.ok(&["get", "nodes", "-o", "wide"]);
    let header = columns(nodes.lines().next().unwrap());
    assert_eq!(header[..5], ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    let row = columns(nodes.lines().nth(1).unwrap());
    assert_eq!(
        (row[0], row[1], row[4], row[5]),
        ("worker1", "Ready", "v1.33.0", "192.168.56.11")
    );

    assert_eq!(k.ok(&["cordon", "worker1"]).trim(), "node/worker1 cordoned");
    assert_eq!(
        columns(k.ok(&["get", "nodes"]).lines().nth(1).unwrap())[1],
        "Ready,SchedulingDisabled"
    );
    assert_eq!(
        k.ok(&["uncordon", "worker1"]).trim(),
        "node/worker1 uncordoned"
    );
    assert_eq!(
        columns(k.ok(&["get", "nodes"]).lines().nth(1).unwrap())[1],
        "Ready"
    );

    // kubectl 1.32+ sends these bodies as protobuf.
    k.ok(&[
        "create",
        "deployment",
        "server",
        "--image=nginx",
        "--replicas=2",
        "--port=80",
    ]);
    assert_eq!(
        k.ok(&["scale", "deployment", "server", "--replicas=6"])
            .trim(),
        "deployment.apps/server scaled"
    );
    assert_eq!(
        k.ok(&["get", "deploy", "server", "-o", "jsonpath={.spec.replicas}"]),
        "6"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "server",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].ports[0].containerPort}"
        ]),
        "80"
    );
    assert_eq!(
        k.ok(&[
            "expose",
            "deployment",
            "server",
            "--port=8080",
            "--target-port=80",
            "--type=NodePort"
        ])
        .trim(),
        "service/server exposed"
    );
    let svc = k.ok(&["get", "svc", "server", "-o", "wide"]);
    let row = columns(svc.lines().nth(1).unwrap());
    assert_eq!(row[1], "NodePort");
    let port: Vec<&str> = row[4].trim_end_matches("/TCP").split(':').collect();
    let node_port: u16 = port[1].parse().unwrap();
    assert!(
        (30000..=32767).contains(&node_port) && port[0] == "8080",
        "{svc}"
    );
    assert_eq!(row[6], "app=server");

    k.ok(&["create", "namespace", "lab"]);
    k.ok(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "lab",
        "--from-literal=a=1",
    ]);
    assert!(k.ok(&["get", "ns", "lab"]).contains("Active"));
    k.ok(&["delete", "namespace", "lab"]);
    let gone = tinykube_tests::eventually(Duration::from_secs(10), async || {
        (!k.run(&["get", "ns", "lab"]).ok).then_some(())
    })
    .await;
    assert!(gone.is_some(), "namespace lab is removed once empty");
    assert!(
        k.fails(&["delete", "namespace", "default"])
            .contains("may not be deleted")
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_port_conflicts_use_kubernetes_messages() {
    let m = TestMaster::start().await;
    let k = m.kubectl();
    k.ok(&[
        "create",
        "service",
        "nodeport",
        "a",
        "--tcp=80:80",
        "--node-port=30080",
    ]);
    let taken = k.fails(&[
        "create",
        "service",
        "nodeport",
        "b",
        "--tcp=80:80",
        "--node-port=30080",
    ]);
    assert!(
        taken.contains(
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        ),
        "{taken}"
    );
    let range = k.fails(&[
        "create",
        "service",
        "nodeport",
        "c",
        "--tcp=80:80",
        "--node-port=40000",
    ]);
    assert!(
        range.contains(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{range}"
    );
    k.ok(&["delete", "service", "a"]);
    k.ok(&[
        "create",
        "service",
        "nodeport",
        "b",
        "--tcp=80:80",
        "--node-port=30080",
    ]);
    assert_eq!(
        k.ok(&[
            "get",
            "svc",
            "b",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}"
        ]),
        "30080"
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn label_selectors_and_optimistic_concurrency() {
    let m = TestMaster::start().await;
    let k = m.kubectl();
    k.ok(&["apply", "-f", &data("labelled-pods.yaml")]);
    let names = |sel: &str| {
        let mut v: Vec<String> = k
            .ok(&["get", "pods", "-l", sel, "-o", "name"])
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("app=web"), ["pod/back-1", "pod/front-1"]);
    assert_eq!(names("app=web,tier!=back"), ["pod/front-1"]);
    assert_eq!(names("tier in (front,back)"), ["pod/back-1", "pod/front-1"]);
    assert_eq!(names("!tier"), ["pod/other-1"]);
    assert!(
        k.fails(&["get", "pods", "-l", "tier in (front"])
            .contains("Error from server (BadRequest)")
    );
    assert!(
        k.fails(&["get", "pods", "--field-selector", "spec.foo=1"])
            .contains("field label not supported: spec.foo")
    );
    let pods = k.ok(&[
        "get",
        "pods",
        "--field-selector",
        "metadata.name=front-1",
        "-o",
        "name",
    ]);
    assert_eq!(pods.trim(), "pod/front-1");
    k.ok(&["label", "pod", "other-1", "tier=db"]);
    assert_eq!(names("tier=db"), ["pod/other-1"]);

    // Two writers from the same read: the second is refused with 409.
    let stale = k.ok(&["get", "pod", "front-1", "-o", "json"]);
    let mut a: serde_json::Value = serde_json::from_str(&stale).unwrap();
    a["metadata"]["labels"]["writer"] = "a".into();
    k.ok_stdin(&["replace", "-f", "-"], &a.to_string());
    let mut b: serde_json::Value = serde_json::from_str(&stale).unwrap();
    b["metadata"]["labels"]["writer"] = "b".into();
    let res = k.run_stdin(&["replace", "-f", "-"], &b.to_string());
    assert!(!res.ok);
    let err = res.stderr;
    assert!(err.contains("the object has been modified"), "{err}");
    assert_eq!(
        k.ok(&[
            "get",
            "pod",
            "front-1",
            "-o",
            "jsonpath={.metadata.labels.writer}"
        ]),
        "a"
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_watch_prints_new_objects() {
    let m = TestMaster::start().await;
    let k = m.kubectl();
    k.ok(&["create", "deployment", "first", "--image=nginx"]);
    let mut child = k
        .command(&["get", "deployments", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The watch is running once the existing deployment has been printed.
    let mut seen = Vec::new();
    let start = Instant::now();
    while !seen.iter().any(|l: &String| l.starts_with("first"))
        && start.elapsed() < Duration::from_secs(20)
    {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
        }
    }
    assert!(
        seen.iter().any(|l| l.starts_with("first")),
        "the watch printed the existing deployment: {seen:?}"
    );
    k.ok(&["create", "deployment", "watched", "--image=nginx"]);
    k.ok(&["scale", "deployment", "watched", "--replicas=4"]);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
            if seen
                .iter()
                .any(|l| l.starts_with("watched") && l.contains("0/4"))
            {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("watched") && l.contains("0/1")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("watched") && l.contains("0/4")),
        "{seen:?}"
    );
    m.shutdown().await;
}
