//! API server benchmark: 32 concurrent clients against a master running as its own
//! process (release build), writes durable. Prints the rows of docs/performance.md.
//!
//! Run with `bench/apiserver` (builds the release binary first). Each figure is the
//! median of three rounds; the baseline is the bare store (sled with group commit)
//! measured in the same run, so the ratio shows what the API layer costs.
//!
//! Two configurations, chosen by `BENCH_CONFIG`: `cluster` (the default, as users run
//! it: controllers and scheduler on, three hollow nodes that bind and run every pod),
//! and `apiserver` (the master with `--disable-controllers --disable-scheduler` and no
//! nodes: the API server's own cost, reported beside the first, labelled).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::Request;
use serde_json::json;
use tinykube_apiserver::store::{SledStore, SledStoreOptions, Store, WriteOp};
use tinykube_tests::{MasterProcess, client_for, free_port, median};

const CLIENTS: usize = 32;
const ROUNDS: usize = 3;

fn pod_body(ns: &str, name: &str) -> Vec<u8> {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench", "tier": "web"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/toolbox:1",
                                 "ports": [{"containerPort": 8080}],
                                 "env": [{"name": "MODE", "value": "bench"}],
                                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    });
    // BENCH_AUTOMOUNT=false: pods without the service-account token volume the
    // ServiceAccount admission plugin adds (to see what the bigger pod costs).
    if std::env::var("BENCH_AUTOMOUNT").as_deref() == Ok("false") {
        pod["spec"]["automountServiceAccountToken"] = json!(false);
    }
    pod.to_string().into_bytes()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

async fn request(client: &kube::Client, method: &str, uri: &str, body: Vec<u8>) -> String {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    client.request_text(req).await.expect("request succeeds")
}

/// Creates `per_client` pods from each of `clients`; returns (pods/s, p50, p99 latency).
async fn create_round(
    clients: &[kube::Client],
    ns: &str,
    round: usize,
    per_client: usize,
) -> (f64, Duration, Duration) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        let client = client.clone();
        let ns = ns.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let name = format!("r{round}-c{c}-{i}");
                let t = Instant::now();
                request(
                    &client,
                    "POST",
                    &format!("/api/v1/namespaces/{ns}/pods"),
                    pod_body(&ns, &name),
                )
                .await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    let p50 = percentile(&mut all, 0.50);
    let p99 = percentile(&mut all, 0.99);
    (rate, p50, p99)
}

/// The bare store: the same number of durable writes from 32 writers, no HTTP, no TLS.
async fn store_baseline(total: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), SledStoreOptions::default()).unwrap());
    let body: serde_json::Value = serde_json::from_slice(&pod_body("b", "x")).unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let store = store.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..total / CLIENTS {
                let op = WriteOp::Create {
                    key: format!("core/pods/b/{c}-{i}"),
                    object: body.clone(),
                };
                store.write(op).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (total / CLIENTS * CLIENTS) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tinykube_tests::init_crypto();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("master");
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cluster = std::env::var("BENCH_CONFIG").as_deref() != Ok("apiserver");
    let flags: &[&str] = if cluster {
        &[]
    } else {
        &["--disable-controllers", "--disable-scheduler"]
    };
    println!(
        "configuration: {}",
        if cluster {
            "cluster (controllers, scheduler, 3 hollow nodes running every pod)"
        } else {
            "API server alone (--disable-controllers --disable-scheduler, no nodes)"
        }
    );
    let master = MasterProcess::start_with(&data, addr, flags)
        .expect("release master starts (run bench/apiserver)");
    let pid = master.child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_mb(pid);

    let admin = client_for(&master.kubeconfig()).await;
    let nodes = if cluster {
        let config = tinykube_node::hollow::HollowConfig {
            cpu: "100".into(),
            memory: "100Gi".into(),
            max_pods: 5000,
            ..Default::default()
        };
        let names = (1..=3).map(|i| format!("hollow{i}")).collect();
        Some(
            tinykube_node::hollow::HollowNodes::start(admin.clone(), names, config)
                .await
                .expect("hollow nodes register"),
        )
    } else {
        None
    };
    for ns in ["bench", "list1k"] {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            .to_string()
            .into_bytes();
        request(&admin, "POST", "/api/v1/namespaces", body).await;
    }
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(client_for(&master.kubeconfig()).await);
    }

    // Creates: three rounds of 3,000 pods (9,000 + 1,000 below = 10,000 stored).
    let mut rates = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for round in 0..ROUNDS {
        let (rate, p50, p99) = create_round(&clients, "bench", round, 3000 / CLIENTS + 1).await;
        println!(
            "creates round {round}: {rate:.0} pods/s, p50 {:.2} ms, p99 {:.2} ms",
            ms(p50),
            ms(p99)
        );
        rates.push(rate);
        p50s.push(ms(p50));
        p99s.push(ms(p99));
    }
    let baseline = {
        let mut b = Vec::new();
        for _ in 0..ROUNDS {
            b.push(store_baseline(3008).await);
        }
        median(b)
    };

    // A namespace with exactly 1,000 pods, for the list figure.
    let per = 1000 / 8;
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().take(8).enumerate() {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                request(
                    &client,
                    "POST",
                    "/api/v1/namespaces/list1k/pods",
                    pod_body("list1k", &format!("p{c}-{i}")),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Get one pod: 32 clients, 100 gets each, per round.
    let mut get_p99 = Vec::new();
    for _ in 0..ROUNDS {
        let mut tasks = Vec::new();
        for client in &clients {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                for i in 0..100 {
                    let t = Instant::now();
                    request(
                        &client,
                        "GET",
                        &format!("/api/v1/namespaces/list1k/pods/p{}-{}", i % 8, i),
                        vec![],
                    )
                    .await;
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        get_p99.push(ms(percentile(&mut all, 0.99)));
    }

    // List 1,000 pods: 4 clients listing concurrently, 25 lists each, per round.
    let mut list_p99 = Vec::new();
    for _ in 0..ROUNDS {
        let mut tasks = Vec::new();
        for client in clients.iter().take(4) {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                for _ in 0..25 {
                    let t = Instant::now();
                    let body =
                        request(&client, "GET", "/api/v1/namespaces/list1k/pods", vec![]).await;
                    lat.push(t.elapsed());
                    assert!(body.len() > 1000 * 500, "the list holds 1,000 pods");
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        list_p99.push(ms(percentile(&mut all, 0.99)));
    }

    // Watch delivery: write acknowledged -> event received, 300 writes per round.
    let mut watch_p99 = Vec::new();
    for round in 0..ROUNDS {
        let ns = format!("watch{round}");
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            .to_string()
            .into_bytes();
        request(&admin, "POST", "/api/v1/namespaces", body).await;
        let req = Request::builder()
            .uri(format!(
                "/api/v1/namespaces/{ns}/pods?watch=true&resourceVersion=0"
            ))
            .body(vec![])
            .unwrap();
        let stream = clients[1].request_stream(req).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            use futures::AsyncBufReadExt;
            let mut lines = stream.lines();
            while let Some(Ok(line)) = lines.next().await {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                // The scheduler's and the nodes' updates of earlier pods come too.
                if v["type"] != "ADDED" {
                    continue;
                }
                let name = v["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if tx.send((name, Instant::now())).is_err() {
                    break;
                }
            }
        });
        let mut lat = Vec::new();
        for i in 0..300 {
            let name = format!("w{i}");
            request(
                &clients[0],
                "POST",
                &format!("/api/v1/namespaces/{ns}/pods"),
                pod_body(&ns, &name),
            )
            .await;
            let acked = Instant::now();
            let (got, at) = rx.recv().await.unwrap();
            assert_eq!(got, name);
            lat.push(at.saturating_duration_since(acked));
        }
        reader.abort();
        watch_p99.push(ms(percentile(&mut lat, 0.99)));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let full_rss = rss_mb(pid);
    let create_rate = median(rates);
    println!();
    println!("| figure | target | measured (median of {ROUNDS}) |");
    println!("| --- | --- | --- |");
    println!(
        "| pod creates, 32 clients, durable | >= 2,000/s | {create_rate:.0}/s ({:.2}x the bare store's {baseline:.0} writes/s) |",
        create_rate / baseline
    );
    println!(
        "| create latency p50 / p99 | p99 <= 20 ms | {:.2} ms / {:.2} ms |",
        median(p50s),
        median(p99s)
    );
    println!("| get one pod p99 | <= 2 ms | {:.2} ms |", median(get_p99));
    println!(
        "| list 1,000 pods p99 | <= 50 ms | {:.2} ms |",
        median(list_p99)
    );
    println!(
        "| watch delivery p99 | <= 5 ms | {:.2} ms |",
        median(watch_p99)
    );
    println!("| master RSS idle | <= 30 MB | {idle_rss:.1} MB |");
    println!("| master RSS, 10,000 pods stored | <= 150 MB | {full_rss:.1} MB |");
    if let Some(n) = nodes {
        n.stop().await;
    }
    drop(master);
}
