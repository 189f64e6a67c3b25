//! Node benchmark on a local cluster (release binary, real containerd): `tinykube up`
//! to three Ready nodes; pod start-up of 30 toolbox replicas on two workers (creation
//! to Running and to Ready, p50/p99) against the floor of the same 30 containers
//! started straight through containerd; worker, containerd and shim memory with the
//! 30 pods running. Medians of 3 rounds. Needs root.
//!
//! Run with `bench/node`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use tinykube_kubelet::runtime::Runtime;
use tinykube_kubelet::runtime::container::NewContainer;
use tinykube_kubelet::runtime::image::{TOOLBOX_IMAGE, local_images, local_layer};
use tinykube_kubelet::runtime::spec::ContainerSpec;
use tinykube_lab::{Lab, LabConfig};
use tinykube_tests::{median, percentile};

const REPLICAS: usize = 30;

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn pids_where(pred: impl Fn(&str) -> bool) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            pred(&c)
        })
        .collect()
}

/// One round of pod start-up: per pod, seconds from its creation (first seen) to
/// Running and to Ready.
async fn pod_round(client: &kube::Client) -> (Vec<f64>, Vec<f64>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watch = pods
        .watch(&WatchParams::default().labels("app=bench"), &rv)
        .await
        .unwrap()
        .boxed();
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "bench"},
        "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": "bench"}},
                 "template": {"metadata": {"labels": {"app": "bench"}},
                              "spec": {"containers": [{"name": "server", "image": TOOLBOX_IMAGE, "imagePullPolicy": "IfNotPresent"}]}}}
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut running: HashMap<String, f64> = HashMap::new();
    let mut ready: HashMap<String, f64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.len() < REPLICAS && Instant::now() < deadline {
        let Ok(Some(Ok(ev))) = tokio::time::timeout(Duration::from_secs(5), watch.next()).await
        else {
            continue;
        };
        let p = match ev {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => p,
            _ => continue,
        };
        let uid = p.metadata.uid.clone().unwrap();
        let t0 = *seen.entry(uid.clone()).or_insert_with(Instant::now);
        let st = p.status.unwrap_or_default();
        if st.phase.as_deref() == Some("Running") {
            running
                .entry(uid.clone())
                .or_insert_with(|| t0.elapsed().as_secs_f64());
        }
        if st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            ready
                .entry(uid)
                .or_insert_with(|| t0.elapsed().as_secs_f64());
        }
    }
    assert_eq!(ready.len(), REPLICAS, "every replica became Ready");
    (
        running.into_values().collect(),
        ready.into_values().collect(),
    )
}

async fn remove_deployment(client: &kube::Client) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    deployments
        .delete("bench", &DeleteParams::foreground())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let left = pods
            .list(&ListParams::default().labels("app=bench"))
            .await
            .unwrap()
            .items
            .len();
        if left == 0 && deployments.get_opt("bench").await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("bench pods were not removed");
}

/// The floor: the same 30 containers created and started concurrently through
/// containerd alone (no sandbox, no network wiring, no API); seconds per container.
async fn containerd_round(rt: &Runtime, round: usize) -> Vec<f64> {
    let image = rt.resolve(TOOLBOX_IMAGE).await.unwrap().unwrap();
    let logs = std::env::temp_dir().join("tinykube-bench-floor");
    let jobs = (0..REPLICAS).map(|i| {
        let (rt, image, logs) = (rt.clone(), image.clone(), logs.clone());
        async move {
            let t0 = Instant::now();
            let id = format!("floor-{round}-{i}");
            let spec = ContainerSpec {
                args: image.entrypoint().into_iter().chain(image.cmd()).collect(),
                env: image.env(),
                cwd: "/".into(),
                hostname: id.clone(),
                cgroups_path: format!("/tinykube/bench-floor/{id}"),
                ..Default::default()
            };
            let new = NewContainer {
                id: id.clone(),
                image: &image,
                labels: HashMap::new(),
                spec,
                log_path: logs.join(format!("{id}.log")),
            };
            rt.create_container(&new).await.unwrap();
            rt.start_task(&id).await.unwrap();
            t0.elapsed().as_secs_f64()
        }
    });
    let out = futures::future::join_all(jobs).await;
    for c in rt.list_containers().await.unwrap() {
        rt.remove_container(&c.id).await;
    }
    out
}

#[tokio::main]
async fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the node benchmark needs root"
    );
    tinykube_tests::init_crypto();
    let binary = tinykube_tests::tinykube_bin().expect("release binary (run bench/node)");
    let mut cfg = LabConfig::new("bench");
    cfg.subnet = "172.29.1.0/24".parse().unwrap();
    cfg.data_dir = std::env::temp_dir().join("tinykube-bench-node");
    cfg.binary = binary.clone();
    let _ = Lab::down(&cfg.name, &cfg.data_dir, false).await;
    let socket = std::path::Path::new(tinykube_kubelet::runtime::daemon::CONTAINERD_SOCKET);
    if let Ok(rt) = Runtime::connect(socket, "tinykube-benchfloor", Duration::from_secs(2)).await {
        let _ = rt.purge().await;
    }

    // 1. `tinykube up` to three Ready nodes.
    let mut up_times = Vec::new();
    let mut quiet = |_: &str| {};
    for round in 0..3 {
        let t0 = Instant::now();
        let lab = Lab::up(&cfg, &mut quiet).await.expect("up");
        up_times.push(t0.elapsed().as_secs_f64());
        if round < 2 {
            Lab::down(&cfg.name, &lab.dir, false).await.unwrap();
        } else {
            // 2. Pod start-up on the last cluster.
            let client = lab.client().await.unwrap();
            let (mut r50, mut r99, mut y50, mut y99) = (vec![], vec![], vec![], vec![]);
            let mut mem = None;
            for i in 0..3 {
                let (mut running, mut ready) = pod_round(&client).await;
                r50.push(percentile(&mut running, 0.5));
                r99.push(percentile(&mut running, 0.99));
                y50.push(percentile(&mut ready, 0.5));
                y99.push(percentile(&mut ready, 0.99));
                if i == 2 {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    let workers: Vec<f64> = lab.state.nodes[1..]
                        .iter()
                        .filter_map(|n| n.pid)
                        .map(rss_mb)
                        .collect();
                    let containerd: f64 = pids_where(|c| {
                        c.starts_with("containerd ")
                            || c == "containerd"
                            || c.starts_with("/usr/bin/containerd ")
                    })
                    .into_iter()
                    .map(rss_mb)
                    .sum();
                    let shims: Vec<u32> = pids_where(|c| {
                        c.contains("containerd-shim-runc-v2")
                            && c.contains("-namespace tinykube-bench-")
                    });
                    let shim_mb: f64 = shims.iter().copied().map(rss_mb).sum();
                    mem = Some((workers, containerd, shims.len(), shim_mb));
                }
                remove_deployment(&client).await;
            }
            let (p_r50, p_r99, p_y50, p_y99) = (median(r50), median(r99), median(y50), median(y99));

            // 3. The containerd floor, in a namespace of its own.
            let rt = Runtime::connect(
                &lab.state.containerd_socket,
                "tinykube-benchfloor",
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            rt.ensure_namespace().await.unwrap();
            let cache = std::env::temp_dir().join("tinykube-bench-floor-layer");
            let (layer, digest, size) = local_layer(&binary, &cache).unwrap();
            for (name, blobs) in local_images(&layer, &digest, size) {
                rt.import(&name, &blobs).await.unwrap();
            }
            let (mut f50, mut f99) = (vec![], vec![]);
            for round in 0..3 {
                let mut v = containerd_round(&rt, round).await;
                f50.push(percentile(&mut v, 0.5));
                f99.push(percentile(&mut v, 0.99));
            }
            rt.purge().await.unwrap();
            let _ = std::fs::remove_dir_all(&cache);
            let _ = std::fs::remove_dir_all(std::env::temp_dir().join("tinykube-bench-floor"));
            let (f50, f99) = (median(f50), median(f99));
            Lab::down(&cfg.name, &lab.dir, false).await.unwrap();

            println!(
                "node benchmark ({REPLICAS} toolbox replicas on 2 workers, medians of 3 rounds)"
            );
            println!(
                "  tinykube up to 3 Ready nodes: {:.2} s (rounds: {:?})",
                median(up_times.clone()),
                up_times
                    .iter()
                    .map(|t| format!("{t:.2}"))
                    .collect::<Vec<_>>()
            );
            println!(
                "  pod creation -> Running: p50 {:.0} ms, p99 {:.0} ms",
                p_r50 * 1e3,
                p_r99 * 1e3
            );
            println!(
                "  pod creation -> Ready:   p50 {:.0} ms, p99 {:.0} ms",
                p_y50 * 1e3,
                p_y99 * 1e3
            );
            println!(
                "  containerd alone, same 30 containers: p50 {:.0} ms, p99 {:.0} ms",
                f50 * 1e3,
                f99 * 1e3
            );
            println!(
                "  ratio pod Running p99 / containerd p99: {:.2}x",
                p_r99 / f99
            );
            if let Some((workers, containerd, nshims, shim_mb)) = mem {
                println!(
                    "  worker RSS with the pods running (15 each): {}",
                    workers
                        .iter()
                        .map(|w| format!("{w:.1} MB"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                println!(
                    "  containerd RSS {containerd:.1} MB; {nshims} shims {shim_mb:.1} MB in all"
                );
            }
            return;
        }
    }
}
