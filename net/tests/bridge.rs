//! Needs root (CI runs as root): wires two pod namespaces onto a bridge inside a node
//! namespace this test makes, and checks pod-to-pod and pod-to-node TCP.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use tinykube_net::Ipv4Cidr;
use tinykube_net::link::{Bridge, host_if_name};
use tinykube_net::netns::NetNs;

struct Cleanup(Vec<String>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.0 {
            if let Ok(ns) = NetNs::open(n) {
                let _ = ns.delete();
            }
        }
    }
}

fn listen(ns: &NetNs, addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let ns = ns.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        ns.run(move || {
            let l = TcpListener::bind(addr).unwrap();
            tx.send(()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"hello").unwrap();
        })
        .unwrap();
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("listener up");
    t
}

fn fetch(ns: &NetNs, addr: SocketAddr) -> String {
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .unwrap()
}

#[test]
fn pods_on_one_bridge_reach_each_other_and_the_node() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root; CI runs as root"
    );
    let id = std::process::id();
    let names: Vec<String> = ["node", "pa", "pb"]
        .iter()
        .map(|n| format!("tkbr-{n}-{id}"))
        .collect();
    let _guard = Cleanup(names.clone());
    let node = NetNs::create(&names[0]).unwrap();
    let pa = NetNs::create(&names[1]).unwrap();
    let pb = NetNs::create(&names[2]).unwrap();
    let cidr: Ipv4Cidr = "10.244.9.0/24".parse().unwrap();
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 244, 9, 2), Ipv4Addr::new(10, 244, 9, 3));
    let (pa2, pb2) = (pa.clone(), pb.clone());
    node.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let br = Bridge::setup("cni0", cidr, Some(1450)).await.unwrap();
            br.attach(&pa2, &host_if_name("a"), a_ip).await.unwrap();
            br.attach(&pb2, &host_if_name("b"), b_ip).await.unwrap();
            // Attaching again replaces the wiring instead of failing.
            br.attach(&pb2, &host_if_name("b"), b_ip).await.unwrap();
        });
    })
    .unwrap();

    let t = listen(&pb, SocketAddr::from((b_ip, 8080)));
    assert_eq!(
        fetch(&pa, SocketAddr::from((b_ip, 8080))),
        "hello",
        "pod to pod"
    );
    t.join().unwrap();
    let t = listen(&node, SocketAddr::from((cidr.gateway(), 8081)));
    assert_eq!(
        fetch(&pa, SocketAddr::from((cidr.gateway(), 8081))),
        "hello",
        "pod to node"
    );
    t.join().unwrap();
    let t = listen(&pa, SocketAddr::from((a_ip, 8082)));
    assert_eq!(
        fetch(&node, SocketAddr::from((a_ip, 8082))),
        "hello",
        "node to pod"
    );
    t.join().unwrap();
}
