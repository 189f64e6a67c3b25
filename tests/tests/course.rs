//! The walkthrough is the test: every `sh` block of docs/course.md, in order, on
//! `tinykube up` (the lab on the course's addresses and node names), checked against what
//! the page says a student sees; once with the real kubectl and once with `tinykube ctl`
//! in its place (what a student on a Debian VM has). Needs root (CI runs as root).
//! The two runs use the lab's default name and addresses, so they are one test, one
//! after the other.

use tinykube_tests::docs::walk;

/// What the page says a student sees, block by block.
fn check(block: &dyn Fn(usize) -> String, all: &str) {
    let rows = |text: &str, word: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter(|l| l.contains(word))
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect()
    };
    // `kubectl get nodes` rows (not `up`'s progress lines).
    let node_rows = |text: &str| -> Vec<Vec<String>> {
        rows(text, "Ready")
            .into_iter()
            .filter(|r| r.len() >= 5 && (r[1] == "Ready" || r[1] == "NotReady"))
            .collect()
    };
    // 24: one node that runs pods itself, then three Ready on the course's addresses.
    let single = block(0);
    let nodes = node_rows(&single);
    assert_eq!(nodes.len(), 1, "{single}");
    assert_eq!(nodes[0][0], "master", "{single}");
    let three = block(1);
    let nodes = node_rows(&three);
    assert_eq!(nodes.len(), 3, "{three}");
    for (name, ip) in [
        ("master", "192.168.56.10"),
        ("worker-1", "192.168.56.11"),
        ("worker-2", "192.168.56.12"),
    ] {
        let n = nodes.iter().find(|r| r[0] == name).expect(name);
        assert_eq!(n[1], "Ready", "{three}");
        assert!(n.iter().any(|c| c == ip), "{name} at {ip}: {three}");
    }
    let cidrs = block(2);
    assert_eq!(rows(&cidrs, "10.244.").len(), 3, "{cidrs}");

    // 25: the server on worker-1, the client on worker-2; the client's request crosses.
    let pods = block(3);
    let on = |prefix: &str| -> Vec<String> {
        rows(&pods, prefix)
            .into_iter()
            .filter(|r| r[0].starts_with(prefix))
            .map(|r| r[6].clone())
            .collect()
    };
    assert_eq!(on("server-"), ["worker-1"], "{pods}");
    assert_eq!(on("client-"), ["worker-2"], "{pods}");
    let client_ip = rows(&pods, "client-")[0][5].clone();
    let fetched = block(4);
    assert!(
        fetched.starts_with("pod=server-") && fetched.contains("node=worker-1"),
        "{fetched}"
    );
    assert!(
        fetched.contains(&format!("client={client_ip}")),
        "pod to pod without NAT: {fetched}"
    );
    assert!(fetched.ends_with('\n'));
    assert!(block(5).contains("dev flannel0"), "{}", block(5));

    // 26: NodePort 30000 on each node, then a random one, all answered by the server pod.
    let np = block(6);
    assert!(np.contains("8080:30000/TCP"), "{np}");
    let answers: Vec<&str> = np.lines().filter(|l| l.starts_with("pod=")).collect();
    assert_eq!(answers.len(), 2, "{np}");
    assert!(
        answers
            .iter()
            .all(|a| a.starts_with("pod=server-") && a.contains("node=worker-1")),
        "{np}"
    );
    let random = block(7);
    let port: u16 = random
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .expect("the port is printed");
    assert!((30000..=32767).contains(&port) && port != 30000, "{random}");
    assert!(random.contains("pod=server-"), "{random}");
    let chains = block(8);
    assert!(
        chains.contains("--dport 30000") && chains.contains("KUBE-EXT-"),
        "{chains}"
    );

    // 27: one endpoint, then six pods spread 3/3, six endpoints, every pod answering.
    let before = block(9);
    assert_eq!(rows(&before, ":8080").len(), 1, "{before}");
    assert!(!before.contains(','), "one endpoint: {before}");
    let scaled = block(10);
    let servers: Vec<Vec<String>> = rows(&scaled, "server-")
        .into_iter()
        .filter(|r| r[0].starts_with("server-"))
        .collect();
    assert_eq!(servers.len(), 6, "{scaled}");
    for node in ["worker-1", "worker-2"] {
        assert_eq!(
            servers.iter().filter(|r| r[6] == node).count(),
            3,
            "3 on {node}: {scaled}"
        );
    }
    let ips = scaled
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter(|w| w.starts_with("10.244."))
        .count();
    assert_eq!(ips, 6, "six endpoints: {scaled}");
    let counts = block(11);
    let per_pod: Vec<(u32, String)> = counts
        .lines()
        .filter_map(|l| {
            let (n, pod) = l.trim().split_once(' ')?;
            Some((n.parse().ok()?, pod.to_string()))
        })
        .collect();
    assert_eq!(per_pod.len(), 6, "every pod answered: {counts}");
    assert_eq!(per_pod.iter().map(|(n, _)| n).sum::<u32>(), 50, "{counts}");
    for (_, pod) in &per_pod {
        let name = pod.trim_start_matches("pod=");
        assert!(servers.iter().any(|r| r[0] == name), "{pod}: {counts}");
    }
    let svc = block(12);
    assert_eq!(
        svc.lines().filter(|l| l.contains("--probability")).count(),
        3,
        "{svc}"
    );
    assert!(all.contains("cluster \"lab\" removed"), "cleaned up: {all}");
}

#[test]
fn the_course_runs_as_written_with_kubectl_and_with_ctl() {
    for ctl in [false, true] {
        let w = walk("docs/course.md", ctl);
        check(&|i| w.block(i), &w.stdout);
        // The student's waiting time for the four exercises.
        println!(
            "walkthrough ({}): {:.1} s",
            if ctl { "tinykube ctl" } else { "kubectl" },
            w.seconds
        );
    }
}
