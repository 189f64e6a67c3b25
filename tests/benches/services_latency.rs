//! Service latencies on a local cluster (release binary, real containerd, `tinykube up`
//! with a master and two workers, everything on as users run it). Needs root.
//!
//! 1. Programming: a new pod's endpoint turning ready in its Service's EndpointSlice
//!    (seen through a watch from here) to its DNAT rule present in the nat table of
//!    every node (`iptables-save` polled every 10 ms inside each node's namespace), for
//!    CHANGES pods one after another.
//! 2. DNS: a Service created (from the request) to its name answering on the cluster
//!    DNS address inside every node's namespace (asked every 2 ms), for CHANGES services.
//! 3. LoadBalancer: a LoadBalancer Service created (from the request) to
//!    `status.loadBalancer.ingress` set (a watch), for CHANGES services.
//!
//! p50 and p99 of each. Run with `bench/service-latency`.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use tinykube_lab::{Lab, LabConfig};
use tinykube_net::netns::NetNs;
use tinykube_tests::percentile;

fn changes() -> usize {
    std::env::var("CHANGES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(50)
}

/// Seconds until `f` holds inside every namespace in `netns` (checked every `every`),
/// the slowest of them; None past `limit`.
fn on_every_node(
    netns: &[String],
    every: Duration,
    limit: Duration,
    t0: Instant,
    f: impl Fn() -> bool + Send + Sync + Clone + 'static,
) -> Option<f64> {
    let handles: Vec<_> = netns
        .iter()
        .map(|n| {
            let ns = NetNs::open(n).expect("node namespace");
            let f = f.clone();
            std::thread::spawn(move || {
                ns.run(move || {
                    while t0.elapsed() < limit {
                        if f() {
                            return Some(t0.elapsed().as_secs_f64());
                        }
                        std::thread::sleep(every);
                    }
                    None
                })
                .ok()
                .flatten()
            })
        })
        .collect();
    let mut worst: f64 = 0.0;
    for h in handles {
        worst = worst.max(h.join().ok()??);
    }
    Some(worst)
}

fn has_rule(ep: &str) -> bool {
    std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(ep))
}

fn resolves(name: &str) -> bool {
    let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    let mut q = Message::new();
    q.set_id(next_id())
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let to: SocketAddr = "10.96.0.10:53".parse().unwrap();
    if sock.send_to(&q.to_vec().unwrap(), to).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    let Ok(n) = sock.recv(&mut buf) else {
        return false;
    };
    Message::from_vec(&buf[..n]).is_ok_and(|m| {
        m.message_type() == MessageType::Response
            && m.response_code() == ResponseCode::NoError
            && !m.answers().is_empty()
    })
}

fn next_id() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A watch of `api` from now on.
async fn watch_from_now<K>(
    api: &Api<K>,
    params: &WatchParams,
) -> futures::stream::BoxStream<'static, kube::Result<WatchEvent<K>>>
where
    K: Clone + std::fmt::Debug + k8s_openapi::serde::de::DeserializeOwned + Send + 'static,
{
    let rv = api
        .list_metadata(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.watch(params, &rv).await.unwrap().boxed()
}

/// The first `f(object)` that is Some among the added or changed objects `watch`
/// brings within `limit`.
async fn first<K, T>(
    watch: &mut futures::stream::BoxStream<'static, kube::Result<WatchEvent<K>>>,
    limit: Duration,
    mut f: impl FnMut(K) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let Ok(Some(Ok(ev))) = tokio::time::timeout(Duration::from_secs(5), watch.next()).await
        else {
            continue;
        };
        if let WatchEvent::Added(o) | WatchEvent::Modified(o) = ev
            && let Some(t) = f(o)
        {
            return Some(t);
        }
    }
    None
}

async fn programming(client: &kube::Client, netns: &[String]) -> Vec<f64> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "lat"},
        "spec": {"selector": {"app": "lat"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let mut out = Vec::new();
    for i in 0..changes() {
        let mut watch = watch_from_now(
            &slices,
            &WatchParams::default().labels("kubernetes.io/service-name=lat"),
        )
        .await;
        let name = format!("lat-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "lat"}},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": "tinykube.local/toolbox", "args": ["serve"]}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        // The moment the slice says the new pod's address is ready.
        let ready_ip = first(&mut watch, Duration::from_secs(60), |s: EndpointSlice| {
            s.endpoints.iter().find_map(|e| {
                let ours = e.target_ref.as_ref()?.name.as_deref() == Some(name.as_str());
                let ready = e.conditions.as_ref()?.ready == Some(true);
                (ours && ready)
                    .then(|| e.addresses.first().cloned())
                    .flatten()
            })
        })
        .await;
        let t0 = Instant::now();
        let ip = ready_ip.expect("the pod's endpoint became ready");
        let ep = format!("--to-destination {ip}:8080");
        let took = on_every_node(
            netns,
            Duration::from_millis(10),
            Duration::from_secs(30),
            t0,
            move || has_rule(&ep),
        )
        .expect("the rule reached every node");
        out.push(took);
        pods.delete(&name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
    services
        .delete("lat", &DeleteParams::default())
        .await
        .unwrap();
    out
}

async fn dns(client: &kube::Client, netns: &[String]) -> Vec<f64> {
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut out = Vec::new();
    for i in 0..changes() {
        let name = format!("dns-{i}");
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"ports": [{"port": 80}]},
        }))
        .unwrap();
        let t0 = Instant::now();
        services.create(&PostParams::default(), &svc).await.unwrap();
        let fqdn = format!("{name}.default.svc.cluster.local.");
        let took = on_every_node(
            netns,
            Duration::from_millis(2),
            Duration::from_secs(30),
            t0,
            move || resolves(&fqdn),
        )
        .expect("the name answered on every node");
        out.push(took);
    }
    for i in 0..changes() {
        let _ = services
            .delete(&format!("dns-{i}"), &DeleteParams::default())
            .await;
    }
    out
}

async fn load_balancers(client: &kube::Client) -> Vec<f64> {
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut out = Vec::new();
    for i in 0..changes() {
        let name = format!("lb-{i}");
        let mut watch = watch_from_now(
            &services,
            &WatchParams::default().fields(&format!("metadata.name={name}")),
        )
        .await;
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "selector": {"app": "none"},
                     "ports": [{"port": 20000 + i, "targetPort": 8080}]},
        }))
        .unwrap();
        let t0 = Instant::now();
        services.create(&PostParams::default(), &svc).await.unwrap();
        let took = first(&mut watch, Duration::from_secs(30), |s: Service| {
            s.status
                .and_then(|s| s.load_balancer)
                .and_then(|l| l.ingress)
                .is_some_and(|i| !i.is_empty())
                .then(|| t0.elapsed().as_secs_f64())
        })
        .await;
        out.push(took.expect("the ingress was set"));
    }
    for i in 0..changes() {
        let _ = services
            .delete(&format!("lb-{i}"), &DeleteParams::default())
            .await;
    }
    out
}

fn report(what: &str, mut v: Vec<f64>) {
    let n = v.len();
    println!(
        "  {what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({n} changes)",
        percentile(&mut v, 0.5) * 1e3,
        percentile(&mut v, 0.99) * 1e3,
        v.iter().copied().fold(0.0, f64::max) * 1e3,
    );
}

#[tokio::main]
async fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the benchmark needs root");
    tinykube_tests::init_crypto();
    let binary =
        tinykube_tests::tinykube_bin().expect("release binary (run bench/service-latency)");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = LabConfig::new("benchlat");
    cfg.subnet = "192.168.60.0/24".parse().unwrap();
    cfg.data_dir = dir.path().join("lab");
    cfg.binary = binary;
    cfg.ready_timeout = Duration::from_secs(120);
    let mut quiet = |_: &str| {};
    let lab = Lab::up(&cfg, &mut quiet).await.expect("up");
    let client = lab.client().await.unwrap();
    let netns: Vec<String> = lab.state.nodes.iter().map(|n| n.netns.clone()).collect();
    println!(
        "service latencies on a local cluster of {} nodes (release build)",
        netns.len()
    );
    let p = programming(&client, &netns).await;
    report("endpoint ready -> rule on every node", p);
    let d = dns(&client, &netns).await;
    report("service created -> answered by DNS on every node", d);
    let l = load_balancers(&client).await;
    report("LoadBalancer created -> ingress set", l);
    Lab::down(&cfg.name, &lab.dir, false).await.unwrap();
}
