//! End-to-end tests of pod-to-pod traffic across nodes (root, local clusters): for each
//! overlay backend, TCP, UDP and ICMP both ways with no NAT, node to remote pod and pod
//! to remote node (masqueraded), nodes joining and leaving, a worker restart; for udp,
//! the encapsulation seen on the lab bridge and garbage on port 8285.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use tinykube_net::netns::NetNs;
use tinykube_tests::eventually;
use tinykube_tests::lab::TestLab;
use tinykube_tests::{Kubectl, tinykube_bin};

/// Starts a toolbox server pod pinned to `node`.
fn run_pod(kubectl: &Kubectl, name: &str, node: &str) {
    let overrides = format!("{{\"spec\":{{\"nodeName\":\"{node}\"}}}}");
    kubectl.ok(&[
        "run",
        name,
        "--image=tinykube.local/toolbox",
        "--overrides",
        &overrides,
    ]);
}

/// Waits for pod `name` to run; returns its IP and the path of its network namespace.
async fn running_pod(client: &kube::Client, name: &str) -> (Ipv4Addr, String) {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p = eventually(Duration::from_secs(60), async || {
        api.get(name).await.ok().filter(|p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some())
        })
    })
    .await
    .unwrap_or_else(|| panic!("pod {name} is not running"));
    let ip = p.status.unwrap().pod_ip.unwrap().parse().unwrap();
    let uid = p.metadata.uid.unwrap();
    (ip, format!("/var/run/netns/tk-{uid}"))
}

/// `tinykube toolbox ARGS` run in pod `pod` through kubectl exec.
fn exec_toolbox(kubectl: &Kubectl, pod: &str, args: &[&str]) -> String {
    let mut v = vec!["exec", pod, "--", "/tinykube", "toolbox"];
    v.extend_from_slice(args);
    kubectl.run(&v).stdout
}

/// One request from pod `from` to the toolbox server of the pod at `ip`; its answer.
fn fetch(kubectl: &Kubectl, from: &str, ip: Ipv4Addr) -> String {
    let url = format!("http://{ip}:8080/");
    exec_toolbox(kubectl, from, &["fetch", &url, "--count", "1"])
}

/// Requests from pod `from` to the pod at `ip` for up to `secs` seconds until pod `to`
/// answers; whether it did, and the last answer.
async fn reaches(
    kubectl: &Kubectl,
    from: &str,
    ip: Ipv4Addr,
    to: &str,
    secs: u64,
) -> (bool, String) {
    let mut out = String::new();
    let ok = within(secs, || {
        out = fetch(kubectl, from, ip);
        out.contains(&format!("pod={to} "))
    })
    .await;
    (ok, out)
}

/// Runs `program args` inside the network namespace at `netns` (setns only).
fn in_netns(netns: &str, program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .arg(program)
        .args(args)
        .output()
        .expect("nsenter runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn ping(netns: &str, to: Ipv4Addr) -> (bool, String) {
    in_netns(
        netns,
        "ping",
        &["-c", "2", "-i", "0.2", "-W", "2", &to.to_string()],
    )
}

/// The node's overlay counters, through the API server's node proxy.
fn metrics(kubectl: &Kubectl, node: &str) -> String {
    kubectl.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/metrics"),
    ])
}

/// The value of the first metrics line containing every one of `parts`.
fn counter(metrics: &str, parts: &[&str]) -> Option<u64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Retries `f` for up to `secs` seconds until it returns true.
async fn within(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A raw capture on interface `ifname` of the calling namespace, in promiscuous mode
/// (as tcpdump does, so a bridge passes up what it forwards between its ports).
struct Capture(OwnedFd);

impl Capture {
    fn open(ifname: &str) -> Capture {
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: just created, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0, "no interface {ifname}");
        // SAFETY: sockaddr_ll is plain data; zeroed is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = index as i32;
        // SAFETY: bind(2) with a sockaddr_ll of the right size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        // SAFETY: packet_mreq is plain data; zeroed is valid.
        let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mr.mr_ifindex = index as i32;
        mr.mr_type = libc::PACKET_MR_PROMISC as u16;
        // SAFETY: setsockopt with a live packet_mreq of the right size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&mr as *const libc::packet_mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as u32,
            )
        };
        assert_eq!(r, 0, "promiscuous: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: setsockopt with a live timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        Capture(fd)
    }

    /// Frames seen for up to `d`.
    fn frames(&self, d: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            // SAFETY: recv(2) into our buffer.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                out.push(buf[..n as usize].to_vec());
            }
        }
        out
    }
}

/// (outer src, outer dst, UDP dst port, inner src, inner dst, inner protocol) of an
/// Ethernet frame carrying IPv4/UDP/IPv4.
fn encapsulated(f: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u16, Ipv4Addr, Ipv4Addr, u8)> {
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    if f.len() < 14 + 20 + 8 + 20 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let o = &f[14..];
    let ihl = usize::from(o[0] & 0x0f) * 4;
    if o[0] >> 4 != 4 || o[9] != 17 || o.len() < ihl + 8 + 20 {
        return None;
    }
    let udp = &o[ihl..];
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let inner = &udp[8..];
    if inner[0] >> 4 != 4 {
        return None;
    }
    Some((
        ip(&o[12..16]),
        ip(&o[16..20]),
        dport,
        ip(&inner[12..16]),
        ip(&inner[16..20]),
        inner[9],
    ))
}

fn route_lines(node_netns: &str) -> String {
    in_netns(node_netns, "ip", &["route"]).1
}

/// The destination of the route towards a peer: via its address (host-gw) or through
/// the VXLAN device (vxlan).
fn cidr_of_route_to(routes: &str, peer_ip: &str, backend: &str) -> String {
    let marker = if backend == "vxlan" {
        "dev flannel.1".to_string()
    } else {
        format!("via {peer_ip} ")
    };
    routes
        .lines()
        .find(|l| l.contains(&marker) && l.starts_with("10.244."))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no route with {marker:?}: {routes}"))
        .to_string()
}

async fn pod_cidr(client: &kube::Client, node: &str) -> String {
    Api::<Node>::all(client.clone())
        .get(node)
        .await
        .unwrap()
        .spec
        .unwrap()
        .pod_cidr
        .unwrap()
}

async fn cross_node(backend: &str) {
    let mut t = TestLab::start_with_backend(2, backend).await;
    let kubectl = t.kubectl();
    let client = t.client().await;
    let name = t.name.clone();
    let (w1, w2) = (format!("{name}-worker-1"), format!("{name}-worker-2"));
    let (n1, n2) = (
        t.lab().node(&w1).unwrap().clone(),
        t.lab().node(&w2).unwrap().clone(),
    );
    let ns1 = format!("/var/run/netns/{}", n1.netns);
    let ns2 = format!("/var/run/netns/{}", n2.netns);

    // Each node publishes its backend and address.
    let node: Node = Api::<Node>::all(client.clone()).get(&w2).await.unwrap();
    let ann = node.metadata.annotations.unwrap_or_default();
    assert_eq!(ann["tinykube.io/backend-type"], backend);
    assert_eq!(ann["tinykube.io/public-ip"], n2.ip.to_string());

    run_pod(&kubectl, "a", &w1);
    run_pod(&kubectl, "b", &w2);
    let (ip_a, netns_a) = running_pod(&client, "a").await;
    let (ip_b, netns_b) = running_pod(&client, "b").await;

    // Pods get the overlay's MTU.
    let overhead = match backend {
        "udp" => 28,
        "vxlan" => 50,
        _ => 0,
    };
    let mtu = exec_toolbox(&kubectl, "a", &["cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.trim(), (1500 - overhead).to_string());

    // TCP and UDP both ways; each server sees the other pod's own address.
    for (from, to_ip, to, from_ip) in [("a", ip_b, "b", ip_a), ("b", ip_a, "a", ip_b)] {
        let (ok, tcp) = reaches(&kubectl, from, to_ip, to, 20).await;
        assert!(ok, "{backend}: TCP {from} -> {to} ({to_ip}): {tcp}");
        assert!(
            tcp.contains(&format!("client={from_ip}\n")),
            "{backend}: the server saw another address than {from_ip}: {tcp}"
        );
        let udp = exec_toolbox(&kubectl, from, &["udp", &format!("{to_ip}:8080")]);
        assert!(
            udp.contains(&format!("pod={to} ")) && udp.contains(&format!("client={from_ip}\n")),
            "{backend}: UDP {from} -> {to}: {udp}"
        );
    }
    // ICMP both ways, from inside the pods' namespaces.
    let (ok, out) = ping(&netns_a, ip_b);
    assert!(ok, "{backend}: ping a -> b: {out}");
    let (ok, out) = ping(&netns_b, ip_a);
    assert!(ok, "{backend}: ping b -> a: {out}");

    // Node to remote pod.
    let bin = tinykube_bin().unwrap();
    let bin = bin.to_str().unwrap();
    let (ok, out) = in_netns(
        &ns1,
        bin,
        &[
            "toolbox",
            "fetch",
            &format!("http://{ip_b}:8080/"),
            "--count",
            "1",
        ],
    );
    assert!(
        ok && out.contains("pod=b "),
        "{backend}: node 1 -> pod b: {out}"
    );
    // Pod to remote node: a server in node 2's namespace sees node 1's address (traffic
    // leaving the pod network is masqueraded).
    let mut server = Command::new("nsenter")
        .arg(format!("--net={ns2}"))
        .args([bin, "toolbox", "serve", "--port", "18080"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let reached = within(10, || {
        seen = exec_toolbox(
            &kubectl,
            "a",
            &["fetch", &format!("http://{}:18080/", n2.ip), "--count", "1"],
        );
        seen.contains("client=")
    })
    .await;
    let _ = server.kill();
    let _ = server.wait();
    assert!(reached, "{backend}: pod a -> node 2: {seen}");
    assert!(
        seen.contains(&format!("client={}\n", n1.ip)),
        "{backend}: pod a -> node 2 should be masqueraded as node 1: {seen}"
    );
    let (ok, out) = ping(&netns_a, n2.ip);
    assert!(ok, "{backend}: ping pod a -> node 2: {out}");

    // Counters are served through the API server for every backend.
    let m = metrics(&kubectl, &w2);
    assert!(
        m.contains(&format!("backend=\"{backend}\"")),
        "{backend}: metrics: {m}"
    );
    // The overlay device's own counters, read in the node's namespace, saw the traffic.
    if backend != "host-gw" {
        for direction in ["rx", "tx"] {
            let packets = counter(
                &m,
                &[
                    "tinykube_overlay_device_packets_total",
                    &format!("direction=\"{direction}\""),
                ],
            );
            assert!(
                packets.is_some_and(|p| p > 0),
                "{backend}: device {direction} packets: {m}"
            );
        }
    }

    if backend == "udp" {
        udp_wire_and_garbage(&t, &kubectl, (&n1, &n2), (ip_a, ip_b), (&netns_a, &w1, &w2)).await;
    }

    // A third worker joins the running cluster and is reached without restarts.
    let pids: Vec<Option<u32>> = [&w1, &w2]
        .iter()
        .map(|w| t.lab().node(w).unwrap().pid)
        .collect();
    let w3 = t.lab_mut().add_worker().await.expect("add a worker");
    run_pod(&kubectl, "c", &w3);
    let (ip_c, _) = running_pod(&client, "c").await;
    let (ok, out) = reaches(&kubectl, "a", ip_c, "c", 30).await;
    assert!(ok, "{backend}: a -> c on the new worker: {out}");
    let out = fetch(&kubectl, "c", ip_b);
    assert!(out.contains("pod=b "), "{backend}: c -> b: {out}");
    let now: Vec<Option<u32>> = [&w1, &w2]
        .iter()
        .map(|w| t.lab().node(w).unwrap().pid)
        .collect();
    assert_eq!(pids, now, "no worker was restarted");

    // ... and leaves no route behind when removed.
    let cidr3 = pod_cidr(&client, &w3).await;
    kubectl.ok(&["delete", "pod", "c", "--grace-period=0", "--force"]);
    t.lab_mut()
        .remove_worker(&w3)
        .await
        .expect("remove the worker");
    let gone = within(30, || {
        let routes = route_lines(&ns1);
        let m = metrics(&kubectl, &w1);
        !routes.contains(&cidr3) && !m.contains(&format!("peer=\"{w3}\""))
    })
    .await;
    assert!(
        gone,
        "{backend}: node 1 still knows the removed worker ({cidr3}): {}",
        route_lines(&ns1)
    );
    if backend == "vxlan" {
        let neigh = in_netns(&ns1, "ip", &["neigh", "show", "dev", "flannel.1"]).1;
        let gw3 = cidr3.trim_end_matches("/24");
        assert!(
            !neigh.contains(&format!("{gw3} ")),
            "stale neighbour: {neigh}"
        );
    }

    // Damage from outside is repaired by the periodic resync.
    if backend != "udp" {
        let victim = cidr_of_route_to(&route_lines(&ns1), &n2.ip.to_string(), backend);
        match backend {
            "vxlan" => assert!(in_netns(&ns1, "ip", &["link", "del", "flannel.1"]).0),
            _ => assert!(in_netns(&ns1, "ip", &["route", "del", &victim]).0),
        }
        let (ok, out) = reaches(&kubectl, "a", ip_b, "b", 45).await;
        assert!(
            ok,
            "{backend}: a -> b after worker 1's {victim} route was removed by hand: {out}"
        );
    }

    // A worker restarted: its device, routes and peers come back and traffic resumes.
    t.lab_mut().kill_node(&w2).await.unwrap();
    t.lab_mut().start_node(&w2).unwrap();
    let (ok, out) = reaches(&kubectl, "a", ip_b, "b", 60).await;
    assert!(ok, "{backend}: a -> b after worker 2 restarted: {out}");
    let out = fetch(&kubectl, "b", ip_a);
    assert!(
        out.contains("pod=a "),
        "{backend}: b -> a after the restart: {out}"
    );
    let dev = match backend {
        "udp" => Some("flannel0"),
        "vxlan" => Some("flannel.1"),
        _ => None,
    };
    if let Some(dev) = dev {
        let (ok, out) = in_netns(&ns2, "ip", &["link", "show", dev]);
        assert!(ok, "{backend}: {dev} on worker 2 after the restart: {out}");
    }
    t.down().await;
}

/// udp only: the traffic on the lab bridge is UDP to port 8285 between the node
/// addresses with the pod packet inside; garbage on 8285 is dropped and counted, and
/// the data path keeps working.
async fn udp_wire_and_garbage(
    t: &TestLab,
    kubectl: &Kubectl,
    (n1, n2): (&tinykube_lab::LabNode, &tinykube_lab::LabNode),
    (ip_a, ip_b): (Ipv4Addr, Ipv4Addr),
    (netns_a, w1, w2): (&str, &str, &str),
) {
    let capture = Capture::open(&t.lab().state.bridge);
    let netns = netns_a.to_string();
    let pinger = std::thread::spawn(move || ping(&netns, ip_b));
    let frames = capture.frames(Duration::from_millis(1500));
    assert!(pinger.join().unwrap().0, "ping during the capture");
    let seen: Vec<_> = frames.iter().filter_map(|f| encapsulated(f)).collect();
    assert!(
        seen.iter().any(|&(s, d, port, is, id, proto)| s == n1.ip
            && d == n2.ip
            && port == 8285
            && is == ip_a
            && id == ip_b
            && proto == 1),
        "no UDP 8285 datagram from {} to {} holding ICMP {ip_a} -> {ip_b} among {} frames: {seen:?}",
        n1.ip,
        n2.ip,
        frames.len()
    );

    let before = metrics(kubectl, w2);
    let count = |m: &str, reason: &str| {
        counter(m, &[&format!("reason=\"{reason}\"")])
            .unwrap_or_else(|| panic!("no {reason} counter: {m}"))
    };
    assert!(
        counter(
            &before,
            &[
                "packets_total",
                &format!("peer=\"{w1}\""),
                "direction=\"decap\""
            ]
        )
        .is_some_and(|n| n > 0),
        "decapsulated packets from {w1} are counted: {before}"
    );
    // From a stranger (the host, on the lab bridge).
    let target = (n2.ip, 8285);
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    for _ in 0..3 {
        s.send_to(&[0x45; 64], target).unwrap();
    }
    // From a peer: truncated, and larger than any pod may send.
    let ns = NetNs::open(&n1.netns).unwrap();
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(&[0x45, 0x00, 0x00], target).unwrap();
        let mut big = vec![0u8; 3000];
        big[0] = 0x45;
        big[2..4].copy_from_slice(&3000u16.to_be_bytes());
        s.send_to(&big, target).unwrap();
    })
    .unwrap();
    let mut after = String::new();
    let counted = within(10, || {
        after = metrics(kubectl, w2);
        count(&after, "stranger") >= count(&before, "stranger") + 3
            && count(&after, "truncated") > count(&before, "truncated")
            && count(&after, "oversize") > count(&before, "oversize")
    })
    .await;
    assert!(counted, "garbage counted: before {before}\nafter {after}");
    // The data path still carries traffic.
    let out = fetch(kubectl, "a", ip_b);
    assert!(out.contains("pod=b "), "after the garbage: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_reach_pods_on_other_nodes_over_udp() {
    cross_node("udp").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_reach_pods_on_other_nodes_over_vxlan() {
    cross_node("vxlan").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_reach_pods_on_other_nodes_over_host_gw() {
    cross_node("host-gw").await;
}
