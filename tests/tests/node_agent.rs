//! End-to-end tests of the node agent on local clusters (root, real containerd, runc,
//! network namespaces): nodes, pod sandboxes, configuration, restarts, deletion and
//! agent restarts, and `down` leaving nothing behind.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tinykube_tests::eventually;
use tinykube_tests::lab::TestLab;

async fn pod(client: &kube::Client, name: &str) -> Pod {
    Api::<Pod>::namespaced(client.clone(), "default")
        .get(name)
        .await
        .expect("pod")
}

/// Waits until `pred` holds for pod `name`; fails with the pod's status otherwise.
async fn wait_pod(
    client: &kube::Client,
    name: &str,
    secs: u64,
    what: &str,
    pred: impl Fn(&Pod) -> bool,
) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let got = eventually(Duration::from_secs(secs), async || {
        api.get(name).await.ok().filter(|p| pred(p))
    })
    .await;
    match got {
        Some(p) => p,
        None => {
            let p = api.get(name).await.ok();
            panic!(
                "pod {name}: {what} did not happen in {secs} s; status: {:#?}",
                p.and_then(|p| p.status)
            );
        }
    }
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn running(p: &Pod) -> bool {
    phase(p) == "Running"
        && p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| cs.iter().all(|c| c.ready))
}

fn ino(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

/// A worker that would take another node's address (Vagrant's NAT pitfall: every VM's
/// first interface is 10.0.2.15) is refused before it sets anything up, with the flag
/// that fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_node_s_address_is_refused() {
    let cluster = TestLab::start(1).await;
    let master = cluster.lab().state.nodes[0].clone();
    let worker = cluster.lab().state.nodes[1].clone();
    let token = std::fs::read_to_string(master.data_dir.join("node-token")).unwrap();
    let server = format!("https://{}:6443", master.ip);
    let ca = master.data_dir.join("tls").join("ca.crt");
    let (stderr, _dir) = cluster.worker_refused(
        1,
        &[
            "--server",
            &server,
            "--token",
            token.trim(),
            "--node-name",
            "imposter",
            "--node-ip",
            &worker.ip.to_string(),
            "--ca-file",
            &ca.display().to_string(),
        ],
    );
    assert!(
        stderr.contains(&format!(
            "node {} already has the address {}",
            worker.name, worker.ip
        )) && stderr.contains("--node-ip"),
        "{stderr}"
    );
    let nodes = cluster.kubectl().ok(&["get", "nodes", "-o", "name"]);
    assert!(!nodes.contains("imposter"), "{nodes}");
    cluster.down().await;
}

/// A cluster with no workers (`up --workers 0`, the course's single-node start): the
/// master's own node is not tainted and runs pods, as on kind and k3s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_alone_runs_pods_itself() {
    let cluster = TestLab::start(0).await;
    let kubectl = cluster.kubectl();
    let master = format!("{}-master", cluster.name);
    // The node lifecycle controller may still hold the not-ready taints of the node's
    // first moments (it clears them on its next pass after Ready): wait those out.
    let taints = eventually(Duration::from_secs(30), async || {
        let t = kubectl.ok(&["get", "node", &master, "-o", "jsonpath={.spec.taints}"]);
        (!t.contains("node.kubernetes.io/not-ready")).then_some(t)
    })
    .await
    .expect("the not-ready taints go once the node is Ready");
    // No taint at all (an emptied list prints as `[]`).
    assert!(
        taints.is_empty() || taints == "[]",
        "a master alone is not tainted: {taints}"
    );
    kubectl.ok(&[
        "run",
        "solo",
        "--image=tinykube.local/toolbox",
        "--",
        "serve",
    ]);
    kubectl.ok(&["wait", "--for=condition=Ready", "pod/solo", "--timeout=90s"]);
    let node = kubectl.ok(&["get", "pod", "solo", "-o", "jsonpath={.spec.nodeName}"]);
    assert_eq!(node, master);
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cluster_has_ready_nodes_and_down_removes_every_trace() {
    let cluster = TestLab::start(2).await;
    let kubectl = cluster.kubectl();
    let out = kubectl.ok(&["get", "nodes", "-o", "wide", "--no-headers"]);
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    let subnet = cluster
        .lab()
        .state
        .subnet
        .trim_end_matches(".0/24")
        .to_string();
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l[1], "Ready", "{out}");
        assert_eq!(
            l[5],
            format!("{subnet}.{}", 10 + i),
            "InternalIP of {}: {out}",
            l[0]
        );
        assert!(
            l.last().unwrap().starts_with("containerd://1."),
            "runtime column: {out}"
        );
    }
    assert_eq!(lines[0][0], format!("{}-master", cluster.name));
    assert_eq!(lines[0][2], "control-plane");
    assert_eq!(lines[1][2], "<none>");
    let taints = kubectl.ok(&[
        "get",
        "node",
        lines[0][0],
        "-o",
        "jsonpath={.spec.taints[*].key}",
    ]);
    assert!(
        taints
            .split(' ')
            .any(|t| t == "node-role.kubernetes.io/control-plane"),
        "{taints}"
    );

    // A second `up` of the same cluster refuses.
    let mut cfg = tinykube_lab::LabConfig::new(&cluster.name);
    cfg.data_dir = cluster.dir.clone();
    let mut quiet = |_: &str| {};
    let again = tinykube_lab::Lab::up(&cfg, &mut quiet).await;
    assert!(
        matches!(again, Err(tinykube_lab::LabError::Exists { .. })),
        "second up must refuse"
    );

    // A running pod, so `down` has containers, a pod netns and a veth to remove.
    let client = cluster.client().await;
    kubectl.ok(&[
        "run",
        "web",
        "--image=tinykube.local/toolbox",
        "--image-pull-policy=IfNotPresent",
    ]);
    let p = wait_pod(&client, "web", 60, "Running", running).await;
    let uid = p.metadata.uid.clone().unwrap();
    let nodes: Vec<String> = cluster
        .lab()
        .state
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let (name, dir) = (cluster.name.clone(), cluster.dir.clone());
    let socket = cluster.lab().state.containerd_socket.clone();
    let pids: Vec<u32> = cluster
        .lab()
        .state
        .nodes
        .iter()
        .filter_map(|n| n.pid)
        .collect();
    cluster.down().await;

    let netns: Vec<String> = std::fs::read_dir("/var/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !netns.iter().any(|n| n.starts_with(&format!("tk-{name}-"))),
        "node namespaces left: {netns:?}"
    );
    assert!(
        !netns.contains(&format!("tk-{uid}")),
        "pod namespace left: {netns:?}"
    );
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/tkbr-{name}")).exists(),
        "bridge left"
    );
    assert!(!dir.exists(), "data dir left");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left"
        );
    }
    for n in nodes {
        let rt = tinykube_kubelet::runtime::Runtime::connect(
            &socket,
            &format!("tinykube-{n}"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(
            !rt.namespace_exists().await.unwrap(),
            "containerd namespace of {n} left"
        );
    }
    // `down` again finds nothing.
    assert!(!tinykube_lab::Lab::down(&name, &dir, false).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_pod_share_one_network_namespace_and_ip() {
    let cluster = TestLab::start(1).await;
    let client = cluster.client().await;
    cluster.kubectl().ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: pair}
spec:
  containers:
  - name: server
    image: tinykube.local/toolbox
    imagePullPolicy: IfNotPresent
  - name: client
    image: tinykube.local/toolbox
    imagePullPolicy: IfNotPresent
    command: ["/tinykube", "toolbox", "fetch", "http://127.0.0.1:8080/", "--interval-ms", "200"]
"#,
    );
    let p = wait_pod(&client, "pair", 60, "Running", running).await;
    let uid = p.metadata.uid.clone().unwrap();
    let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
    let ip = p.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert!(
        ip.starts_with("10.244."),
        "pod IP from the node's podCIDR: {ip}"
    );

    // The client reached the server over localhost and saw the pod's own IP.
    let kubectl = cluster.kubectl();
    let log = eventually(Duration::from_secs(20), async || {
        let l = kubectl.ok(&["logs", "pair", "-c", "client"]);
        l.contains("pod=pair").then_some(l)
    })
    .await
    .expect("the client container logged the server's answer");
    assert!(log.contains(&format!("ip={ip}")), "{log}");

    // The pause container is there; all three share the pinned namespace.
    let rt = cluster.runtime(&node).await;
    let containers = rt.list_containers().await.unwrap();
    let mine: Vec<_> = containers
        .iter()
        .filter(|c| c.labels.get("io.kubernetes.pod.uid") == Some(&uid))
        .collect();
    let sandbox = mine
        .iter()
        .find(|c| c.labels.get("io.tinykube.kind").map(String::as_str) == Some("sandbox"))
        .expect("pause container");
    assert_eq!(sandbox.image, "tinykube.local/pause:latest");
    assert_eq!(mine.len(), 3, "pause + two containers: {mine:?}");
    let pinned = ino(&format!("/var/run/netns/tk-{uid}"));
    for c in &mine {
        let t = rt.task_state(&c.id).await.unwrap().expect("task");
        assert!(t.running, "{} runs", c.id);
        assert_eq!(
            ino(&format!("/proc/{}/ns/net", t.pid)),
            pinned,
            "{} is in the pod's netns",
            c.id
        );
    }
    let pause_pid = rt.task_state(&sandbox.id).await.unwrap().unwrap().pid;
    let server = mine
        .iter()
        .find(|c| {
            c.labels
                .get("io.kubernetes.container.name")
                .map(String::as_str)
                == Some("server")
        })
        .unwrap();
    let server_pid = rt.task_state(&server.id).await.unwrap().unwrap().pid;
    assert_eq!(
        ino(&format!("/proc/{server_pid}/ns/ipc")),
        ino(&format!("/proc/{pause_pid}/ns/ipc")),
        "ipc shared"
    );
    assert_eq!(
        ino(&format!("/proc/{server_pid}/ns/uts")),
        ino(&format!("/proc/{pause_pid}/ns/uts")),
        "uts shared"
    );
    assert_ne!(
        ino(&format!("/proc/{server_pid}/ns/pid")),
        ino(&format!("/proc/{pause_pid}/ns/pid")),
        "own pid namespace"
    );

    // Another pod on the same node is reached over the bridge, and so is the node.
    kubectl.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: neighbour}}\nspec:\n  nodeName: {node}\n  containers:\n  - {{name: c, image: tinykube.local/toolbox, imagePullPolicy: IfNotPresent}}\n"
        ),
    );
    let other = wait_pod(&client, "neighbour", 60, "Running", running).await;
    let other_ip = other.status.unwrap().pod_ip.unwrap();
    assert_ne!(other_ip, ip, "one IP per pod");
    let answer = kubectl.ok(&[
        "exec",
        "pair",
        "-c",
        "server",
        "--",
        "/tinykube",
        "toolbox",
        "fetch",
        &format!("http://{other_ip}:8080/"),
        "--count",
        "1",
    ]);
    assert!(
        answer.contains("pod=neighbour"),
        "pod to pod on one node: {answer}"
    );
    let node_ns =
        tinykube_net::netns::NetNs::open(&cluster.lab().node(&node).unwrap().netns).unwrap();
    let url = format!("http://{ip}:8080/");
    let from_node = node_ns
        .run(move || {
            // The toolbox's own client, started from inside the node's namespace.
            std::process::Command::new(tinykube_tests::tinykube_bin().unwrap())
                .args(["toolbox", "fetch", &url, "--count", "1"])
                .output()
        })
        .unwrap()
        .expect("node to pod");
    let from_node = String::from_utf8_lossy(&from_node.stdout).into_owned();
    assert!(from_node.contains("pod=pair"), "{from_node}");
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_downward_api_config_maps_and_shared_empty_dirs_reach_containers() {
    let cluster = TestLab::start(1).await;
    let client = cluster.client().await;
    cluster.kubectl().ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello-from-configmap, colour: blue}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
data: {password: czNjcmV0Cg==}
---
apiVersion: v1
kind: Pod
metadata: {name: conf, labels: {app: conf}}
spec:
  restartPolicy: Never
  volumes:
  - {name: config, configMap: {name: settings}}
  - {name: shared, emptyDir: {}}
  - {name: secret, secret: {secretName: creds}}
  initContainers:
  - name: prepare
    image: tinykube.local/toolbox
    imagePullPolicy: IfNotPresent
    command: ["/tinykube", "toolbox", "write", "/shared/note", "written-by-init"]
    volumeMounts: [{name: shared, mountPath: /shared}]
  containers:
  - name: env
    image: tinykube.local/toolbox
    imagePullPolicy: IfNotPresent
    command: ["/tinykube", "toolbox", "env"]
    env:
    - {name: LITERAL, value: plain}
    - {name: EXPANDED, value: "$(LITERAL)-and-more"}
    - {name: MY_POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: MY_NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: MY_NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: MY_HOST, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
    - {name: MY_APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: settings, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    envFrom:
    - {prefix: CM_, configMapRef: {name: settings}}
  - name: files
    image: tinykube.local/toolbox
    imagePullPolicy: IfNotPresent
    command: ["/tinykube", "toolbox", "cat", "/shared/note", "/config/greeting", "/secret/password"]
    volumeMounts:
    - {name: shared, mountPath: /shared}
    - {name: config, mountPath: /config}
    - {name: secret, mountPath: /secret}
"#,
    );
    let p = wait_pod(&client, "conf", 60, "Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await;
    let uid = p.metadata.uid.clone().unwrap();
    let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
    let status = p.status.clone().unwrap();
    let ip = status.pod_ip.clone().unwrap();
    let host_ip = status.host_ip.clone().unwrap();
    let init = &status.init_container_statuses.unwrap()[0];
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("Completed")
    );
    let _ = uid;
    let env = cluster.kubectl().ok(&["logs", "conf", "-c", "env"]);
    for want in [
        "LITERAL=plain".to_string(),
        "EXPANDED=plain-and-more".into(),
        "MY_POD=conf".into(),
        "MY_NS=default".into(),
        format!("MY_NODE={node}"),
        format!("MY_IP={ip}"),
        format!("MY_HOST={host_ip}"),
        "MY_APP=conf".into(),
        "GREETING=hello-from-configmap".into(),
        "PASSWORD=s3cret".into(),
        "CM_colour=blue".into(),
        "KUBERNETES_SERVICE_HOST=10.96.0.1".into(),
        "HOSTNAME=conf".into(),
    ] {
        assert!(
            env.lines().any(|l| l == want),
            "{want} missing from:\n{env}"
        );
    }
    let files = cluster.kubectl().ok(&["logs", "conf", "-c", "files"]);
    assert_eq!(
        files, "written-by-init\nhello-from-configmaps3cret\n",
        "emptyDir shared with the init container, configMap and secret mounted"
    );
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_containers_back_off_and_oom_kills_are_reported() {
    let cluster = TestLab::start(1).await;
    let client = cluster.client().await;
    cluster.kubectl().ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - name: c
    image: tinykube.local/toolbox
    imagePullPolicy: IfNotPresent
    command: ["/tinykube", "toolbox", "exit", "3"]
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: tinykube.local/toolbox
    imagePullPolicy: IfNotPresent
    command: ["/tinykube", "toolbox", "alloc", "256"]
    resources: {limits: {memory: 64Mi}}
"#,
    );
    // Restarts at once, then after 1 s, 2 s, 4 s (the lab's back-off starts at 1 s).
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut seen: Vec<(i32, Instant)> = Vec::new();
    let mut saw_backoff = false;
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline && seen.last().is_none_or(|(n, _)| *n < 4) {
        if let Ok(p) = api.get("crash").await
            && let Some(cs) = p
                .status
                .and_then(|s| s.container_statuses)
                .and_then(|c| c.into_iter().next())
        {
            if seen.last().is_none_or(|(n, _)| *n != cs.restart_count) {
                seen.push((cs.restart_count, Instant::now()));
            }
            if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref())
                && w.reason.as_deref() == Some("CrashLoopBackOff")
            {
                saw_backoff = true;
                assert!(
                    w.message.as_deref().unwrap_or("").contains("back-off"),
                    "{w:?}"
                );
                let last = cs
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .expect("lastState");
                assert_eq!(last.exit_code, 3);
                assert_eq!(last.reason.as_deref(), Some("Error"));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        saw_backoff,
        "CrashLoopBackOff shown while waiting; restarts seen: {seen:?}"
    );
    let at = |n: i32| {
        seen.iter()
            .find(|(c, _)| *c == n)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("restart {n} not seen: {seen:?}"))
    };
    let gap23 = at(3) - at(2);
    let gap34 = at(4) - at(3);
    assert!(
        gap23 >= Duration::from_millis(1500),
        "second back-off ~2 s, was {gap23:?}"
    );
    assert!(
        gap34 >= Duration::from_millis(3000),
        "third back-off ~4 s, was {gap34:?}"
    );
    assert!(gap34 > gap23, "back-off grows: {gap23:?} then {gap34:?}");

    let p = wait_pod(&client, "hog", 60, "Failed", |p| phase(p) == "Failed").await;
    let t = p.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(t.reason.as_deref(), Some("OOMKilled"), "{t:?}");
    assert_eq!(t.exit_code, 137);
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_deletion_honours_the_grace_period_and_leaves_nothing() {
    let cluster = TestLab::start(1).await;
    let client = cluster.client().await;
    cluster.kubectl().ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: c
    image: tinykube.local/toolbox
    imagePullPolicy: IfNotPresent
    command: ["/tinykube", "toolbox", "sleep", "3600"]
"#,
    );
    let p = wait_pod(&client, "stubborn", 60, "Running", running).await;
    let uid = p.metadata.uid.clone().unwrap();
    let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
    let started = Instant::now();
    // `sleep` as PID 1 ignores SIGTERM: the kubelet waits 3 s, then kills.
    cluster
        .kubectl()
        .ok(&["delete", "pod", "stubborn", "--timeout=60s"]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2800),
        "deleted after {took:?}, before the grace period ended"
    );
    assert!(took < Duration::from_secs(20), "deletion took {took:?}");
    let rt = cluster.runtime(&node).await;
    let left: Vec<_> = rt
        .list_containers()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.labels.get("io.kubernetes.pod.uid") == Some(&uid))
        .collect();
    assert!(left.is_empty(), "containers left in containerd: {left:?}");
    assert!(
        !std::path::Path::new(&format!("/var/run/netns/tk-{uid}")).exists(),
        "pod netns left"
    );
    let veth = tinykube_net::link::host_if_name(&uid);
    let node_ns = cluster.lab().node(&node).unwrap().netns.clone();
    let links = std::process::Command::new("ip")
        .args(["-n", &node_ns, "-o", "link"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&veth),
        "pod veth left"
    );
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_adopts_running_pods_and_cleans_up_deleted_ones() {
    let mut cluster = TestLab::start(1).await;
    let client = cluster.client().await;
    let worker = format!("{}-worker-1", cluster.name);
    let manifest = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {worker}\n  containers:\n  - {{name: c, image: tinykube.local/toolbox, imagePullPolicy: IfNotPresent}}\n"
        )
    };
    cluster.kubectl().ok_stdin(
        &["apply", "-f", "-"],
        &format!("{}---\n{}", manifest("keep"), manifest("gone")),
    );
    let keep = wait_pod(&client, "keep", 60, "Running", running).await;
    let gone = wait_pod(&client, "gone", 60, "Running", running).await;
    let before = keep.status.clone().unwrap();
    let gone_uid = gone.metadata.uid.clone().unwrap();

    cluster.lab_mut().kill_node(&worker).await.unwrap();
    cluster
        .kubectl()
        .ok(&["delete", "pod", "gone", "--wait=false"]);
    cluster.lab_mut().start_node(&worker).unwrap();

    // The deleted pod is stopped and confirmed once the agent is back.
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let removed = eventually(Duration::from_secs(60), async || {
        api.get_opt("gone")
            .await
            .ok()
            .and_then(|p| p.is_none().then_some(()))
    })
    .await;
    assert!(
        removed.is_some(),
        "pod deleted while the agent was down is removed after it returns"
    );
    assert!(!std::path::Path::new(&format!("/var/run/netns/tk-{gone_uid}")).exists());
    let rt = cluster.runtime(&worker).await;
    assert!(
        !rt.list_containers()
            .await
            .unwrap()
            .iter()
            .any(|c| c.labels.get("io.kubernetes.pod.uid") == Some(&gone_uid)),
        "containers of the deleted pod left"
    );

    // The running pod was adopted: same container, no restart, same IP.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = pod(&client, "keep").await.status.unwrap();
    let (b, a) = (
        &before.container_statuses.as_ref().unwrap()[0],
        &after.container_statuses.as_ref().unwrap()[0],
    );
    assert_eq!(a.container_id, b.container_id);
    assert_eq!(a.restart_count, 0);
    assert!(a.ready);
    assert_eq!(after.pod_ip, before.pod_ip);
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_exec_go_through_the_api_server_to_the_kubelet() {
    let cluster = TestLab::start(1).await;
    let client = cluster.client().await;
    let kubectl = cluster.kubectl();
    kubectl.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: talk}
spec:
  containers:
  - name: server
    image: tinykube.local/toolbox
    imagePullPolicy: IfNotPresent
  - name: client
    image: tinykube.local/toolbox
    imagePullPolicy: IfNotPresent
    command: ["/tinykube", "toolbox", "fetch", "http://127.0.0.1:8080/", "--count", "3", "--interval-ms", "400"]
"#,
    );
    wait_pod(&client, "talk", 60, "started", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.name == "server" && c.ready))
    })
    .await;
    let server_log = kubectl.ok(&["logs", "talk", "-c", "server"]);
    assert!(
        server_log.contains("serving on :8080 as pod=talk namespace=default"),
        "{server_log}"
    );

    // Following a container's log ends when the container does.
    let started = Instant::now();
    let followed = kubectl.ok(&["logs", "-f", "talk", "-c", "client"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "follow ended with the container"
    );
    assert!(
        followed
            .lines()
            .filter(|l| l.starts_with("pod=talk"))
            .count()
            >= 1,
        "{followed}"
    );

    // After the client exits and restarts, --previous shows the last run's output.
    wait_pod(&client, "talk", 60, "a client restart", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.name == "client" && c.restart_count >= 1)
            })
    })
    .await;
    let previous = kubectl.ok(&["logs", "talk", "-c", "client", "--previous"]);
    assert_eq!(
        previous
            .lines()
            .filter(|l| l.starts_with("pod=talk"))
            .count(),
        3,
        "{previous}"
    );
    let last = kubectl.ok(&["logs", "talk", "-c", "server", "--tail=1"]);
    assert_eq!(last.lines().count(), 1, "{last}");

    // exec: output, exit codes, stdin.
    let hostname = kubectl.ok(&[
        "exec",
        "talk",
        "-c",
        "server",
        "--",
        "/tinykube",
        "toolbox",
        "cat",
        "/etc/hostname",
    ]);
    assert_eq!(hostname.trim(), "talk");
    let r = kubectl.run(&[
        "exec",
        "talk",
        "-c",
        "server",
        "--",
        "/tinykube",
        "toolbox",
        "exit",
        "4",
    ]);
    assert!(!r.ok);
    let code = kubectl
        .command(&[
            "exec",
            "talk",
            "-c",
            "server",
            "--",
            "/tinykube",
            "toolbox",
            "exit",
            "4",
        ])
        .status()
        .unwrap()
        .code();
    assert_eq!(code, Some(4), "kubectl exec exits with the command's code");
    let echoed = kubectl.run_stdin(
        &[
            "exec",
            "-i",
            "talk",
            "-c",
            "server",
            "--",
            "/tinykube",
            "toolbox",
            "cat",
            "/dev/stdin",
        ],
        "through stdin\n",
    );
    assert!(echoed.ok, "{}", echoed.stderr);
    assert_eq!(echoed.stdout, "through stdin\n");
    let missing = kubectl.fails(&["logs", "talk", "-c", "nope"]);
    assert!(
        missing.contains("container nope is not valid for pod talk"),
        "{missing}"
    );

    // The kubelet API answers the API server's certificate only: not a client without
    // one, not another node's certificate (also signed by the cluster CA).
    let talk: Pod = Api::default_namespaced(client.clone())
        .get("talk")
        .await
        .unwrap();
    let node_ip = talk.status.and_then(|s| s.host_ip).unwrap();
    let url = format!("https://{node_ip}:10250/containerLogs/default/talk/server");
    let curl = |extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args([
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&[]), "401");
    let worker = cluster.lab().state.nodes[1].clone();
    let kc: tinykube_api::kubeconfig::Kubeconfig = serde_saphyr::from_str(
        &std::fs::read_to_string(worker.data_dir.join("kubelet.kubeconfig")).unwrap(),
    )
    .unwrap();
    let user = &kc.users[0].user;
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("c.pem"), files.path().join("k.pem"));
    std::fs::write(&cert, user.certificate_pem().unwrap()).unwrap();
    let key_b64 = user.client_key_data.clone().unwrap();
    let key_pem =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key_b64).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    assert_eq!(curl(&["--cert", &cert, "--key", &key]), "401");
    cluster.down().await;
}

fn container_ready(p: &Pod, name: &str) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.name == name && c.ready))
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gates_ready_and_liveness_failures_restart() {
    let cluster = TestLab::start(1).await;
    let client = cluster.client().await;
    let kubectl = cluster.kubectl();
    kubectl.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: tinykube.local/toolbox
    imagePullPolicy: IfNotPresent
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
  - name: gate
    image: tinykube.local/toolbox
    imagePullPolicy: IfNotPresent
    command: ["/tinykube", "toolbox", "sleep", "3600"]
    readinessProbe: {exec: {command: ["/tinykube", "toolbox", "cat", "/tmp/ready"]}, periodSeconds: 1}
  - name: flaky
    image: tinykube.local/toolbox
    imagePullPolicy: IfNotPresent
    command: ["/tinykube", "toolbox", "sleep", "3600"]
    livenessProbe: {tcpSocket: {port: 9999}, periodSeconds: 1, failureThreshold: 2}
"#,
    );
    wait_pod(&client, "probed", 60, "web ready by its HTTP probe", |p| {
        container_ready(p, "web")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = pod(&client, "probed").await;
    assert!(
        !container_ready(&p, "gate"),
        "gate is not ready while its exec probe fails"
    );
    assert!(
        !pod_ready(&p),
        "the pod is not Ready while a container is not"
    );

    kubectl.ok(&[
        "exec",
        "probed",
        "-c",
        "gate",
        "--",
        "/tinykube",
        "toolbox",
        "write",
        "/tmp/ready",
        "yes",
    ]);
    wait_pod(
        &client,
        "probed",
        30,
        "gate ready after its probe passes",
        |p| container_ready(p, "gate"),
    )
    .await;

    let p = wait_pod(
        &client,
        "probed",
        60,
        "flaky restarted by its liveness probe",
        |p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.name == "flaky" && c.restart_count >= 1))
        },
    )
    .await;
    let flaky = p
        .status
        .unwrap()
        .container_statuses
        .unwrap()
        .into_iter()
        .find(|c| c.name == "flaky")
        .unwrap();
    let last = flaky.last_state.unwrap().terminated.unwrap();
    assert_eq!(
        last.exit_code, 137,
        "killed after the grace period: {last:?}"
    );
    let web = pod(&client, "probed")
        .await
        .status
        .unwrap()
        .container_statuses
        .unwrap()
        .into_iter()
        .find(|c| c.name == "web")
        .unwrap();
    assert_eq!(web.restart_count, 0, "a passing container is left alone");
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=probed",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains("Unhealthy: Liveness probe failed: dial tcp"),
        "{events}"
    );
    assert!(
        events.contains("Killing: Container flaky failed liveness probe, will be restarted"),
        "{events}"
    );
    cluster.down().await;
}

/// A docker-archive tarball (what `docker save` writes) of an image made from the
/// tinykube binary whose default command serves HTTP on 9090.
fn docker_archive(path: &std::path::Path, tag: &str) {
    let bin = tinykube_tests::tinykube_bin().unwrap();
    let cache = path.with_extension("layer");
    let (layer, digest, _) = tinykube_kubelet::runtime::image::local_layer(&bin, &cache).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/tinykube", "toolbox"], "Cmd": ["serve", "--port", "9090"]},
        "rootfs": {"type": "layers", "diff_ids": [digest]},
    });
    let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer0/layer.tar"]}]);
    let mut t = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        t.append_data(&mut h, name, data).unwrap();
    };
    add("config.json", config.to_string().as_bytes());
    add("manifest.json", manifest.to_string().as_bytes());
    add("layer0/layer.tar", &std::fs::read(&layer).unwrap());
    t.finish().unwrap();
    let _ = std::fs::remove_dir_all(&cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_tarballs_are_imported_and_missing_images_fail_to_pull() {
    let mut cluster = TestLab::start(1).await;
    let client = cluster.client().await;
    let worker = format!("{}-worker-1", cluster.name);
    let images = cluster.lab().node(&worker).unwrap().data_dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    docker_archive(&images.join("hello.tar"), "example.com/hello:v1");
    // Tarballs are imported when the agent starts.
    cluster.lab_mut().kill_node(&worker).await.unwrap();
    cluster.lab_mut().start_node(&worker).unwrap();
    let kubectl = cluster.kubectl();
    let listed = eventually(Duration::from_secs(60), async || {
        let out = kubectl.ok(&[
            "get",
            "node",
            &worker,
            "-o",
            "jsonpath={.status.images[*].names}",
        ]);
        out.contains("example.com/hello:v1").then_some(out)
    })
    .await;
    assert!(
        listed.is_some(),
        "the imported image is in the node's status.images"
    );
    kubectl.ok_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hello}
spec:
  containers:
  - {name: c, image: example.com/hello:v1, imagePullPolicy: IfNotPresent}
---
apiVersion: v1
kind: Pod
metadata: {name: missing}
spec:
  containers:
  - {name: c, image: example.com/missing:v1}
"#,
    );
    wait_pod(&client, "hello", 60, "Running", running).await;
    let log = eventually(Duration::from_secs(20), async || {
        let l = kubectl.ok(&["logs", "hello"]);
        l.contains("serving on :9090").then_some(l)
    })
    .await;
    assert!(log.is_some(), "the imported image's own command runs");
    let p = wait_pod(&client, "missing", 60, "a pull error", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs[0].state.as_ref()?.waiting.as_ref()?.reason.clone())
            .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
    })
    .await;
    assert_eq!(phase(&p), "Pending");
    cluster.down().await;
}

/// Debian's docker-registry, run inside the master's network namespace (made by the
/// test) on the master's address; stopped by pid when dropped.
struct Registry {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Registry {
    fn start(netns: &str, addr: &str, dir: std::path::PathBuf) -> Self {
        let found = std::process::Command::new("sh")
            .args(["-c", "command -v docker-registry"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "docker-registry is not installed; this test pushes to a real registry (apt-get install docker-registry)"
        );
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{netns}"))
            .args(["docker-registry", "serve"])
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nsenter starts the registry");
        Self { child, dir }
    }

    /// What went wrong with the registry, for a failing assertion: whether it exited,
    /// and its log.
    fn report(&mut self) -> String {
        let state = match self.child.try_wait() {
            Ok(Some(status)) => format!("the registry exited ({status})"),
            _ => "the registry is running".to_string(),
        };
        let log = std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
        format!("{state}; its log:\n{log}")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_from_a_registry() {
    let cluster = TestLab::start_with(1, &["--insecure-registry", "{master}:5000"]).await;
    let client = cluster.client().await;
    let master = cluster.lab().state.nodes[0].clone();
    let registry_addr = format!("{}:5000", master.ip);
    let mut registry = Registry::start(&master.netns, &registry_addr, cluster.dir.join("registry"));

    // Push an image made from the tinykube binary (layer, config, manifest).
    let bin = tinykube_tests::tinykube_bin().unwrap();
    let cache = cluster.dir.join("push-layer");
    let (layer, digest, _) = tinykube_kubelet::runtime::image::local_layer(&bin, &cache).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/tinykube", "toolbox"], "Cmd": ["serve", "--port", "9191"]},
        "rootfs": {"type": "layers", "diff_ids": [digest]},
    });
    let oci = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let reference: oci_client::Reference = format!("{registry_addr}/lab/hello:v2").parse().unwrap();
    let layers = vec![oci_client::client::ImageLayer::new(
        std::fs::read(&layer).unwrap(),
        "application/vnd.oci.image.layer.v1.tar".into(),
        None,
    )];
    let cfg = oci_client::client::Config::new(
        config.to_string().into_bytes(),
        "application/vnd.oci.image.config.v1+json".into(),
        None,
    );
    let pushed = eventually(Duration::from_secs(20), async || {
        oci.push(
            &reference,
            &layers,
            cfg.clone(),
            &oci_client::secrets::RegistryAuth::Anonymous,
            None,
        )
        .await
        .ok()
    })
    .await;
    assert!(
        pushed.is_some(),
        "image pushed to the registry: {}",
        registry.report()
    );

    let kubectl = cluster.kubectl();
    kubectl.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: pulled}}\nspec:\n  containers:\n  - {{name: c, image: {registry_addr}/lab/hello:v2}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: absent}}\nspec:\n  containers:\n  - {{name: c, image: {registry_addr}/lab/absent:v1}}\n"
        ),
    );
    wait_pod(&client, "pulled", 90, "Running", running).await;
    let log = eventually(Duration::from_secs(20), async || {
        let l = kubectl.ok(&["logs", "pulled"]);
        l.contains("serving on :9191").then_some(l)
    })
    .await;
    assert!(log.is_some(), "the pulled image runs its own command");
    let p = wait_pod(&client, "absent", 60, "a pull error", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs[0].state.as_ref()?.waiting.clone())
            .is_some_and(|w| {
                w.reason.as_deref() == Some("ErrImagePull")
                    || w.reason.as_deref() == Some("ImagePullBackOff")
            })
    })
    .await;
    let w = p.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert!(
        w.message.unwrap_or_default().contains("lab/absent"),
        "the message names the image"
    );
    let _ = std::fs::remove_dir_all(&cache);
    cluster.down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_survive_a_containerd_restart_under_the_agent() {
    let mut cluster = TestLab::start_own_containerd(1).await;
    let client = cluster.client().await;
    let kubectl = cluster.kubectl();
    kubectl.ok(&["run", "steady", "--image=tinykube.local/toolbox"]);
    let before = wait_pod(&client, "steady", 60, "Running", running)
        .await
        .status
        .unwrap();
    cluster.lab_mut().restart_containerd().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = pod(&client, "steady").await.status.unwrap();
    let (b, a) = (
        &before.container_statuses.as_ref().unwrap()[0],
        &after.container_statuses.as_ref().unwrap()[0],
    );
    assert_eq!(a.container_id, b.container_id, "the same container runs on");
    assert_eq!(a.restart_count, 0);
    assert!(a.ready);
    // The agent keeps working through the new containerd: a new pod, logs, a deletion.
    kubectl.ok(&["run", "after", "--image=tinykube.local/toolbox"]);
    wait_pod(&client, "after", 60, "Running", running).await;
    let log = kubectl.ok(&["logs", "steady"]);
    assert!(log.contains("serving on :8080"), "{log}");
    kubectl.ok(&["delete", "pod", "steady", "--timeout=60s"]);
    cluster.down().await;
}
