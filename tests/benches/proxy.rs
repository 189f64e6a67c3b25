//! Service proxy benchmark (root): the time to write the rules of 10, 100 and 1,000
//! services (3 endpoints each, every other one with a NodePort) into a network
//! namespace of its own, from nothing and after one endpoint changed (a partial write:
//! the dispatch chains and the changed service's chains); against the floor of a bare
//! `iptables-restore --noflush` of exactly that text over the first rules (what the
//! kernel and iptables take for the write itself), and the bytes each write gives
//! iptables-restore. Medians of 5 rounds.
//!
//! Run with `cargo bench -p tinykube-tests --bench proxy`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use tinykube_net::netns::NetNs;
use tinykube_proxy::rules::{Endpoint, ServicePort, Synced, changed_ports, render, stale_after};
use tinykube_tests::median;

const ROUNDS: usize = 5;

fn ports(n: usize, generation: u8) -> Vec<ServicePort> {
    (0..n)
        .map(|i| ServicePort {
            node_port: (i % 2 == 0).then_some(30000 + i as u16),
            endpoints: (0..3u8)
                .map(|e| {
                    // The first service's last endpoint moves between generations.
                    let last = if i == 0 && e == 2 { generation } else { 0 };
                    Endpoint {
                        addr: SocketAddrV4::new(
                            Ipv4Addr::new(10, 244, e + last, (i % 250) as u8 + 2),
                            8080,
                        ),
                        local: false,
                    }
                })
                .collect(),
            ..ServicePort::new(
                &format!("bench/svc{i}:http"),
                "tcp",
                Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250) as u8 + 2),
                80,
            )
        })
        .collect()
}

/// Removes every rule and chain of the namespace's nat and filter tables.
fn flush() {
    for table in ["nat", "filter"] {
        tinykube_net::iptables::must("iptables", &["-w", "5", "-t", table, "-F"], None).unwrap();
        tinykube_net::iptables::must("iptables", &["-w", "5", "-t", table, "-X"], None).unwrap();
    }
}

struct Namespace(Option<NetNs>);

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Some(ns) = self.0.take() {
            let _ = ns.delete();
        }
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the proxy benchmark needs root"
    );
    let name = format!("tkbench-proxy-{}", std::process::id());
    let ns = Namespace(Some(NetNs::create(&name).expect("network namespace")));
    let cluster: tinykube_net::Ipv4Cidr = "10.244.0.0/16".parse().unwrap();
    println!(
        "service proxy benchmark (rules written into a namespace of its own, medians of {ROUNDS} rounds)"
    );
    for n in [10usize, 100, 1000] {
        let (first, change, floor, bytes) =
            ns.0.as_ref()
                .unwrap()
                .run(move || {
                    let (mut first, mut change, mut floor) = (vec![], vec![], vec![]);
                    let mut bytes = (0, 0);
                    for _ in 0..ROUNDS {
                        flush();
                        // As the proxy does: the rules built (reusing the last sync's
                        // for the ports that did not change), then written.
                        let (p0, p1) = (ports(n, 0), ports(n, 1));
                        let t = Instant::now();
                        let before = Synced::build(p0.clone(), None, cluster);
                        let w = tinykube_proxy::apply(&before, None).unwrap();
                        first.push(t.elapsed().as_secs_f64() * 1e3);
                        let t = Instant::now();
                        let after = Synced::build(p1.clone(), Some(&before), cluster);
                        let c = tinykube_proxy::apply(&after, Some(&before)).unwrap();
                        change.push(t.elapsed().as_secs_f64() * 1e3);
                        bytes = (w.bytes, c.bytes);
                        flush();
                        tinykube_proxy::apply(&before, None).unwrap();
                        // The very text `apply` writes for the change.
                        let changed = changed_ports(&before, &after);
                        let stale = stale_after(&before, &after, &changed);
                        let text = render(&after, &stale, Some(&changed));
                        let t = Instant::now();
                        tinykube_net::iptables::restore(&text).unwrap();
                        floor.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    (median(first), median(change), median(floor), bytes)
                })
                .unwrap();
        println!(
            "  {n:5} services: from nothing {first:7.1} ms ({} bytes), after one endpoint moved {change:7.1} ms ({} bytes); bare iptables-restore of the change {floor:7.1} ms (ratio {:.2}x)",
            bytes.0,
            bytes.1,
            change / floor
        );
    }
    drop(ns);
}
