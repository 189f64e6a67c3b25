//! End-to-end tests of the Service features beyond ClusterIP and NodePort (root, a local
//! cluster), after the Kubernetes conformance tests in `test/e2e/network/service.go`:
//! LoadBalancer addresses reached from the host, a second service on a taken port
//! refused with an Event, ClientIP session affinity switched on and off,
//! externalTrafficPolicy Local (client address kept, only nodes with a local endpoint
//! answer, the health check node port), and a UDP client moved off a deleted endpoint.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use tinykube_tests::lab::TestLab;
use tinykube_tests::{Kubectl, answered_by, eventually, tinykube_bin};

/// `toolbox ARGS` on the host (the lab bridge's side); its standard output.
fn host(args: &[&str]) -> String {
    let out = Command::new(tinykube_bin().unwrap())
        .arg("toolbox")
        .args(args)
        .output()
        .expect("toolbox runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fetch_host(url: &str, count: u32) -> String {
    host(&[
        "fetch",
        url,
        "--count",
        &count.to_string(),
        "--interval-ms",
        "0",
    ])
}

fn pod_yaml(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: web}}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: tinykube.local/toolbox, args: [serve]}}]\n---\n"
    )
}

fn jsonpath(k: &Kubectl, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let p = format!("jsonpath={path}");
    args.extend_from_slice(&["-o", &p]);
    k.ok(&args)
}

#[tokio::test(flavor = "multi_thread")]
async fn load_balancers_affinity_and_traffic_policies() {
    let t = TestLab::start(2).await;
    let k = t.kubectl();
    let name = t.name.clone();
    let (w1, w2) = (format!("{name}-worker-1"), format!("{name}-worker-2"));
    let ip_of = |n: usize| t.lab().state.nodes[n].ip.to_string();
    let (master_ip, w1_ip, w2_ip) = (ip_of(0), ip_of(1), ip_of(2));

    // Two pods on worker-1, one on worker-2, and a client.
    let mut yaml = pod_yaml("web-a", &w1) + &pod_yaml("web-b", &w1) + &pod_yaml("web-c", &w2);
    yaml.push_str("apiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n  containers: [{name: c, image: tinykube.local/toolbox, args: [sleep, \"3600\"]}]\n");
    k.ok_stdin(&["apply", "-f", "-"], &yaml);
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=90s",
        "pod/web-a",
        "pod/web-b",
        "pod/web-c",
        "pod/client",
    ]);
    k.ok(&[
        "expose",
        "pod",
        "web-a",
        "--name=web",
        "--selector=app=web",
        "--port=80",
        "--target-port=8080",
        "--type=LoadBalancer",
    ]);

    // Every Ready, schedulable node's address, on EXTERNAL-IP, each reaching the pods.
    let want = {
        let mut v = [master_ip.clone(), w1_ip.clone(), w2_ip.clone()];
        v.sort();
        v.join(" ")
    };
    let got = eventually(Duration::from_secs(20), async || {
        let s = jsonpath(&k, &["svc", "web"], "{.status.loadBalancer.ingress[*].ip}");
        let mut v: Vec<&str> = s.split_whitespace().collect();
        v.sort();
        (v.join(" ") == want).then_some(())
    })
    .await;
    assert!(got.is_some(), "ingress never became {want}");
    let table = k.ok(&["get", "svc", "web"]);
    assert!(
        table.contains(&w1_ip) && table.contains("LoadBalancer"),
        "{table}"
    );
    let mut everyone = BTreeSet::new();
    for ip in [&master_ip, &w1_ip, &w2_ip] {
        let out = fetch_host(&format!("http://{ip}/"), 6);
        let by = answered_by(&out);
        assert!(!by.is_empty(), "nothing answered on {ip}: {out}");
        everyone.extend(by);
    }
    assert_eq!(everyone.len(), 3, "all three pods answer: {everyone:?}");
    // loadBalancerSourceRanges: a client outside them is dropped (KUBE-FW ->
    // KUBE-PROXY-FIREWALL), one inside gets through.
    k.ok(&[
        "patch",
        "service",
        "web",
        "-p",
        "{\"spec\":{\"loadBalancerSourceRanges\":[\"203.0.113.0/24\"]}}",
    ]);
    let blocked = eventually(Duration::from_secs(10), async || {
        fetch_host(&format!("http://{w1_ip}/"), 1)
            .starts_with("error:")
            .then_some(())
    })
    .await;
    assert!(
        blocked.is_some(),
        "a client outside the source ranges got through"
    );
    let allow = format!(
        "{{\"spec\":{{\"loadBalancerSourceRanges\":[\"{}/32\"]}}}}",
        t.gateway()
    );
    k.ok(&["patch", "service", "web", "-p", &allow]);
    let through = eventually(Duration::from_secs(10), async || {
        (!answered_by(&fetch_host(&format!("http://{w1_ip}/"), 1)).is_empty()).then_some(())
    })
    .await;
    assert!(
        through.is_some(),
        "a client inside the source ranges was refused"
    );

    // A second LoadBalancer on the same port: no address, and an Event saying why.
    k.ok(&["create", "service", "loadbalancer", "web2", "--tcp=80:8080"]);
    let event = eventually(Duration::from_secs(20), async || {
        let e = k.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web2",
            "-o",
            "jsonpath={.items[*].reason} {.items[*].message}",
        ]);
        e.contains("PortInUse").then_some(e)
    })
    .await
    .expect("a PortInUse event for web2");
    assert!(
        event.contains("port 80/TCP is already used by LoadBalancer service default/web"),
        "{event}"
    );
    assert_eq!(
        jsonpath(&k, &["svc", "web2"], "{.status.loadBalancer.ingress}"),
        ""
    );
    assert!(k.ok(&["get", "svc", "web2"]).contains("<pending>"));
    // Freed: it gets the addresses.
    k.ok(&["delete", "service", "web"]);
    let freed = eventually(Duration::from_secs(20), async || {
        let s = jsonpath(&k, &["svc", "web2"], "{.status.loadBalancer.ingress[*].ip}");
        (s.split_whitespace().count() == 3).then_some(())
    })
    .await;
    assert!(freed.is_some(), "web2 never got the port");
    k.ok(&["delete", "service", "web2"]);

    // ClientIP affinity: 30 requests from one client, one pod; switched off, spread.
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  sessionAffinity: ClientIP\n  ports: [{name: http, port: 80, targetPort: 8080}]\n";
    k.ok_stdin(&["apply", "-f", "-"], svc);
    let cip = jsonpath(&k, &["svc", "web"], "{.spec.clusterIP}");
    let timeout = jsonpath(
        &k,
        &["svc", "web"],
        "{.spec.sessionAffinityConfig.clientIP.timeoutSeconds}",
    );
    assert_eq!(timeout, "10800", "the default timeout");
    let from_client = |url: &str, n: u32| {
        let r = k.toolbox(
            "client",
            &[
                "fetch",
                url,
                "--count",
                &n.to_string(),
                "--interval-ms",
                "0",
            ],
        );
        r.stdout
    };
    // The rules follow within a second; the first answers may still be spread.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by = answered_by(&from_client(&format!("http://{cip}/"), 30));
    assert_eq!(by.len(), 1, "one pod for one client: {by:?}");
    k.ok(&[
        "patch",
        "service",
        "web",
        "-p",
        "{\"spec\":{\"sessionAffinity\":\"None\",\"sessionAffinityConfig\":null}}",
    ]);
    let spread = eventually(Duration::from_secs(20), async || {
        let by = answered_by(&from_client(&format!("http://{cip}/"), 30));
        (by.len() >= 2).then_some(())
    })
    .await;
    assert!(
        spread.is_some(),
        "affinity off, the answers never spread again"
    );

    // externalTrafficPolicy Local: the client's own address reaches the pod, and only a
    // node with a local endpoint answers; the health check port says which.
    k.ok(&[
        "patch",
        "service",
        "web",
        "-p",
        "{\"spec\":{\"externalTrafficPolicy\":\"Local\"}}",
    ]);
    let hc = jsonpath(&k, &["svc", "web"], "{.spec.healthCheckNodePort}");
    let hc: u16 = hc
        .parse()
        .unwrap_or_else(|_| panic!("no healthCheckNodePort: {hc:?}"));
    let gateway = t.gateway();
    let kept = eventually(Duration::from_secs(20), async || {
        let out = fetch_host(&format!("http://{w2_ip}/"), 3);
        out.lines()
            .all(|l| l.starts_with("pod=web-c") && l.contains(&format!("client={gateway}")))
            .then_some(out)
    })
    .await;
    assert!(
        kept.is_some(),
        "worker-2 never sent to its own pod with the client's address"
    );
    let out = fetch_host(&format!("http://{w1_ip}/"), 6);
    let by = answered_by(&out);
    assert!(
        by.iter().all(|p| p == "web-a" || p == "web-b") && !by.is_empty(),
        "{out}"
    );
    let health = |ip: &str| host(&["fetch", &format!("http://{ip}:{hc}/"), "--count", "1"]);
    let h1 = health(&w1_ip);
    assert!(
        h1.contains("\"localEndpoints\":2") && h1.contains("\"name\":\"web\""),
        "{h1}"
    );
    let hm = health(&master_ip);
    assert!(hm.contains("\"localEndpoints\":0"), "{hm}");
    // The master has no endpoint: it drops the traffic instead of forwarding it.
    let out = host(&["fetch", &format!("http://{master_ip}/"), "--count", "1"]);
    assert!(out.starts_with("error:"), "{out}");

    // A UDP client keeps its source port; when its endpoint goes, its conntrack entry
    // goes too and the next datagram reaches another pod instead of the dead one.
    k.ok(&["delete", "service", "web"]);
    let echo = "apiVersion: v1\nkind: Service\nmetadata: {name: echo}\nspec:\n  selector: {app: web}\n  ports: [{port: 53, targetPort: 8080, protocol: UDP}]\n";
    k.ok_stdin(&["apply", "-f", "-"], echo);
    let eip = jsonpath(&k, &["svc", "echo"], "{.spec.clusterIP}");
    let client_node = jsonpath(&k, &["pod", "client"], "{.spec.nodeName}");
    let netns = t
        .lab()
        .node(&client_node)
        .expect("the client's node")
        .netns
        .clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kubeconfig = k.kubeconfig.clone();
    let home = k.home.clone();
    let target = format!("{eip}:53");
    let sender = std::thread::spawn(move || {
        let k = Kubectl { kubeconfig, home };
        k.toolbox(
            "client",
            &["udp", &target, "--count", "24", "--interval-ms", "250"],
        )
        .stdout
    });
    // The endpoint the client's flow was sent to, from the node's conntrack table.
    let service: std::net::SocketAddrV4 = format!("{eip}:53").parse().unwrap();
    let ns = tinykube_net::netns::NetNs::open(&netns).unwrap();
    let chosen = eventually(Duration::from_secs(5), async || {
        let entries = ns.run(tinykube_proxy::conntrack::entries).ok()?.ok()?;
        entries
            .iter()
            .find(|(o, r)| o.dst == service && r.src != service)
            .map(|(_, r)| r.src.ip().to_string())
    })
    .await
    .expect("a conntrack entry for the client's flow");
    let pods = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.podIP} {end}",
    ]);
    let victim = pods
        .split_whitespace()
        .find_map(|p| {
            p.split_once('=')
                .filter(|(_, ip)| *ip == chosen)
                .map(|(n, _)| n.to_string())
        })
        .unwrap_or_else(|| panic!("no pod has {chosen}: {pods}"));
    k.ok(&["delete", "pod", &victim, "--grace-period=0", "--force"]);
    let out = sender.join().unwrap();
    let last: Vec<&str> = out.lines().rev().take(6).collect();
    assert!(
        last.iter()
            .all(|l| l.starts_with("pod=") && !l.starts_with(&format!("pod={victim} "))),
        "after {victim} went, the answers come from another pod: {out}"
    );
    t.down().await;
}

/// With `--lb-pool`, a service gets an address of its own from the pool (its
/// `loadBalancerIP` if it asks, 422 when that is outside the pool), one node announces
/// it, and when that node stops another takes it over within seconds.
#[tokio::test(flavor = "multi_thread")]
async fn pool_addresses_move_when_their_node_stops() {
    let t = TestLab::start_with_lb_pool(2).await;
    let k = t.kubectl();
    let name = t.name.clone();
    let (w1, w2) = (format!("{name}-worker-1"), format!("{name}-worker-2"));
    let gw = t.gateway().octets();
    let net = format!("{}.{}.{}", gw[0], gw[1], gw[2]);
    // Only the workers announce (stopping the master would stop the API too).
    k.ok(&[
        "label",
        "node",
        &w1,
        &w2,
        "svccontroller.tinykube.io/enablelb=true",
    ]);
    let yaml = pod_yaml("web-a", &w1) + &pod_yaml("web-c", &w2);
    k.ok_stdin(&["apply", "-f", "-"], &yaml);
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=90s",
        "pod/web-a",
        "pod/web-c",
    ]);

    // Local: the announcing node answers with its own pod, never with one on the node
    // that went away (an endpoint until that node is found NotReady).
    let svc = |ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  loadBalancerIP: {ip}\n  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
        )
    };
    let r = k.run_stdin(&["apply", "-f", "-"], &svc("10.1.2.3"));
    assert!(!r.ok, "{}", r.stdout);
    assert!(
        r.stderr.contains(&format!("spec.loadBalancerIP: Invalid value: \"10.1.2.3\": is not in the LoadBalancer address pool {net}.240-{net}.250")),
        "{}",
        r.stderr
    );
    let ip = format!("{net}.245");
    k.ok_stdin(&["apply", "-f", "-"], &svc(&ip));
    let set = eventually(Duration::from_secs(20), async || {
        (jsonpath(&k, &["svc", "web"], "{.status.loadBalancer.ingress[*].ip}") == ip).then_some(())
    })
    .await;
    assert!(set.is_some(), "the service never got {ip}");
    let lease = format!("tinykube-lb-{}", ip.replace('.', "-"));
    let holder_of = |lease: &str| {
        k.run(&[
            "get",
            "lease",
            "-n",
            "kube-system",
            lease,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .stdout
    };
    let holder = eventually(Duration::from_secs(20), async || {
        let h = holder_of(&lease);
        (!h.is_empty()).then_some(h)
    })
    .await
    .expect("a node holds the address");
    assert!(holder == w1 || holder == w2, "{holder}");
    let reached = eventually(Duration::from_secs(10), async || {
        (!answered_by(&fetch_host(&format!("http://{ip}/"), 2)).is_empty()).then_some(())
    })
    .await;
    assert!(reached.is_some(), "{ip} never answered from the host");

    // The holder stops, as a machine that powers off: its agent killed, its link down.
    let node = t
        .lab()
        .node(&holder)
        .expect("the holder is a lab node")
        .clone();
    let started = std::time::Instant::now();
    // SAFETY: a signal to a node process this test's cluster started.
    unsafe { libc::kill(node.pid.expect("pid") as i32, libc::SIGKILL) };
    let down = Command::new("ip")
        .args(["link", "set", &node.veth, "down"])
        .status()
        .unwrap();
    assert!(down.success());
    let moved = eventually(Duration::from_secs(30), async || {
        let h = holder_of(&lease);
        let answered = !answered_by(&fetch_host(&format!("http://{ip}/"), 1)).is_empty();
        (h != holder && !h.is_empty() && answered).then(|| started.elapsed())
    })
    .await
    .expect("the address moved to the other worker and answers");
    assert!(moved <= Duration::from_secs(12), "took {moved:?}");
    println!("pool address moved in {:.1} s", moved.as_secs_f64());
    t.down().await;
}
