//! Control-plane benchmark on hollow nodes, master as its own (release) process:
//! scheduler throughput (100 nodes, 10,000 pending pods), a 1,000-replica deployment
//! end to end, and the reaction from a scale-up to the new pod being bound.
//!
//! Run with `bench/control-plane`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use tinykube_node::hollow::{HollowConfig, HollowNodes};
use tinykube_tests::{MasterProcess, client_for, free_port, status_mb};

async fn hollow(client: &kube::Client, n: usize) -> HollowNodes {
    let names = (1..=n).map(|i| format!("hollow{i:03}")).collect();
    let config = HollowConfig {
        heartbeat: Duration::from_secs(10),
        cpu: "32".into(),
        memory: "64Gi".into(),
        max_pods: 250,
    };
    HollowNodes::start(client.clone(), names, config)
        .await
        .unwrap()
}

fn start_master(extra: &[&str]) -> (tempfile::TempDir, MasterProcess) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("master");
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let master = MasterProcess::start_with(&data, addr, extra)
        .expect("release master starts (run bench/control-plane)");
    (dir, master)
}

async fn scheduler_throughput() -> (f64, f64) {
    let (_dir, master) = start_master(&["--disable-scheduler"]);
    let client = client_for(&master.kubeconfig()).await;
    let nodes = hollow(&client, 100).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let body: Pod = serde_json::from_value(json!({"metadata": {"generateName": "pending-"},
        "spec": {"containers": [{"name": "c", "image": "toolbox", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})).unwrap();
    futures::stream::iter(0..10_000)
        .map(|_| {
            let (pods, body) = (pods.clone(), body.clone());
            async move { pods.create(&PostParams::default(), &body).await.unwrap() }
        })
        .buffer_unordered(32)
        .for_each(|_| futures::future::ready(()))
        .await;
    let rv = pods
        .list(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = pods
        .watch(&WatchParams::default().timeout(300), &rv)
        .await
        .unwrap()
        .boxed();
    let cancel = tokio_util::sync::CancellationToken::new();
    let start = Instant::now();
    let caches = tinykube_client::Informers::start(&client, &cancel);
    let sched = tokio::spawn({
        let (client, caches, cancel) = (client.clone(), caches.clone(), cancel.clone());
        async move {
            let metrics = tinykube_api::metrics::Metrics::default();
            tinykube_scheduler::run(client, caches, &metrics, cancel).await
        }
    });
    let mut bound = std::collections::HashSet::new();
    let mut first: Option<Instant> = None;
    while bound.len() < 10_000 {
        match stream.next().await {
            Some(Ok(WatchEvent::Modified(p)))
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() =>
            {
                first.get_or_insert_with(Instant::now);
                bound.insert(p.metadata.name.unwrap());
            }
            Some(Ok(_)) => {}
            other => panic!("watch ended: {other:?}"),
        }
    }
    let total = start.elapsed().as_secs_f64();
    let span = first.unwrap().elapsed().as_secs_f64();
    cancel.cancel();
    let _ = sched.await;
    caches.stopped().await;
    nodes.stop().await;
    drop(master);
    (10_000.0 / span, total)
}

async fn end_to_end() -> (f64, f64, f64, f64) {
    let (_dir, master) = start_master(&[]);
    let pid = master.child.id();
    let client = client_for(&master.kubeconfig()).await;
    let nodes = hollow(&client, 100).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "big"},
        "spec": {"replicas": 1000, "selector": {"matchLabels": {"app": "big"}},
                 "template": {"metadata": {"labels": {"app": "big"}}, "spec": {"containers": [{"name": "c", "image": "toolbox"}]}}}})).unwrap();
    let start = Instant::now();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    loop {
        let s = deployments
            .get("big")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        if s.ready_replicas == Some(1000) && s.available_replicas == Some(1000) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "1,000 replicas not ready in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_secs = start.elapsed().as_secs_f64();
    let peak = status_mb(pid, "VmHWM:");

    // Reaction: scale 6 -> 7, time until the new pod is bound.
    let small: Deployment = serde_json::from_value(json!({"metadata": {"name": "small"},
        "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "small"}},
                 "template": {"metadata": {"labels": {"app": "small"}}, "spec": {"containers": [{"name": "c", "image": "toolbox"}]}}}})).unwrap();
    deployments
        .create(&PostParams::default(), &small)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let bound = |n: usize| {
        let pods = pods.clone();
        async move {
            loop {
                let l = pods
                    .list(&ListParams::default().labels("app=small"))
                    .await
                    .unwrap()
                    .items;
                let b = l
                    .iter()
                    .filter(|p| {
                        p.metadata.deletion_timestamp.is_none()
                            && p.spec.as_ref().unwrap().node_name.is_some()
                    })
                    .count();
                if b == n
                    && l.iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .count()
                        == n
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    bound(6).await;
    let mut lat = Vec::new();
    for _ in 0..50 {
        let rv = pods
            .list(&ListParams::default().labels("app=small"))
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let mut stream = pods
            .watch(&WatchParams::default().labels("app=small").timeout(60), &rv)
            .await
            .unwrap()
            .boxed();
        let t = Instant::now();
        deployments
            .patch_scale(
                "small",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 7}})),
            )
            .await
            .unwrap();
        loop {
            match stream.next().await {
                Some(Ok(WatchEvent::Modified(p)))
                    if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                        && p.status.as_ref().and_then(|s| s.phase.as_deref())
                            == Some("Pending") =>
                {
                    break;
                }
                Some(Ok(_)) => {}
                other => panic!("watch ended: {other:?}"),
            }
        }
        lat.push(t.elapsed());
        deployments
            .patch_scale(
                "small",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 6}})),
            )
            .await
            .unwrap();
        bound(6).await;
    }
    lat.sort();
    let p50 = lat[lat.len() / 2].as_secs_f64() * 1000.0;
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    nodes.stop().await;
    drop(master);
    (ready_secs, peak, p50, p99)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tinykube_tests::init_crypto();
    let (rate, total) = scheduler_throughput().await;
    println!(
        "scheduler: {rate:.0} pods/s bound ({total:.1} s for 10,000 including the scheduler's start)"
    );
    let (ready, peak, p50, p99) = end_to_end().await;
    println!();
    println!("| figure | target | measured |");
    println!("| --- | --- | --- |");
    println!(
        "| scheduler throughput, 100 hollow nodes, 10,000 pending pods | >= 1,000 pods/s | {rate:.0} pods/s ({total:.1} s in all, start-up included) |"
    );
    println!(
        "| 1,000-replica deployment on 100 hollow nodes to 1000/1000 Ready | report | {ready:.1} s, master peak RSS {peak:.0} MB |"
    );
    println!(
        "| scale 6 -> 7 to the new pod bound, 50 tries | p99 <= 100 ms | p50 {p50:.1} ms, p99 {p99:.1} ms |"
    );
}
