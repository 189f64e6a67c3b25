//! End-to-end tests of the service proxy (root, a local cluster): a ClusterIP spreads
//! connections over the service's ready pods, a pod reaches itself through its own
//! service (hairpin), a NodePort answers on every node's address, a service with no
//! endpoints refuses at once, scaling and deleting are followed, and rules damaged by
//! hand are repaired.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::{Api, ListParams};
use tinykube_tests::lab::TestLab;
use tinykube_tests::{Kubectl, answered_by, eventually, tinykube_bin};

/// `toolbox fetch` arguments: `count` requests to `url`, back to back.
fn fetch_args(url: &str, count: u32) -> Vec<String> {
    let count = count.to_string();
    [
        "toolbox",
        "fetch",
        url,
        "--count",
        &count,
        "--interval-ms",
        "0",
    ]
    .map(str::to_string)
    .to_vec()
}

/// `count` requests to `url` from pod `pod` (kubectl exec); the answers, one a line.
fn fetch_from_pod(kubectl: &Kubectl, pod: &str, url: &str, count: u32) -> String {
    let args = fetch_args(url, count);
    // fetch_args starts with `toolbox`, which `Kubectl::toolbox` adds itself.
    let args: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    kubectl.toolbox(pod, &args).stdout
}

/// `count` requests to `url` from the network namespace at `netns` (the host's if None).
fn fetch_from(netns: Option<&str>, url: &str, count: u32) -> String {
    let bin = tinykube_bin().unwrap();
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={ns}")).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let out = cmd
        .args(fetch_args(url, count))
        .output()
        .expect("toolbox runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `iptables-save -t table` in the network namespace at `netns`.
fn saved_rules(netns: &str, table: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["iptables-save", "-t", table])
        .output()
        .expect("iptables-save runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn web_pods(client: &kube::Client) -> BTreeSet<String> {
    Api::<Pod>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect()
}

/// Waits until the Endpoints of `web` list `n` ready addresses.
async fn endpoints_ready(client: &kube::Client, n: usize) {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let ok = eventually(Duration::from_secs(60), async || {
        let e = api.get("web").await.ok()?;
        let count: usize = e
            .subsets
            .iter()
            .flatten()
            .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
            .sum();
        (count == n).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "the endpoints of web never reached {n} addresses"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn services_send_connections_to_ready_pods() {
    let t = TestLab::start(2).await;
    let kubectl = t.kubectl();
    let client = t.client().await;
    let name = t.name.clone();
    let w1 = format!("{name}-worker-1");
    let ns1 = format!("/var/run/netns/{}", t.lab().node(&w1).unwrap().netns);

    kubectl.ok(&[
        "create",
        "deployment",
        "web",
        "--image=tinykube.local/toolbox",
        "--replicas=3",
    ]);
    kubectl.ok(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
        "--type=NodePort",
    ]);
    let overrides = format!("{{\"spec\":{{\"nodeName\":\"{w1}\"}}}}");
    kubectl.ok(&[
        "run",
        "client",
        "--image=tinykube.local/toolbox",
        "--overrides",
        &overrides,
    ]);
    kubectl.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=60s",
    ]);
    kubectl.ok(&[
        "wait",
        "--for=condition=Available",
        "deployment/web",
        "--timeout=60s",
    ]);
    endpoints_ready(&client, 3).await;
    let svc: Service = Api::namespaced(client.clone(), "default")
        .get("web")
        .await
        .unwrap();
    let spec = svc.spec.unwrap();
    let cluster_ip = spec.cluster_ip.unwrap();
    let node_port = spec.ports.unwrap()[0].node_port.unwrap();
    let url = format!("http://{cluster_ip}/");
    let pods = web_pods(&client).await;
    assert_eq!(pods.len(), 3);

    // The ClusterIP from a pod: every request answered, by all three pods in turn.
    let mut out = String::new();
    let spread = eventually(Duration::from_secs(30), async || {
        out = fetch_from_pod(&kubectl, "client", &url, 30);
        (answered_by(&out) == pods && !out.contains("error:")).then_some(())
    })
    .await;
    assert!(spread.is_some(), "30 requests to {url} from a pod: {out}");

    // kube-proxy's layout and names: the kubernetes service's chain has the name real
    // kube-proxy gives it.
    let rules = saved_rules(&ns1, "nat");
    for needle in [
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-j KUBE-SVC-NPX46M4PTMTKRN6Y",
        "default/web:",
        "-m statistic --mode random --probability 0.3333",
        "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
    ] {
        assert!(
            rules.contains(needle),
            "no {needle:?} in worker-1's nat rules:\n{rules}"
        );
    }

    // A pod reaching itself through its own service (hairpin on the bridge port).
    let me = pods.iter().next().unwrap().clone();
    let out = fetch_from_pod(&kubectl, &me, &url, 30);
    assert!(
        answered_by(&out).contains(&me) && !out.contains("error:"),
        "{me} through its own service: {out}"
    );

    // The NodePort on every node's address, from the host.
    for node in &t.lab().state.nodes {
        let url = format!("http://{}:{node_port}/", node.ip);
        let out = fetch_from(None, &url, 3);
        assert_eq!(
            out.lines().filter(|l| l.starts_with("pod=web-")).count(),
            3,
            "{url} from the host: {out}"
        );
    }
    // And from a node to its own address.
    let own = format!("http://{}:{node_port}/", t.lab().node(&w1).unwrap().ip);
    let out = fetch_from(Some(&ns1), &own, 2);
    assert!(out.contains("pod=web-"), "{own} from worker-1: {out}");

    // Scaled to one pod: every answer comes from it.
    kubectl.ok(&["scale", "deployment", "web", "--replicas=1"]);
    endpoints_ready(&client, 1).await;
    let mut out = String::new();
    let one = eventually(Duration::from_secs(20), async || {
        out = fetch_from_pod(&kubectl, "client", &url, 10);
        (answered_by(&out).len() == 1 && !out.contains("error:")).then_some(())
    })
    .await;
    assert!(one.is_some(), "after scaling to one: {out}");

    // No endpoints: connections are refused at once, not left to time out.
    kubectl.ok(&["scale", "deployment", "web", "--replicas=0"]);
    endpoints_ready(&client, 0).await;
    let mut out = String::new();
    let refused = eventually(Duration::from_secs(20), async || {
        let t0 = Instant::now();
        out = fetch_from_pod(&kubectl, "client", &url, 1);
        (out.contains("refused") && t0.elapsed() < Duration::from_secs(3)).then_some(())
    })
    .await;
    assert!(refused.is_some(), "a service with no endpoints: {out}");
    let out = fetch_from(
        None,
        &format!("http://{}:{node_port}/", t.lab().node(&w1).unwrap().ip),
        1,
    );
    assert!(out.contains("refused"), "its node port: {out}");
    // Nothing listens on a node port, so that answer alone would not tell; the rule
    // that gives it must be there too.
    let filter = saved_rules(&ns1, "filter");
    assert!(
        filter
            .lines()
            .any(|l| l.starts_with("-A KUBE-EXTERNAL-SERVICES")
                && l.contains(&format!("--dport {node_port} -j REJECT"))),
        "no REJECT for node port {node_port} in worker-1's filter rules:\n{filter}"
    );

    // Deleted: its rules go, the other services' stay.
    kubectl.ok(&["delete", "service", "web"]);
    let mut rules = String::new();
    let gone = eventually(Duration::from_secs(20), async || {
        rules = saved_rules(&ns1, "nat");
        (!rules.contains("default/web:") && rules.contains("KUBE-SVC-NPX46M4PTMTKRN6Y"))
            .then_some(())
    })
    .await;
    assert!(gone.is_some(), "web's rules after its deletion:\n{rules}");

    // Damage from outside (a jump deleted, a chain flushed) is repaired by the
    // periodic resync, with no Service changing.
    let ipt = |args: &[&str]| {
        let ok = Command::new("nsenter")
            .arg(format!("--net={ns1}"))
            .arg("iptables")
            .args(args)
            .status()
            .expect("iptables runs")
            .success();
        assert!(ok, "iptables {args:?}");
    };
    ipt(&[
        "-t",
        "nat",
        "-D",
        "PREROUTING",
        "-m",
        "comment",
        "--comment",
        "kubernetes service portals",
        "-j",
        "KUBE-SERVICES",
    ]);
    ipt(&["-t", "nat", "-F", "KUBE-SVC-NPX46M4PTMTKRN6Y"]);
    let repaired = eventually(Duration::from_secs(45), async || {
        let rules = saved_rules(&ns1, "nat");
        (rules.contains(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        ) && rules.contains("-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment"))
        .then_some(())
    })
    .await;
    assert!(
        repaired.is_some(),
        "the resync did not repair:\n{}",
        saved_rules(&ns1, "nat")
    );
    t.down().await;
}
