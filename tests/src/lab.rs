//! Local clusters for end-to-end tests, built by the same code as `tinykube up`: each
//! test gets its own cluster name and lab subnet, so tests run side by side, and the
//! cluster is removed when the test ends, also when it fails.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tinykube_kubelet::runtime::Runtime;
use tinykube_lab::{Lab, LabConfig};

use crate::Kubectl;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fails the test unless it runs as root (CI does).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this end-to-end test needs root; CI runs as root"
    );
}

pub struct TestLab {
    lab: Option<Lab>,
    pub name: String,
    pub dir: PathBuf,
}

impl TestLab {
    /// A cluster with a master and `workers` workers; container restarts back off from
    /// 1 s instead of 10 s so crash loops are quick to watch.
    pub async fn start(workers: usize) -> Self {
        Self::start_with(workers, &[]).await
    }

    /// As `start`, with extra arguments for every node agent (`{master}` in them becomes
    /// the master's address).
    pub async fn start_with(workers: usize, node_args: &[&str]) -> Self {
        Self::start_full(workers, node_args, false, "udp").await
    }

    /// As `start`, with a containerd of the cluster's own (which a test may restart).
    pub async fn start_own_containerd(workers: usize) -> Self {
        Self::start_full(workers, &[], true, "udp").await
    }

    /// As `start`, with overlay backend `backend` (udp, vxlan, host-gw).
    pub async fn start_with_backend(workers: usize, backend: &str) -> Self {
        Self::start_full(workers, &[], false, backend).await
    }

    /// As `start`, with LoadBalancer addresses from a pool of the lab's own subnet
    /// (.240 to .250).
    pub async fn start_with_lb_pool(workers: usize) -> Self {
        Self::start_full_with(
            workers,
            &[],
            false,
            "udp",
            &["--lb-pool", "{net}.240-{net}.250"],
            |_| {},
        )
        .await
    }

    /// As `start`, with extra arguments for the master (`{net}` in them becomes the
    /// lab's subnet without its last octet).
    pub async fn start_with_master_args(workers: usize, master_args: &[&str]) -> Self {
        Self::start_full_with(workers, &[], false, "udp", master_args, |_| {}).await
    }

    async fn start_full(
        workers: usize,
        node_args: &[&str],
        own_containerd: bool,
        backend: &str,
    ) -> Self {
        Self::start_full_with(workers, node_args, own_containerd, backend, &[], |_| {}).await
    }

    /// As `start`, on the course's VM network: nodes at 192.168.56.10, .11, ..., each
    /// with a second interface holding Vagrant's NAT address 10.0.2.15 and the default
    /// route through it.
    pub async fn start_like_vagrant(workers: usize) -> Self {
        Self::start_full_with(workers, &[], false, "udp", &[], |cfg| {
            cfg.subnet = tinykube_lab::DEFAULT_SUBNET.parse().expect("subnet");
            cfg.nat_like_vagrant = true;
        })
        .await
    }

    async fn start_full_with(
        workers: usize,
        node_args: &[&str],
        own_containerd: bool,
        backend: &str,
        master_args: &[&str],
        configure: impl FnOnce(&mut LabConfig),
    ) -> Self {
        require_root();
        crate::init_crypto();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let name = format!("t{}{n:02}", pid % 100_000);
        let dir = std::env::temp_dir().join(format!("tinykube-e2e-{name}"));
        let mut cfg = LabConfig::new(&name);
        cfg.workers = workers;
        cfg.subnet = format!("172.30.{}.0/24", (pid * 7 + n) % 250 + 1)
            .parse()
            .expect("subnet");
        cfg.data_dir = dir.clone();
        cfg.binary = crate::tinykube_bin().expect("tinykube binary");
        cfg.node_args = vec!["--restart-backoff-seconds".into(), "1".into()];
        let master = cfg.subnet.network().octets();
        let master = format!("{}.{}.{}.10", master[0], master[1], master[2]);
        cfg.node_args
            .extend(node_args.iter().map(|a| a.replace("{master}", &master)));
        cfg.master_args = vec!["--flannel-backend".into(), backend.into()];
        let net = cfg.subnet.network().octets();
        let net = format!("{}.{}.{}", net[0], net[1], net[2]);
        cfg.master_args
            .extend(master_args.iter().map(|a| a.replace("{net}", &net)));
        cfg.ready_timeout = Duration::from_secs(90);
        cfg.own_containerd = own_containerd;
        configure(&mut cfg);
        let mut quiet = |_: &str| {};
        let lab = Lab::up(&cfg, &mut quiet).await.unwrap_or_else(|e| {
            panic!(
                "cluster {name} did not come up: {}",
                tinykube_kubelet::error_chain(&e)
            )
        });
        Self {
            lab: Some(lab),
            name,
            dir,
        }
    }

    /// Starts `tinykube worker ARGS` (with a data dir of its own) in the network
    /// namespace of node `node`, as another machine would, and expects it to be refused:
    /// bounded to 30 s, since an agent that was let in would run until stopped. Returns
    /// its stderr and its data dir.
    pub fn worker_refused(&self, node: usize, args: &[&str]) -> (String, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new("timeout")
            .args([
                "30",
                "ip",
                "netns",
                "exec",
                &self.lab().state.nodes[node].netns,
            ])
            .arg(crate::tinykube_bin().expect("tinykube binary"))
            .arg("worker")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("timeout runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "the worker was let in: {stderr}");
        (stderr, dir)
    }

    /// The host's address on the lab bridge (what nodes see a host client as).
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        let o = self.lab().state.nodes[0].ip.octets();
        std::net::Ipv4Addr::new(o[0], o[1], o[2], 1)
    }

    pub fn lab(&self) -> &Lab {
        self.lab.as_ref().expect("cluster is up")
    }

    pub fn lab_mut(&mut self) -> &mut Lab {
        self.lab.as_mut().expect("cluster is up")
    }

    pub fn kubectl(&self) -> Kubectl {
        let home = self.dir.join("home");
        let _ = std::fs::create_dir_all(&home);
        Kubectl {
            kubeconfig: self.lab().kubeconfig().to_path_buf(),
            home,
        }
    }

    pub async fn client(&self) -> kube::Client {
        self.lab().client().await.expect("client")
    }

    /// The containerd namespace of node `node`.
    pub async fn runtime(&self, node: &str) -> Runtime {
        let socket = &self.lab().state.containerd_socket;
        Runtime::connect(socket, &format!("tinykube-{node}"), Duration::from_secs(5))
            .await
            .expect("containerd")
    }

    /// Removes the cluster and checks that `down` reports it removed something.
    pub async fn down(mut self) {
        let lab = self.lab.take().expect("cluster is up");
        let removed = Lab::down(&self.name, &lab.dir, false)
            .await
            .unwrap_or_else(|e| panic!("down failed: {}", tinykube_kubelet::error_chain(&e)));
        assert!(removed, "down found the cluster");
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if self.lab.take().is_none() {
            return;
        }
        let (name, dir) = (self.name.clone(), self.dir.clone());
        // Drop may run inside the test's runtime: tear down from a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            if let Err(e) = rt.block_on(Lab::down(&name, &dir, false)) {
                eprintln!(
                    "cleanup of cluster {name} failed: {}",
                    tinykube_kubelet::error_chain(&e)
                );
            }
        })
        .join();
    }
}
