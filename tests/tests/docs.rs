//! docs/networking.md runs as written: its `sh` blocks, in order, from a fresh lab to
//! the end of the page, with the real kubectl, and what the page says they show. Needs
//! root (CI runs as root).

use tinykube_tests::answered_by;
use tinykube_tests::docs::{walk, walk_after};

#[test]
fn networking_page_runs_as_written() {
    let w = walk("docs/networking.md", false);
    let b = |i| w.block(i);
    // Pod to pod across nodes: b answers a, naming its node, with a's own address.
    let p2p = b(1);
    assert!(p2p.contains("node=worker-2"), "{p2p}");
    assert_eq!(answered_by(&p2p), ["b".to_string()].into(), "{p2p}");
    assert!(p2p.contains("dev flannel0"), "{p2p}");
    assert!(p2p.contains("tinykube_overlay_packets_total"), "{p2p}");
    // A ClusterIP and a NodePort spread over three pods; kube-proxy's chains.
    let svc = b(2);
    assert!(answered_by(&svc).len() >= 2, "{svc}");
    assert!(
        svc.contains("-A KUBE-SERVICES") && svc.contains("KUBE-SVC-"),
        "{svc}"
    );
    // DNS from a pod.
    let dns = b(3);
    assert!(dns.contains("pod=web-"), "by name: {dns}");
    assert!(dns.contains("NXDOMAIN"), "{dns}");
    assert!(dns.contains("CNAME"), "{dns}");
    // LoadBalancer on the nodes' addresses, the port conflict, affinity, Local.
    let lb = b(4);
    assert!(lb.contains("192.168.56.11"), "{lb}");
    assert!(lb.contains("PortInUse"), "{lb}");
    assert!(
        answered_by(&lb).iter().all(|p| p.starts_with("web-")),
        "{lb}"
    );
    assert!(lb.contains("localEndpoints"), "{lb}");
    // An address from the pool, held by one node.
    let pool = b(5);
    assert!(pool.contains("192.168.56.240"), "{pool}");
    assert!(pool.contains("tinykube-lb-192-168-56-240"), "{pool}");
    assert!(
        answered_by(&pool).iter().any(|p| p.starts_with("web-")),
        "{pool}"
    );
    println!("networking.md: {:.1} s", w.seconds);
}

/// The README's own example (the quick start's cluster is the lab `tinykube up` makes;
/// CI runs `scripts/quickstart` itself).
#[test]
fn readme_runs_as_written() {
    let w = walk_after("tinykube up >/dev/null\n", "README.md", false);
    let out = w.block(0);
    let pods: Vec<&str> = out.lines().filter(|l| l.starts_with("server-")).collect();
    assert_eq!(pods.len(), 4, "{out}");
    assert!(
        pods.iter().any(|p| p.contains("worker-1")) && pods.iter().any(|p| p.contains("worker-2")),
        "spread over both workers: {out}"
    );
    assert!(out.contains("serving on :8080 as pod=server-"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("pod=server-")).count(),
        3,
        "{out}"
    );
    // See the internals: the shared namespaces, the node's subnet, the overlay hop by
    // hop and in a capture, the proxy's counters, resource usage.
    let pod = w.block(1);
    assert!(pod.contains("Sandbox: the pause container"), "{pod}");
    assert!(
        pod.contains("=  ") && pod.contains("*  "),
        "shared and own namespaces: {pod}"
    );
    assert!(pod.contains("a port of bridge cni0"), "{pod}");
    let node = w.block(2);
    assert!(node.contains("podCIDR   10.244."), "{node}");
    assert!(node.contains("backend   udp on flannel0"), "{node}");
    let trace = w.block(3);
    assert!(trace.contains("192.168.56.12:8285"), "{trace}");
    assert!(
        trace.contains("[+") && trace.contains("connected"),
        "{trace}"
    );
    assert!(
        trace
            .lines()
            .filter(|l| l.contains("UDP") && l.contains(".8285"))
            .count()
            >= 2,
        "the capture shows pod packets inside UDP: {trace}"
    );
    let svc = w.block(4);
    let conns: u64 = svc
        .lines()
        .filter(|l| l.contains("-> KUBE-SEP-") && l.contains("DNAT"))
        .filter(|l| l.contains("conns]"))
        .filter_map(|l| l.split("[").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(conns >= 30, "the endpoints' counters add up: {svc}");
    let top = w.block(5);
    assert!(
        top.contains("MEMORY(bytes)") && top.contains("server-"),
        "{top}"
    );
    assert!(top.contains("worker-2"), "{top}");
}

/// docs/access.md: a user from the cluster CA, refused, let in by a Role and a
/// RoleBinding, and unable to grant what she does not hold.
#[test]
fn access_page_runs_as_written() {
    let w = walk_after(
        "tinykube up --workers 0 >/dev/null\n",
        "docs/access.md",
        false,
    );
    let admin = w.block(0);
    assert!(
        admin.contains("kubernetes-admin") && admin.contains("system:masters"),
        "{admin}"
    );
    let jane = w.block(1);
    assert!(
        jane.contains("Username    jane") && jane.contains("[devs system:authenticated]"),
        "{jane}"
    );
    // The tutorial's request: pending until approved, then signed.
    let row = |condition: &str| {
        jane.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&"jane")
                && f.get(2) == Some(&"kubernetes.io/kube-apiserver-client")
                && f.get(3) == Some(&"kubernetes-admin")
                && f.get(4) == Some(&"24h")
                && f.get(5) == Some(&condition)
        })
    };
    assert!(row("Pending") && row("Approved,Issued"), "{jane}");
    let refused = w.block(2);
    assert!(
        refused.contains("pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
        "{refused}"
    );
    assert!(refused.lines().any(|l| l.trim() == "no"), "{refused}");
    let granted = w.block(3);
    assert!(granted.lines().any(|l| l.trim() == "yes"), "{granted}");
    assert!(
        granted.contains("secrets is forbidden: User \"jane\""),
        "{granted}"
    );
    assert!(
        granted.contains("in the namespace \"kube-system\""),
        "{granted}"
    );
    let escalation = w.block(4);
    assert!(
        escalation.contains("rolebinding.rbac.authorization.k8s.io/bob-reads-pods created"),
        "{escalation}"
    );
    assert!(
        escalation.contains("is attempting to grant RBAC permissions not currently held"),
        "{escalation}"
    );
    let why = w.block(5);
    assert!(
        why.contains(r#"allowed by RoleBinding "jane-reads-pods/default" of Role "pod-reader" to User "jane""#),
        "{why}"
    );
    assert!(
        why.contains(r#"verb "delete" is not in the rule's verbs ["get" "list" "watch"]"#),
        "{why}"
    );
    assert!(
        why.contains(
            r#"the RoleBinding grants in namespace "default", the request is in "kube-system""#
        ),
        "{why}"
    );
    assert!(
        why.contains("system:serviceaccount:default:default may not list pods"),
        "{why}"
    );
    let asker = w.block(6);
    assert!(asker.lines().any(|l| l.trim() == "pod/asker"), "{asker}");
    assert!(
        asker.contains("secrets is forbidden: User \"system:serviceaccount:default:lister\""),
        "{asker}"
    );
    assert!(asker.lines().any(|l| l.trim() == "default"), "{asker}");
    assert!(
        asker.contains("\"iss\":\"https://kubernetes.default.svc.cluster.local\""),
        "{asker}"
    );
    let legacy = w.block(7);
    assert!(legacy.contains("secret/lister-token created"), "{legacy}");
    assert!(
        legacy.contains(r#"{"iss":"kubernetes/serviceaccount""#),
        "{legacy}"
    );
    let roles = w.block(8);
    for r in [
        "admin",
        "edit",
        "view",
        "cluster-admin",
        "system:kube-scheduler",
    ] {
        assert!(
            roles.lines().any(|l| l.starts_with(&format!("{r} "))),
            "{r}: {roles}"
        );
    }
}
