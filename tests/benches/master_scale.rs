//! The master at scale, as users run it: `tinykube master` as its own release process
//! with controllers and scheduler on, 100 hollow nodes, then
//!   (a) a 10,000-replica deployment to all Ready,
//!   (b) scaled to 6 with the other 9,994 pods gone, and the master's memory 60 s later,
//!   (c) 32 clients creating bare pods for 10 s with nodes present (and gets meanwhile),
//!   (d) the same with no node able to take them, counting the events written,
//!   (e) 10 create/delete cycles of 10,000 pods, measuring the data directory,
//! while a subscriber of a shared informer in this process stalls on every change
//! and must still end with the final state of every pod. The API server alone
//! (`--disable-controllers --disable-scheduler`, no nodes) does (c) in the same run as
//! the baseline.
//!
//! Run with `bench/control-plane` (it builds the release binary first). With
//! `BENCH_QUICK=1` only (a) and (b) run, for profiling the master's memory;
//! `BENCH_SCENARIOS=c` (any of the letters a-e) runs only those, and the table at the
//! end only when all ran.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tinykube_client::Informer;
use tinykube_node::hollow::{HollowConfig, HollowNodes};
use tinykube_tests::{MasterProcess, client_for, free_port, status_mb};

const CLIENTS: usize = 32;

fn rss(pid: u32) -> f64 {
    status_mb(pid, "VmRSS:")
}

fn dir_mb(path: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(p) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(path) as f64 / 1048576.0
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

fn start_master(extra: &[&str]) -> (tempfile::TempDir, MasterProcess) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("master");
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let master = MasterProcess::start_with(&data, addr, extra)
        .expect("release master starts (run bench/control-plane)");
    (dir, master)
}

async fn namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    let _ = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await;
}

fn bare_pod(unschedulable: bool) -> Pod {
    let mut p = json!({"metadata": {"generateName": "bare-", "labels": {"app": "bare"}},
        "spec": {"containers": [{"name": "c", "image": "toolbox",
                 "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}}]}});
    if unschedulable {
        p["spec"]["nodeSelector"] = json!({"bench.tinykube.io/nowhere": "true"});
    }
    serde_json::from_value(p).unwrap()
}

/// 32 clients creating pods in `ns` for `secs`; (creates/s, p99 ms, how many).
async fn create_for(clients: &[kube::Client], ns: &str, pod: &Pod, secs: u64) -> (f64, f64, usize) {
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| {
            let api: Api<Pod> = Api::namespaced(c.clone(), ns);
            let pod = pod.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    api.create(&PostParams::default(), &pod).await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    (rate, pct(&mut all, 0.99), all.len())
}

/// The ceiling for (c) on this machine: the API server alone taking, per pod, the writes
/// the components make for it in (c): the create, the scheduler's binding and its
/// `Scheduled` event, the node's status patch; 32 clients for `secs`. (pods/s, p99 ms
/// of the create.)
async fn same_writes_for(clients: &[kube::Client], ns: &str, secs: u64) -> (f64, f64) {
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| {
            let api: Api<Pod> = Api::namespaced(c.clone(), ns);
            let events: Api<Event> = Api::namespaced(c.clone(), ns);
            let pod = bare_pod(false);
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    let p = api.create(&PostParams::default(), &pod).await.unwrap();
                    lat.push(t.elapsed());
                    let name = p.metadata.name.clone().unwrap_or_default();
                    let binding = json!({"apiVersion": "v1", "kind": "Binding",
                        "metadata": {"name": name, "namespace": ns_of(&p), "uid": p.metadata.uid},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": "hollow001"}});
                    api.create_subresource::<_, serde_json::Value>(
                        "binding",
                        &name,
                        &PostParams::default(),
                        &binding,
                    )
                    .await
                    .unwrap();
                    let event: Event = serde_json::from_value(json!({
                        "metadata": {"generateName": format!("{name}.")},
                        "involvedObject": {"kind": "Pod", "namespace": ns_of(&p), "name": name, "uid": p.metadata.uid},
                        "reason": "Scheduled", "type": "Normal", "count": 1,
                        "message": format!("Successfully assigned {}/{name} to hollow001", ns_of(&p)),
                        "source": {"component": "default-scheduler"}}))
                    .unwrap();
                    events.create(&PostParams::default(), &event).await.unwrap();
                    let status = json!({"status": {"phase": "Running", "podIP": "10.244.1.2",
                        "conditions": [{"type": "Ready", "status": "True"}]}});
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                        .await
                        .unwrap();
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (
        all.len() as f64 / start.elapsed().as_secs_f64(),
        pct(&mut all, 0.99),
    )
}

fn ns_of(p: &Pod) -> String {
    p.metadata.namespace.clone().unwrap_or_default()
}

/// `n` gets of the first 500 pods in `ns` by name, from one client while the cluster
/// works; p99 ms.
async fn gets(client: &kube::Client, ns: &str, n: usize) -> f64 {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = api
        .list(&ListParams::default().limit(500))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let mut lat = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        api.get(&names[i % names.len()]).await.unwrap();
        lat.push(t.elapsed());
    }
    pct(&mut lat, 0.99)
}

async fn count_pods(api: &Api<Pod>, labels: &str) -> usize {
    let mut n = 0;
    let mut lp = ListParams::default().labels(labels).limit(5000);
    loop {
        let page = api.list(&lp).await.unwrap();
        n += page.items.len();
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => return n,
        }
    }
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed().as_secs_f64()
}

/// What the stalled subscriber and a plain watch of every pod saw: (uid -> last
/// resourceVersion) each, and how many changes the watch delivered; and the pods the
/// watch shows alive (uid -> namespace), which the waits below read instead of listing
/// 10,000 pods ten times a second.
#[derive(Default)]
struct Seen {
    subscriber: HashMap<String, String>,
    watch: HashMap<String, String>,
    changes: u64,
    live: HashMap<String, String>,
    relist: HashMap<String, String>,
}

impl Seen {
    fn alive_in(&self, ns: &str) -> usize {
        self.live.values().filter(|n| *n == ns).count()
    }
}

type Shared = Arc<Mutex<Seen>>;

fn uid_ns(p: &Pod) -> (String, String) {
    (
        p.metadata.uid.clone().unwrap_or_default(),
        p.metadata.namespace.clone().unwrap_or_default(),
    )
}

/// Waits until `ns` holds `n` pods labelled `labels`: the watch says so first, then a
/// list confirms it.
async fn wait_pods(seen: &Shared, api: &Api<Pod>, ns: &str, labels: &str, n: usize) {
    wait_for("pods counted", Duration::from_secs(600), || async {
        let watched = seen.lock().unwrap().alive_in(ns);
        watched == n && count_pods(api, labels).await == n
    })
    .await;
}

fn record(map: &mut HashMap<String, String>, p: &Pod) {
    if let (Some(uid), Some(rv)) = (&p.metadata.uid, &p.metadata.resource_version) {
        map.insert(uid.clone(), rv.clone());
    }
}

/// Events the scheduler wrote in `ns`: Event objects and the writes their counts say.
async fn scheduling_events(client: &kube::Client, ns: &str) -> (usize, i64) {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = events.list(&ListParams::default()).await.unwrap().items;
    let failed: Vec<&Event> = list
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
        .collect();
    let writes = failed.iter().map(|e| i64::from(e.count.unwrap_or(1))).sum();
    (failed.len(), writes)
}

async fn delete_all(seen: &Shared, api: &Api<Pod>, ns: &str, labels: &str) {
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels(labels),
    )
    .await
    .unwrap();
    wait_pods(seen, api, ns, labels, 0).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tinykube_tests::init_crypto();

    let quick = std::env::var("BENCH_QUICK").as_deref() == Ok("1");
    let scenarios = match std::env::var("BENCH_SCENARIOS") {
        Ok(s) => s,
        Err(_) if quick => "ab".into(),
        Err(_) => "abcde".into(),
    };
    let run = |s: char| scenarios.contains(s);
    // The baseline first: the API server alone, (c) only.
    let (alone_rate, alone_p99, alone_get_p99, alone_same) = if !run('c') {
        (f64::NAN, f64::NAN, f64::NAN, f64::NAN)
    } else {
        let (_dir, master) = start_master(&["--disable-controllers", "--disable-scheduler"]);
        let admin = client_for(&master.kubeconfig()).await;
        namespace(&admin, "bare").await;
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(client_for(&master.kubeconfig()).await);
        }
        let (rate, p99, _) = create_for(&clients, "bare", &bare_pod(false), 10).await;
        let get_p99 = gets(&admin, "bare", 2000).await;
        namespace(&admin, "same").await;
        let (same, same_p99) = same_writes_for(&clients, "same", 10).await;
        println!(
            "API server alone, the four writes (c) makes per pod: {same:.0} pods/s, create p99 {same_p99:.1} ms"
        );
        (rate, p99, get_p99, same)
    };
    println!(
        "API server alone: {alone_rate:.0} creates/s, create p99 {alone_p99:.1} ms, get p99 {alone_get_p99:.2} ms"
    );

    let (dir, master) = start_master(&[]);
    let pid = master.child.id();
    let data = dir.path().join("master");
    let admin = client_for(&master.kubeconfig()).await;
    let names = (1..=100).map(|i| format!("hollow{i:03}")).collect();
    let config = HollowConfig {
        heartbeat: Duration::from_secs(10),
        cpu: "32".into(),
        memory: "64Gi".into(),
        max_pods: 250,
    };
    let nodes = HollowNodes::start(admin.clone(), names, config)
        .await
        .unwrap();
    for ns in ["bare", "unsched", "churn"] {
        namespace(&admin, ns).await;
    }

    // The lagging subscriber: a shared informer of every pod whose subscriber sleeps
    // on each change, beside a plain watch that records every change it delivers.
    let cancel = tokio_util::sync::CancellationToken::new();
    let informer = Informer::<Pod>::start(
        Api::all(admin.clone()),
        watcher::Config::default(),
        cancel.clone(),
    );
    informer.ready().await;
    let seen: Shared = Arc::new(Mutex::new(Seen::default()));
    let mut feed = informer.subscribe();
    let s = seen.clone();
    let slow = tokio::spawn(async move {
        while let Some(p) = feed.next().await {
            record(&mut s.lock().unwrap().subscriber, &p);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let s = seen.clone();
    let mut raw =
        watcher::watcher(Api::<Pod>::all(admin.clone()), watcher::Config::default()).boxed();
    let stop = cancel.clone();
    let plain = tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = raw.next() => ev,
            };
            let mut s = s.lock().unwrap();
            match ev {
                Some(Ok(watcher::Event::Apply(p))) => {
                    let (uid, ns) = uid_ns(&p);
                    s.live.insert(uid, ns);
                    record(&mut s.watch, &p);
                    s.changes += 1;
                }
                Some(Ok(watcher::Event::Delete(p))) => {
                    s.live.remove(&uid_ns(&p).0);
                    record(&mut s.watch, &p);
                    s.changes += 1;
                }
                Some(Ok(watcher::Event::Init)) => s.relist.clear(),
                Some(Ok(watcher::Event::InitApply(p))) => {
                    let (uid, ns) = uid_ns(&p);
                    s.relist.insert(uid, ns);
                    record(&mut s.watch, &p);
                    s.changes += 1;
                }
                Some(Ok(watcher::Event::InitDone)) => s.live = std::mem::take(&mut s.relist),
                Some(Err(_)) => {}
                None => return,
            }
        }
    });

    tokio::time::sleep(Duration::from_secs(15)).await;
    let pre = rss(pid);
    println!("master RSS with 100 nodes, before the load: {pre:.0} MB");

    let (mut ready_secs, mut at_10k, mut down_secs, mut after) =
        (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    if run('a') {
        // (a) 10,000 replicas to all Ready.
        let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "default");
        let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "big"},
            "spec": {"replicas": 10000, "selector": {"matchLabels": {"app": "big"}},
                     "template": {"metadata": {"labels": {"app": "big"}}, "spec": {"containers": [{"name": "c", "image": "toolbox"}]}}}})).unwrap();
        let start = Instant::now();
        deployments
            .create(&PostParams::default(), &d)
            .await
            .unwrap();
        let mut peak_during = 0f64;
        wait_for("10,000 replicas ready", Duration::from_secs(600), || {
            peak_during = peak_during.max(rss(pid));
            let deployments = deployments.clone();
            async move {
                let s = deployments
                    .get("big")
                    .await
                    .unwrap()
                    .status
                    .unwrap_or_default();
                s.ready_replicas == Some(10000) && s.available_replicas == Some(10000)
            }
        })
        .await;
        ready_secs = start.elapsed().as_secs_f64();
        at_10k = rss(pid);
        println!(
            "(a) 10,000 replicas Ready in {ready_secs:.1} s; master RSS {at_10k:.0} MB (peak seen {peak_during:.0} MB)"
        );

        // (b) scaled to 6, the other pods gone.
        let pods_default: Api<Pod> = Api::namespaced(admin.clone(), "default");
        let start = Instant::now();
        deployments
            .patch_scale(
                "big",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 6}})),
            )
            .await
            .unwrap();
        wait_pods(&seen, &pods_default, "default", "app=big", 6).await;
        down_secs = start.elapsed().as_secs_f64();
        let just_after = rss(pid);
        tokio::time::sleep(Duration::from_secs(60)).await;
        after = rss(pid);
        println!(
            "(b) scaled to 6 in {down_secs:.1} s; master RSS {just_after:.0} MB then, {after:.0} MB 60 s later ({:.2}x before the load)",
            after / pre
        );
    }
    if !(run('c') || run('d') || run('e')) {
        cancel.cancel();
        let _ = tokio::join!(slow, plain, informer.stopped());
        nodes.stop().await;
        return;
    }
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(client_for(&master.kubeconfig()).await);
    }
    let (mut rate, mut create_p99, mut get_p99) = (f64::NAN, f64::NAN, f64::NAN);
    if run('c') {
        // (c) bare pods with nodes present, and gets while the cluster works on them.
        let pods_bare: Api<Pod> = Api::namespaced(admin.clone(), "bare");
        let created;
        (rate, create_p99, created) = create_for(&clients, "bare", &bare_pod(false), 10).await;
        get_p99 = gets(&admin, "bare", 2000).await;
        println!(
            "(c) {rate:.0} creates/s ({created} pods, {:.2}x the API server alone, {:.2}x it doing the same writes), create p99 {create_p99:.1} ms, get p99 {get_p99:.2} ms",
            rate / alone_rate,
            rate / alone_same
        );
        delete_all(&seen, &pods_bare, "bare", "app=bare").await;
    }
    let (mut unsched, mut objects, mut writes) = (0usize, 0usize, 0i64);
    if run('d') {
        // (d) no node can take them.
        let (d_rate, d_p99);
        (d_rate, d_p99, unsched) = create_for(&clients, "unsched", &bare_pod(true), 10).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        (objects, writes) = scheduling_events(&admin, "unsched").await;
        println!(
            "(d) {d_rate:.0} creates/s, p99 {d_p99:.1} ms, {unsched} unschedulable pods: {objects} FailedScheduling events, {writes} event writes ({:.2} per pod)",
            writes as f64 / unsched as f64
        );
        let pods_unsched: Api<Pod> = Api::namespaced(admin.clone(), "unsched");
        delete_all(&seen, &pods_unsched, "unsched", "app=bare").await;
    }
    let mut sizes = vec![f64::NAN; 10];
    if run('e') {
        // (e) churn: 10 cycles of 10,000 pods created and deleted.
        let pods_churn: Api<Pod> = Api::namespaced(admin.clone(), "churn");
        sizes.clear();
        for cycle in 0..10 {
            let body = bare_pod(false);
            futures::stream::iter(0..10_000)
                .map(|_| {
                    let (api, body) = (
                        Api::<Pod>::namespaced(clients[cycle % CLIENTS].clone(), "churn"),
                        body.clone(),
                    );
                    async move { api.create(&PostParams::default(), &body).await.unwrap() }
                })
                .buffer_unordered(CLIENTS)
                .for_each(|_| futures::future::ready(()))
                .await;
            delete_all(&seen, &pods_churn, "churn", "app=bare").await;
            let size = dir_mb(&data);
            println!(
                "(e) cycle {}: data directory {size:.1} MB, master RSS {:.0} MB",
                cycle + 1,
                rss(pid)
            );
            sizes.push(size);
        }
    }
    // The lagging subscriber's view against the plain watch's.
    tokio::time::sleep(Duration::from_secs(5)).await;
    wait_for(
        "the subscriber catches up",
        Duration::from_secs(600),
        || {
            let n = informer.pending();
            async move { n == 0 }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (lost, changes, objects_seen) = {
        let s = seen.lock().unwrap();
        let lost = s
            .watch
            .iter()
            .filter(|(uid, rv)| s.subscriber.get(*uid) != Some(rv))
            .count();
        (lost, s.changes, s.watch.len())
    };
    println!(
        "lagging subscriber (2 ms per change): {changes} changes to {objects_seen} pods, {lost} pods whose last state it did not see"
    );
    cancel.cancel();
    let _ = tokio::join!(slow, plain, informer.stopped());
    let peak = status_mb(pid, "VmHWM:");
    nodes.stop().await;
    drop(master);

    if scenarios != "abcde" {
        return;
    }
    let growth = sizes[9] / sizes[0];
    println!();
    println!("| figure | target | measured |");
    println!("| --- | --- | --- |");
    println!(
        "| master RSS at 10,000 running pods (100 hollow nodes) | <= 150 MB | {at_10k:.0} MB (before the load {pre:.0} MB; peak {peak:.0} MB) |"
    );
    println!(
        "| master RSS 60 s after scaling to 6 | <= 1.3x before the load | {after:.0} MB, {:.2}x |",
        after / pre
    );
    println!("| 10,000 replicas to all Ready | <= 15 s | {ready_secs:.1} s |");
    println!("| scaled to 6, the other 9,994 pods gone | <= 15 s | {down_secs:.1} s |");
    println!(
        "| creates/s, 32 clients, 100 nodes | >= 0.6x the API server alone | {rate:.0}/s, {:.2}x ({alone_rate:.0}/s alone; {:.2}x the {alone_same:.0} pods/s it takes with the same four writes per pod) |",
        rate / alone_rate,
        rate / alone_same
    );
    println!("| create p99 | <= 20 ms | {create_p99:.1} ms ({alone_p99:.1} ms alone) |");
    println!("| get p99 | <= 5 ms | {get_p99:.2} ms ({alone_get_p99:.2} ms alone) |");
    println!(
        "| events in (d): {unsched} unschedulable pods | <= 2 per pod + the burst | {writes} writes, {:.2} per pod, {objects} Events |",
        writes as f64 / unsched as f64
    );
    println!(
        "| data directory after 10 cycles of 10,000 pods | <= 2x after the first | {:.1} MB, {growth:.2}x ({:.1} MB after the first) |",
        sizes[9], sizes[0]
    );
    println!("| lagging subscriber | 0 lost | {lost} lost over {changes} changes |");
}
