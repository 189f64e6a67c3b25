//! End-to-end tests of cluster DNS (root, a local cluster), after the Kubernetes
//! conformance tests for DNS (`test/e2e/network/dns.go`): from a pod, over UDP and TCP,
//! every record kind of the specification, names outside the cluster through a fake
//! upstream the test runs, SERVFAIL at once when no upstream answers, answers with the
//! master stopped, and garbage that does not stop the server.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use tinykube_tests::lab::TestLab;
use tinykube_tests::{Kubectl, eventually};

/// `toolbox dig ARGS` in pod `pod`: (whether it exited 0, its output).
fn dig(kubectl: &Kubectl, pod: &str, args: &[&str]) -> (bool, String) {
    let mut a = vec!["dig"];
    a.extend_from_slice(args);
    let r = kubectl.toolbox(pod, &a);
    (r.ok, format!("{}{}", r.stdout, r.stderr))
}

/// `toolbox ARGS` in pod `pod`; it must succeed.
fn ok_toolbox(k: &Kubectl, pod: &str, args: &[&str]) -> String {
    let r = k.toolbox(pod, args);
    assert!(r.ok, "toolbox {args:?} in {pod}: {}{}", r.stdout, r.stderr);
    r.stdout
}

/// `toolbox ARGS` in the network namespace of lab node `netns`.
fn in_node(netns: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{netns}"))
        .arg(tinykube_tests::tinykube_bin().unwrap())
        .arg("toolbox")
        .args(args)
        .output()
        .unwrap()
}

/// The short answer of `toolbox dig --short NAME TYPE` (and over TCP), sorted lines.
fn short(kubectl: &Kubectl, pod: &str, name: &str, qtype: &str) -> Vec<String> {
    let mut got = Vec::new();
    for tcp in [false, true] {
        let mut args = vec!["--short", name, qtype];
        if tcp {
            args.push("--tcp");
        }
        let (ok, out) = dig(kubectl, pod, &args);
        assert!(ok, "dig {args:?}: {out}");
        let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
        lines.sort();
        got.push(lines);
    }
    assert_eq!(got[0], got[1], "{name} {qtype}: UDP and TCP agree");
    got.remove(0)
}

/// A DNS server for `outside.example.` (A 192.0.2.44) on `addr`, NXDOMAIN otherwise;
/// counts the questions it gets.
async fn fake_upstream(addr: SocketAddr) -> Arc<AtomicUsize> {
    let sock = tokio::net::UdpSocket::bind(addr)
        .await
        .expect("bind the fake upstream");
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let mut r = Message::new();
            r.set_id(q.id())
                .set_message_type(MessageType::Response)
                .set_recursion_available(true)
                .add_queries(q.queries().iter().cloned());
            match q.queries().first() {
                Some(query) if query.name().to_ascii() == "outside.example." => {
                    r.add_answer(Record::from_rdata(
                        query.name().clone(),
                        60,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, 44))),
                    ));
                }
                _ => {
                    r.set_response_code(ResponseCode::NXDomain);
                }
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    asked
}

fn wait_ready(kubectl: &Kubectl, what: &[&str]) {
    let mut args = vec!["wait", "--for=condition=Ready", "--timeout=90s"];
    args.extend_from_slice(what);
    kubectl.ok(&args);
}

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  containers: [{name: c, image: tinykube.local/toolbox, args: [serve]}]
---
apiVersion: v1
kind: Service
metadata: {name: alias}
spec: {type: ExternalName, externalName: web.default.svc.cluster.local}
---
apiVersion: v1
kind: Service
metadata: {name: away}
spec: {type: ExternalName, externalName: outside.example}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  hostAliases: [{ip: 10.1.2.3, hostnames: [foo.local]}]
  containers: [{name: c, image: tinykube.local/toolbox, args: [sleep, "3600"]}]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn cluster_dns_answers_pods_from_their_own_node() {
    let resolv = tempfile::NamedTempFile::new().unwrap();
    // Nothing answers DNS on the nodes' loopback: names outside the cluster fail.
    std::fs::write(resolv.path(), "nameserver 127.0.0.1\n").unwrap();
    let resolv_path = resolv.path().to_string_lossy().into_owned();
    let t = TestLab::start_with(2, &["--resolv-conf", &resolv_path]).await;
    let k = t.kubectl();

    // kubeadm's kube-dns Service is there from the start.
    let svc = k.ok(&[
        "get",
        "svc",
        "-n",
        "kube-system",
        "kube-dns",
        "-o",
        "jsonpath={.spec.clusterIP} {.spec.ports[*].name}",
    ]);
    assert_eq!(svc, "10.96.0.10 dns dns-tcp metrics");

    k.ok(&[
        "create",
        "deployment",
        "web",
        "--image=tinykube.local/toolbox",
        "--replicas=2",
    ]);
    k.ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
        "--name=web",
    ]);
    k.ok_stdin(&["apply", "-f", "-"], MANIFESTS);
    wait_ready(&k, &["pod/client", "pod/db-0"]);
    k.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let web_ip = k.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let db_ip = k.ok(&["get", "pod", "db-0", "-o", "jsonpath={.status.podIP}"]);
    let client_ip = k.ok(&["get", "pod", "client", "-o", "jsonpath={.status.podIP}"]);

    // The pod's resolver files.
    let resolv_conf = ok_toolbox(&k, "client", &["cat", "/etc/resolv.conf", "/etc/hosts"]);
    assert!(
        resolv_conf.contains("nameserver 10.96.0.10\n"),
        "{resolv_conf}"
    );
    assert!(
        resolv_conf.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv_conf}"
    );
    assert!(resolv_conf.contains("options ndots:5"), "{resolv_conf}");
    assert!(resolv_conf.contains("10.1.2.3\tfoo.local"), "{resolv_conf}");
    let db_hosts = ok_toolbox(&k, "db-0", &["cat", "/etc/hosts"]);
    assert!(
        db_hosts.contains(&format!("{db_ip}\tdb-0.db.default.svc.cluster.local\tdb-0")),
        "{db_hosts}"
    );

    // A service by its full name and, through the search list, by its short name.
    assert_eq!(
        short(&k, "client", "web.default.svc.cluster.local", "A"),
        vec![web_ip.clone()]
    );
    let (ok, out) = dig(&k, "client", &["--search", "--short", "web"]);
    assert_eq!((ok, out.trim()), (true, web_ip.as_str()));
    // Names are not case-sensitive.
    assert_eq!(
        short(&k, "client", "WEB.Default.svc.Cluster.Local", "A"),
        vec![web_ip.clone()]
    );
    // Headless: the ready endpoints, and the pod by hostname.subdomain.
    assert_eq!(
        short(&k, "client", "db.default.svc.cluster.local", "A"),
        vec![db_ip.clone()]
    );
    assert_eq!(
        short(&k, "client", "db-0.db.default.svc.cluster.local", "A"),
        vec![db_ip.clone()]
    );
    // SRV for named ports: the service, or each endpoint of a headless one.
    assert_eq!(
        short(
            &k,
            "client",
            "_http._tcp.db.default.svc.cluster.local",
            "SRV"
        ),
        vec!["0 100 8080 db-0.db.default.svc.cluster.local.".to_string()]
    );
    // PTR for a ClusterIP and for a headless endpoint.
    let rev = |ip: &str| {
        let mut o: Vec<&str> = ip.split('.').collect();
        o.reverse();
        format!("{}.in-addr.arpa", o.join("."))
    };
    assert_eq!(
        short(&k, "client", &rev(&web_ip), "PTR"),
        vec!["web.default.svc.cluster.local.".to_string()]
    );
    assert_eq!(
        short(&k, "client", &rev(&db_ip), "PTR"),
        vec!["db-0.db.default.svc.cluster.local.".to_string()]
    );
    // ExternalName: a CNAME, followed inside the cluster.
    assert_eq!(
        short(&k, "client", "alias.default.svc.cluster.local", "A"),
        vec![web_ip.clone(), "web.default.svc.cluster.local.".to_string()]
    );
    // Pod records and the schema version.
    let dashed = format!("{}.default.pod.cluster.local", client_ip.replace('.', "-"));
    assert_eq!(short(&k, "client", &dashed, "A"), vec![client_ip.clone()]);
    assert_eq!(
        short(&k, "client", "dns-version.cluster.local", "TXT"),
        vec!["1.1.0".to_string()]
    );
    // A missing name: NXDOMAIN with the zone's SOA, authoritative.
    let (ok, out) = dig(&k, "client", &["nope.default.svc.cluster.local"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("status: NXDOMAIN") && out.contains("flags: qr aa"),
        "{out}"
    );
    assert!(
        out.contains("SOA\tns.dns.cluster.local. hostmaster.cluster.local."),
        "{out}"
    );
    // A name by DNS, from the toolbox's HTTP client.
    let body = ok_toolbox(&k, "client", &["fetch", "http://web/", "--count", "1"]);
    assert!(body.starts_with("pod=web-"), "{body}");

    // No upstream answers: SERVFAIL at once, not after a resolver's timeout.
    let started = Instant::now();
    let (_, out) = dig(&k, "client", &["outside.example"]);
    assert!(out.contains("status: SERVFAIL"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    // An upstream on the lab bridge: names outside the cluster are forwarded (the node
    // reads its resolv.conf again when it changes), and cached.
    let gateway = t.gateway();
    let asked = fake_upstream(SocketAddr::new(gateway.into(), 53)).await;
    std::fs::write(resolv.path(), format!("nameserver {gateway}\n")).unwrap();
    let forwarded = eventually(Duration::from_secs(20), async || {
        let (ok, out) = dig(&k, "client", &["--short", "outside.example"]);
        (ok && out.trim() == "192.0.2.44").then_some(())
    })
    .await;
    assert!(forwarded.is_some(), "outside.example never forwarded");
    let before = asked.load(Ordering::SeqCst);
    let (_, out) = dig(&k, "client", &["--short", "outside.example"]);
    assert_eq!(out.trim(), "192.0.2.44");
    let (_, out) = dig(&k, "client", &["--short", "outside.example", "A", "--tcp"]);
    assert_eq!(out.trim(), "192.0.2.44");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        before,
        "answered from the cache"
    );
    // An ExternalName outside the cluster: the CNAME and the upstream's answer.
    assert_eq!(
        short(&k, "client", "away.default.svc.cluster.local", "A"),
        vec!["192.0.2.44".to_string(), "outside.example.".to_string()]
    );
    let (ok, out) = dig(&k, "client", &["elsewhere.example"]);
    assert!(!ok && out.contains("status: NXDOMAIN"), "{out}");

    // Garbage at the server: dropped or FORMERR, counted, and it keeps answering.
    let worker = t.lab().state.nodes[1].clone();
    let out = in_node(
        &worker.netns,
        &["udp", "10.96.0.10:53", "--count", "3", "--interval-ms", "0"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        short(&k, "client", "web.default.svc.cluster.local", "A"),
        vec![web_ip.clone()]
    );
    let metrics = k.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{}/proxy/metrics", worker.name),
    ]);
    let malformed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tinykube_dns_malformed_requests_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no malformed counter in {metrics}"));
    assert!(malformed >= 3, "{malformed}");
    // The client's node counted its questions by type and its answers by rcode.
    let client_node = k.ok(&["get", "pod", "client", "-o", "jsonpath={.spec.nodeName}"]);
    let metrics = k.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{client_node}/proxy/metrics"),
    ]);
    let count = |prefix: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        count(
            "coredns_dns_requests_total{server=\"dns://:53\",zone=\".\",proto=\"tcp\",family=\"1\",type=\"PTR\"} "
        ) >= 2,
        "{metrics}"
    );
    assert!(
        count("coredns_dns_responses_total{server=\"dns://:53\",zone=\".\",rcode=\"NXDOMAIN\"} ")
            >= 2,
        "{metrics}"
    );
    assert!(
        count("coredns_cache_hits_total{server=\"dns://:53\",type=\"success\"} ") >= 2,
        "{metrics}"
    );

    // The node itself asks 10.96.0.10 too (its own address, never DNAT-ed).
    let out = in_node(
        &worker.netns,
        &[
            "dig",
            "--server",
            "10.96.0.10",
            "--short",
            "web.default.svc.cluster.local",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        web_ip,
        "{out:?}"
    );

    // With the master stopped, every node still answers from its cache.
    let master = t.lab().state.nodes[0].pid.expect("master pid");
    // SAFETY: a signal to the master process this test's cluster started.
    unsafe { libc::kill(master as i32, libc::SIGSTOP) };
    let during = in_node(
        &worker.netns,
        &[
            "dig",
            "--server",
            "10.96.0.10",
            "--short",
            "--tcp",
            "db-0.db.default.svc.cluster.local",
        ],
    );
    // SAFETY: as above.
    unsafe { libc::kill(master as i32, libc::SIGCONT) };
    assert_eq!(
        String::from_utf8_lossy(&during.stdout).trim(),
        db_ip,
        "{during:?}"
    );
    t.down().await;
}
