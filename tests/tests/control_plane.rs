//! The control plane on hollow nodes, driven with the real kubectl where a user would
//! type it: the course's cordon/scale/expose flow, rolling updates and undo, node
//! failure and eviction, cascading deletes, unschedulable pods, and a master restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod};
use kube::api::{Api, ListParams};
use tinykube_tests::{Kubectl, TestMaster, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn fast() -> tinykube_controllers::Config {
    tinykube_controllers::Config {
        node_monitor_grace: Duration::from_secs(3),
        node_monitor_period: Duration::from_millis(300),
        ..Default::default()
    }
}

async fn lab() -> (TestMaster, tinykube_node::hollow::HollowNodes, Kubectl) {
    let m = TestMaster::builder()
        .control_plane(fast())
        .toleration_seconds(2)
        .start()
        .await;
    let nodes = m
        .hollow_nodes(
            &["master", "worker1", "worker2"],
            Duration::from_millis(500),
        )
        .await;
    let k = m.kubectl();
    k.ok(&[
        "label",
        "node",
        "master",
        "node-role.kubernetes.io/control-plane=",
    ]);
    k.ok(&[
        "taint",
        "node",
        "master",
        "node-role.kubernetes.io/control-plane:NoSchedule",
    ]);
    (m, nodes, k)
}

/// Running pods of a deployment (by its app label), per node.
async fn placement(client: &kube::Client, app: &str) -> BTreeMap<String, usize> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut out = BTreeMap::new();
    for p in pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
    {
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if running && p.metadata.deletion_timestamp.is_none() {
            *out.entry(p.spec.unwrap().node_name.unwrap_or_default())
                .or_default() += 1;
        }
    }
    out
}

async fn wait_placement(client: &kube::Client, app: &str, total: usize) -> BTreeMap<String, usize> {
    let got = eventually(WAIT, async || {
        let p = placement(client, app).await;
        (p.values().sum::<usize>() == total).then_some(p)
    })
    .await;
    got.unwrap_or_else(|| panic!("{app} never reached {total} running pods"))
}

/// Lists the pods matching `selector` every 20 ms, handing each list to `f`, until aborted.
fn sample(
    client: &kube::Client,
    selector: &str,
    f: impl Fn(&[Pod]) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let selector = selector.to_string();
    tokio::spawn(async move {
        loop {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .unwrap();
            f(&list.items);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

async fn endpoint_count(client: &kube::Client, svc: &str) -> usize {
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    eps.get_opt(svc)
        .await
        .unwrap()
        .map(|e| {
            e.subsets
                .unwrap_or_default()
                .iter()
                .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn course_flow_cordon_spread_scale_and_endpoints() {
    let (m, nodes, k) = lab().await;
    let client = m.client().await;
    assert_eq!(k.ok(&["cordon", "worker2"]).trim(), "node/worker2 cordoned");
    let table = k.ok(&["get", "nodes"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("worker2") && l.contains("Ready,SchedulingDisabled")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("master") && l.contains("control-plane")),
        "{table}"
    );

    k.ok(&["create", "deployment", "server", "--image=nginx"]);
    assert_eq!(
        wait_placement(&client, "server", 1).await,
        BTreeMap::from([("worker1".to_string(), 1)])
    );
    k.ok(&["uncordon", "worker2"]);
    k.ok(&["create", "deployment", "client", "--image=nginx"]);
    assert_eq!(
        wait_placement(&client, "client", 1).await,
        BTreeMap::from([("worker2".to_string(), 1)])
    );

    k.ok(&["scale", "deployment", "server", "--replicas=6"]);
    let p = wait_placement(&client, "server", 6).await;
    assert_eq!(
        p,
        BTreeMap::from([("worker1".to_string(), 3), ("worker2".to_string(), 3)]),
        "none on the master"
    );
    k.ok(&["expose", "deployment", "server", "--port=80"]);
    assert!(
        eventually(WAIT, async || (endpoint_count(&client, "server").await
            == 6)
            .then_some(()))
        .await
        .is_some()
    );
    let ep = k.ok(&["get", "endpoints", "server"]);
    assert!(ep.contains("+ 3 more..."), "{ep}");
    let slices = k.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=server",
        "-o",
        "name",
    ]);
    assert_eq!(slices.lines().count(), 1, "{slices}");
    k.ok(&["scale", "deployment", "server", "--replicas=2"]);
    assert!(
        eventually(WAIT, async || (endpoint_count(&client, "server").await
            == 2)
            .then_some(()))
        .await
        .is_some()
    );
    let d = k.ok(&["get", "deploy", "server"]);
    assert!(
        eventually(WAIT, async || k
            .ok(&["get", "deploy", "server"])
            .contains(" 2/2 ")
            .then_some(()))
        .await
        .is_some(),
        "{d}"
    );
    let describe = k.ok(&["describe", "pod", "-l", "app=server"]);
    assert!(
        describe.contains("Successfully assigned default/server-"),
        "{describe}"
    );
    nodes.stop().await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_update_keeps_availability_and_undo_goes_back() {
    let (m, nodes, k) = lab().await;
    let client = m.client().await;
    k.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1",
        "--replicas=6",
    ]);
    k.ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);

    // Watch availability through the rollout: maxUnavailable 25% of 6 is 1.
    let lowest = Arc::new(AtomicI32::new(i32::MAX));
    let watcher = {
        let lowest = lowest.clone();
        sample(&client, "app=web", move |pods| {
            let ready = pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count() as i32;
            lowest.fetch_min(ready, Ordering::SeqCst);
        })
    };
    k.ok(&["set", "image", "deployment/web", "nginx=nginx:2"]);
    k.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    watcher.abort();
    assert!(
        lowest.load(Ordering::SeqCst) >= 5,
        "availability fell to {}",
        lowest.load(Ordering::SeqCst)
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let image = |d: Deployment| {
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    };
    assert_eq!(image(deployments.get("web").await.unwrap()), "nginx:2");
    let history = k.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    k.ok(&["rollout", "undo", "deployment/web"]);
    k.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert_eq!(image(deployments.get("web").await.unwrap()), "nginx:1");
    let pods = wait_placement(&client, "web", 6).await;
    assert_eq!(pods.values().sum::<usize>(), 6);
    let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let active: Vec<_> = rs
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|r| r.spec.as_ref().unwrap().replicas.unwrap_or(0) > 0)
        .collect();
    assert_eq!(
        active.len(),
        1,
        "only the undone-to ReplicaSet has replicas"
    );
    assert!(k.ok(&["get", "deploy", "web"]).contains("6/6"));
    nodes.stop().await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_node_goes_not_ready_and_its_pods_move() {
    let (m, nodes, k) = lab().await;
    let client = m.client().await;
    k.ok(&[
        "create",
        "deployment",
        "server",
        "--image=nginx",
        "--replicas=4",
    ]);
    let before = wait_placement(&client, "server", 4).await;
    assert_eq!(before.get("worker1"), Some(&2));

    nodes.pause("worker1");
    let not_ready = eventually(Duration::from_secs(15), async || {
        k.ok(&["get", "node", "worker1"])
            .contains("NotReady")
            .then_some(())
    })
    .await;
    assert!(
        not_ready.is_some(),
        "worker1 turns NotReady within the grace period"
    );
    let node_api: Api<Node> = Api::all(client.clone());
    let tainted = eventually(Duration::from_secs(10), async || {
        let taints = node_api
            .get("worker1")
            .await
            .unwrap()
            .spec
            .unwrap()
            .taints
            .unwrap_or_default();
        taints
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
            .then_some(())
    })
    .await;
    assert!(tainted.is_some(), "the unreachable taint is added");
    // Its pods are marked not ready (kube's MarkPodsNotReady), so their Services stop
    // sending them traffic before they are evicted.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let silent_ready = async || -> Vec<String> {
        pods.list(&ListParams::default().labels("app=server"))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("worker1"))
            .map(|p| {
                p.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| c.status)
                    .unwrap_or_default()
            })
            .collect()
    };
    let marked = eventually(Duration::from_secs(20), async || {
        let r = silent_ready().await;
        (!r.is_empty() && r.iter().all(|s| s == "False")).then_some(())
    })
    .await;
    assert!(
        marked.is_some(),
        "the silent node's pods are not ready: {:?}",
        silent_ready().await
    );
    let want = BTreeMap::from([("worker2".to_string(), 4)]);
    let moved = eventually(WAIT, async || {
        let p = placement(&client, "server").await;
        (p == want).then_some(p)
    })
    .await;
    assert!(
        moved.is_some(),
        "replaced on the healthy worker: {:?}",
        placement(&client, "server").await
    );

    nodes.resume("worker1");
    assert!(
        eventually(WAIT, async || {
            let out = k.ok(&["get", "node", "worker1"]);
            (out.contains(" Ready ") && !out.contains("NotReady")).then_some(())
        })
        .await
        .is_some()
    );
    // The evicted pods are confirmed gone; nothing is duplicated.
    let settled = eventually(WAIT, async || {
        let all = pods
            .list(&ListParams::default().labels("app=server"))
            .await
            .unwrap()
            .items;
        (all.len() == 4).then_some(all)
    })
    .await;
    assert!(settled.is_some(), "exactly the 4 replicas remain");
    nodes.stop().await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cascading_and_orphaning_deletes() {
    let (m, nodes, k) = lab().await;
    let client = m.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    k.ok(&[
        "create",
        "deployment",
        "gone",
        "--image=nginx",
        "--replicas=3",
    ]);
    wait_placement(&client, "gone", 3).await;
    k.ok(&["delete", "deployment", "gone"]);
    let cleared = eventually(WAIT, async || {
        let p = pods
            .list(&ListParams::default().labels("app=gone"))
            .await
            .unwrap()
            .items
            .len();
        let r = rs
            .list(&ListParams::default().labels("app=gone"))
            .await
            .unwrap()
            .items
            .len();
        (p == 0 && r == 0).then_some(())
    })
    .await;
    assert!(
        cleared.is_some(),
        "the ReplicaSet and its pods follow the deployment"
    );

    k.ok(&[
        "create",
        "deployment",
        "kept",
        "--image=nginx",
        "--replicas=2",
    ]);
    wait_placement(&client, "kept", 2).await;
    k.ok(&["delete", "deployment", "kept", "--cascade=orphan"]);
    let orphaned = eventually(WAIT, async || {
        let d: Api<Deployment> = Api::namespaced(client.clone(), "default");
        d.get_opt("kept").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(orphaned.is_some());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let left = rs
        .list(&ListParams::default().labels("app=kept"))
        .await
        .unwrap()
        .items;
    assert_eq!(left.len(), 1, "orphaned ReplicaSet stays");
    assert!(
        left[0]
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|r| r.is_empty())
    );
    assert_eq!(
        placement(&client, "kept").await.values().sum::<usize>(),
        2,
        "orphaned pods keep running"
    );
    nodes.stop().await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unschedulable_pod_waits_with_the_kubernetes_message() {
    let (m, nodes, k) = lab().await;
    let client = m.client().await;
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: hp}}\nspec:\n  containers:\n  - name: c\n    image: nginx\n    ports:\n    - containerPort: 80\n      hostPort: 8080\n"
        )
    };
    k.ok_stdin(&["apply", "-f", "-"], &pod("hp1"));
    k.ok_stdin(&["apply", "-f", "-"], &pod("hp2"));
    wait_placement(&client, "hp", 2).await;
    k.ok_stdin(&["apply", "-f", "-"], &pod("hp3"));
    let expected = "0/3 nodes are available: 2 node(s) didn't have free ports for the requested pod ports, 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }.";
    let described = eventually(WAIT, async || {
        let d = k.ok(&["describe", "pod", "hp3"]);
        d.contains(expected).then_some(d)
    })
    .await;
    assert!(described.is_some(), "{}", k.ok(&["describe", "pod", "hp3"]));
    assert!(k.ok(&["get", "pod", "hp3"]).contains("Pending"));
    k.ok(&["delete", "pod", "hp1"]);
    let p = wait_placement(&client, "hp", 2).await;
    assert_eq!(p.values().sum::<usize>(), 2);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    assert!(
        eventually(WAIT, async || {
            pods.get("hp3")
                .await
                .unwrap()
                .spec
                .unwrap()
                .node_name
                .is_some()
                .then_some(())
        })
        .await
        .is_some(),
        "hp3 is scheduled once a node frees up"
    );
    nodes.stop().await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_master_serves_its_metrics_and_folds_repeated_events() {
    let (m, nodes, k) = lab().await;
    // A pod no node can take: one FailedScheduling event, its count going up with each
    // attempt a node change brings, not a new event per attempt.
    k.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: nowhere\nspec:\n  nodeSelector: {disk: none}\n  containers:\n  - name: c\n    image: nginx\n",
    );
    let failed = |k: &Kubectl| {
        let out = k.ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=FailedScheduling,involvedObject.name=nowhere",
            "-o",
            "jsonpath={range .items[*]}{.count}{\" \"}{end}",
        ]);
        out.split_whitespace()
            .map(|c| c.parse::<i64>().unwrap())
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(WAIT, async || (failed(&k).len() == 1).then_some(()))
            .await
            .is_some()
    );
    // Node changes that matter for scheduling (a label) send the pod back to the queue.
    k.ok(&["label", "node", "worker1", "zone=a"]);
    k.ok(&["label", "node", "worker2", "zone=b"]);
    let folded = eventually(WAIT, async || {
        let counts = failed(&k);
        (counts.len() == 1 && counts[0] >= 2).then_some(counts)
    })
    .await;
    assert!(
        folded.is_some(),
        "one event whose count grows: {:?}",
        failed(&k)
    );

    let metrics = k.ok(&["get", "--raw", "/metrics"]);
    for want in [
        "apiserver_request_total{verb=\"LIST\",group=\"\",version=\"v1\",resource=\"pods\"",
        "apiserver_request_duration_seconds_bucket{",
        "apiserver_storage_objects{resource=\"pods\"} ",
        "apiserver_longrunning_requests{verb=\"WATCH\"",
        "etcd_request_duration_seconds_count{operation=\"create\",resource=\"pods\"}",
        "workqueue_depth{name=\"replicaset\"}",
        "workqueue_adds_total{name=\"scheduler\"}",
        "scheduler_pending_pods{queue=\"unschedulable\"} 1",
        "scheduler_schedule_attempts_total{result=\"unschedulable\",profile=\"default-scheduler\"}",
    ] {
        assert!(metrics.contains(want), "{want} in:\n{metrics}");
    }
    // Authorised as kube-apiserver's: a user without system:monitoring may not.
    let denied = k.fails(&["get", "--raw", "/metrics", "--as", "jane"]);
    assert!(denied.contains("forbidden"), "{denied}");
    let allowed = k.ok(&[
        "get",
        "--raw",
        "/metrics",
        "--as",
        "jane",
        "--as-group",
        "system:monitoring",
    ]);
    assert!(allowed.contains("apiserver_request_total"));
    nodes.stop().await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controllers_started_after_their_objects_reconcile_them() {
    // A master restart mid-rollout once left a deployment unreconciled: the new
    // controllers' caches had filled before they subscribed to them, and nothing changed
    // afterwards. Here the objects exist before any controller runs, and nothing
    // changes once they start.
    let m = TestMaster::builder().start().await;
    let nodes = m
        .hollow_nodes(&["worker1"], Duration::from_millis(500))
        .await;
    let k = m.kubectl();
    k.ok(&[
        "create",
        "deployment",
        "late",
        "--image=nginx:1",
        "--replicas=2",
    ]);
    let client = m.client().await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let caches = tinykube_client::Informers::start(&client, &cancel);
    let controllers = tokio::spawn(tinykube_controllers::run(
        client.clone(),
        caches.clone(),
        fast(),
        cancel.clone(),
    ));
    let scheduler = tokio::spawn({
        let (client, caches, cancel) = (client.clone(), caches.clone(), cancel.clone());
        async move {
            let metrics = tinykube_api::metrics::Metrics::default();
            tinykube_scheduler::run(client, caches, &metrics, cancel).await
        }
    });
    let ready = eventually(Duration::from_secs(20), async || {
        let d: Api<Deployment> = Api::namespaced(client.clone(), "default");
        let d = d.get("late").await.ok()?;
        (d.status?.ready_replicas? == 2).then_some(())
    })
    .await;
    cancel.cancel();
    let _ = tokio::join!(controllers, scheduler, caches.stopped());
    nodes.stop().await;
    assert!(
        ready.is_some(),
        "the deployment that existed before the controllers is reconciled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_restart_mid_rollout() {
    let (m, nodes, k) = lab().await;
    let client = m.client().await;
    k.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1",
        "--replicas=6",
    ]);
    wait_placement(&client, "web", 6).await;
    let node_api: Api<Node> = Api::all(client.clone());
    let cidrs = |list: Vec<Node>| -> BTreeMap<String, String> {
        list.into_iter()
            .map(|n| {
                (
                    n.metadata.name.unwrap(),
                    n.spec.unwrap().pod_cidr.unwrap_or_default(),
                )
            })
            .collect()
    };
    let before = cidrs(node_api.list(&Default::default()).await.unwrap().items);
    assert!(
        before.values().all(|c| c.starts_with("10.244.")),
        "{before:?}"
    );
    k.ok(&["set", "image", "deployment/web", "nginx=nginx:2"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kubeconfig_home = k.clone();
    let (dir, addr) = m.stop_keeping_data().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = TestMaster::builder()
        .control_plane(fast())
        .toleration_seconds(2)
        .reuse(dir, addr)
        .start()
        .await;
    let k = Kubectl {
        kubeconfig: m.kubeconfig().to_path_buf(),
        home: kubeconfig_home.home,
    };
    let rollout = k.run(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    if !rollout.ok {
        // What the next person needs to tell a stuck controller from a stuck node.
        let state = k.run(&["get", "deploy,rs,pods,nodes", "-o", "wide"]);
        let objects = k.run(&["get", "deploy,rs", "-o", "yaml"]);
        panic!(
            "rollout did not finish after the master restart: {}{}\n{}\n{}",
            rollout.stdout, rollout.stderr, state.stdout, objects.stdout
        );
    }
    let client = m.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let settled = eventually(WAIT, async || {
        let all = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items;
        (all.len() == 6).then_some(all)
    })
    .await
    .expect("exactly 6 pods after the rollout, no duplicates");
    assert!(
        settled
            .iter()
            .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("nginx:2"))
    );
    let node_api: Api<Node> = Api::all(client.clone());
    assert_eq!(
        cidrs(node_api.list(&Default::default()).await.unwrap().items),
        before,
        "podCIDRs unchanged"
    );
    nodes.stop().await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recreate_foreground_and_named_ports() {
    let (m, nodes, k) = lab().await;
    let client = m.client().await;
    let manifest = |image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: batch\nspec:\n  replicas: 3\n  strategy:\n    type: Recreate\n  selector:\n    matchLabels: {{app: batch}}\n  template:\n    metadata:\n      labels: {{app: batch}}\n    spec:\n      containers:\n      - name: c\n        image: {image}\n        ports:\n        - {{name: http, containerPort: 8080}}\n"
        )
    };
    k.ok_stdin(&["apply", "-f", "-"], &manifest("app:1"));
    k.ok(&["rollout", "status", "deployment/batch", "--timeout=30s"]);

    // Recreate: old pods are all gone before any new one is created.
    let overlap = Arc::new(AtomicI32::new(0));
    let watcher = {
        let overlap = overlap.clone();
        sample(&client, "app=batch", move |pods| {
            let images: std::collections::BTreeSet<String> = pods
                .iter()
                .map(|p| {
                    p.spec.as_ref().unwrap().containers[0]
                        .image
                        .clone()
                        .unwrap_or_default()
                })
                .collect();
            if images.len() > 1 {
                overlap.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    k.ok_stdin(&["apply", "-f", "-"], &manifest("app:2"));
    k.ok(&["rollout", "status", "deployment/batch", "--timeout=60s"]);
    watcher.abort();
    assert_eq!(
        overlap.load(Ordering::SeqCst),
        0,
        "old and new pods never coexist under Recreate"
    );

    // A named targetPort resolves to each pod's container port.
    let svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: batch\nspec:\n  selector: {app: batch}\n  ports:\n  - {port: 80, targetPort: http}\n";
    k.ok_stdin(&["apply", "-f", "-"], svc);
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let resolved = eventually(WAIT, async || {
        let e = eps.get_opt("batch").await.unwrap()?;
        let s = e.subsets?.into_iter().next()?;
        (s.addresses.as_ref().map_or(0, Vec::len) == 3 && s.ports.as_ref()?[0].port == 8080)
            .then_some(())
    })
    .await;
    assert!(
        resolved.is_some(),
        "{}",
        k.ok(&["get", "endpoints", "batch", "-o", "yaml"])
    );

    // Foreground: the deployment waits for its dependents, then goes.
    k.ok(&[
        "delete",
        "deployment",
        "batch",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let gone = eventually(WAIT, async || {
        let d = deployments.get_opt("batch").await.unwrap();
        let left = pods
            .list(&ListParams::default().labels("app=batch"))
            .await
            .unwrap()
            .items
            .len();
        // While the deployment exists its pods may remain; once it is gone, so are they.
        if let Some(d) = d {
            assert!(d.metadata.deletion_timestamp.is_some());
            return None;
        }
        Some(left)
    })
    .await;
    assert_eq!(
        gone,
        Some(0),
        "the deployment is removed only after its pods"
    );
    nodes.stop().await;
    m.shutdown().await;
}
