//! What cluster DNS adds to a node agent's memory for 1,000 services and 3,000 pods
//! (three endpoints per service, as EndpointSlices): the zone index DNS keeps, counted
//! by a counting allocator (bytes live after building it from the objects), next to the
//! objects themselves, which the node's Service and EndpointSlice informers hold for the
//! proxy anyway and DNS shares. Also how long a full rebuild (every 30 s) takes.
//!
//! Run with `cargo bench -p tinykube-tests --bench dns_memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use tinykube_dns::cache::{service_record, slice_endpoints};
use tinykube_dns::zone::Zone;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, counting what is live.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: a pointer this allocator gave out, with its layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const SERVICES: usize = 1000;
const PER_SERVICE: usize = 3;

fn objects() -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..SERVICES {
        let ns = format!("team-{}", i % 20);
        let name = format!("service-{i}");
        services.push(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{i}"),
                             "labels": {"app": name}, "resourceVersion": "1"},
                "spec": {"clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 2),
                         "selector": {"app": name},
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
            }))
            .unwrap(),
        );
        let endpoints: Vec<_> = (0..PER_SERVICE)
            .map(|e| {
                let n = i * PER_SERVICE + e;
                json!({"addresses": [format!("10.244.{}.{}", n / 250, n % 250 + 2)],
                       "conditions": {"ready": true, "serving": true, "terminating": false},
                       "nodeName": format!("worker-{}", e + 1),
                       "targetRef": {"kind": "Pod", "name": format!("{name}-{e}"), "namespace": ns}})
            })
            .collect();
        slices.push(
            serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-abcde"), "namespace": ns,
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }))
            .unwrap(),
        );
    }
    (services, slices)
}

fn build(services: &[Service], slices: &[EndpointSlice]) -> Zone {
    let mut zone = Zone::new("cluster.local", 5);
    for s in services {
        let (ns, name) = (
            s.metadata.namespace.clone().unwrap(),
            s.metadata.name.clone().unwrap(),
        );
        zone.set_service(&ns, &name, service_record(s));
    }
    for s in slices {
        let ns = s.metadata.namespace.clone().unwrap();
        let (svc, eps) = slice_endpoints(s).unwrap();
        zone.set_slice(&ns, &svc, s.metadata.name.as_deref().unwrap(), Some(eps));
    }
    zone
}

fn main() {
    let before_objects = live();
    let (services, slices) = objects();
    let objects_bytes = live() - before_objects;
    let before_zone = live();
    let zone = build(&services, &slices);
    let zone_bytes = live() - before_zone;
    let mut rebuilds = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let z = build(&services, &slices);
        rebuilds.push(t.elapsed().as_secs_f64() * 1e3);
        drop(z);
    }
    rebuilds.sort_by(f64::total_cmp);
    println!(
        "cluster DNS memory for {SERVICES} services and {} pods ({PER_SERVICE} endpoints each):",
        SERVICES * PER_SERVICE
    );
    println!(
        "  the zone DNS keeps: {:.2} MB (its own addition to the node agent)",
        zone_bytes as f64 / 1e6
    );
    println!(
        "  the Service and EndpointSlice objects (held by the node's informers for the proxy, shared): {:.2} MB",
        objects_bytes as f64 / 1e6
    );
    println!(
        "  a full rebuild of the zone: {:.1} ms (median of 5)",
        rebuilds[2]
    );
    assert_eq!(zone.service_count(), SERVICES);
}
