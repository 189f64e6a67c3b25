//! The harness the integration tests share: an in-process master on 127.0.0.1:0, a
//! master as a child process (for crash tests), and the real kubectl pointed at either.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tinykube_apiserver::store::SledStoreOptions;
use tinykube_apiserver::{Master, MasterConfig};

pub mod docs;
pub mod lab;

/// Installs rustls' ring provider once per process, for kube-rs clients.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A master running inside the test process, with its own data dir.
pub struct TestMaster {
    pub master: Master,
    control_plane: Option<(
        tokio_util::sync::CancellationToken,
        Vec<tokio::task::JoinHandle<()>>,
    )>,
    pub dir: tempfile::TempDir,
    /// A HOME for kubectl, so its discovery cache stays per test.
    pub home: tempfile::TempDir,
}

pub struct TestMasterBuilder {
    retain_revisions: Option<u64>,
    bookmark_interval: Option<Duration>,
    control_plane: Option<tinykube_controllers::Config>,
    toleration_seconds: Option<i64>,
    data_dir: Option<tempfile::TempDir>,
    listen: Option<SocketAddr>,
    signing_duration: Option<Duration>,
    max_token_expiration: Option<Duration>,
}

impl TestMasterBuilder {
    pub fn retain_revisions(mut self, n: u64) -> Self {
        self.retain_revisions = Some(n);
        self
    }

    /// Also run the controllers (with this config) and the scheduler, as `tinykube master` does.
    pub fn control_plane(mut self, config: tinykube_controllers::Config) -> Self {
        self.control_plane = Some(config);
        self
    }

    /// Reuse a data dir (a restart) and a fixed address.
    pub fn reuse(mut self, dir: tempfile::TempDir, listen: SocketAddr) -> Self {
        self.data_dir = Some(dir);
        self.listen = Some(listen);
        self
    }

    /// The DefaultTolerationSeconds for not-ready/unreachable nodes.
    pub fn toleration_seconds(mut self, s: i64) -> Self {
        self.toleration_seconds = Some(s);
        self
    }

    /// The longest certificate the signer issues (`--cluster-signing-duration`).
    pub fn signing_duration(mut self, d: Duration) -> Self {
        self.signing_duration = Some(d);
        self
    }

    /// No service-account token lasts longer (`--service-account-max-token-expiration`).
    pub fn max_token_expiration(mut self, d: Duration) -> Self {
        self.max_token_expiration = Some(d);
        self
    }

    pub fn bookmark_interval(mut self, d: Duration) -> Self {
        self.bookmark_interval = Some(d);
        self
    }

    pub async fn start(self) -> TestMaster {
        init_crypto();
        let dir = self
            .data_dir
            .unwrap_or_else(|| tempfile::tempdir().expect("temp dir"));
        let home = tempfile::tempdir().expect("temp home");
        let mut cfg = MasterConfig::new(dir.path());
        cfg.listen = self
            .listen
            .unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        if let Some(n) = self.retain_revisions {
            cfg.store = SledStoreOptions {
                retain_revisions: n,
                ..Default::default()
            };
        }
        if let Some(d) = self.bookmark_interval {
            cfg.bookmark_interval = d;
        }
        if let Some(s) = self.toleration_seconds {
            cfg.default_toleration_seconds = s;
        }
        if let Some(d) = self.signing_duration {
            cfg.cluster_signing_duration = d;
        }
        cfg.service_account_max_token_expiration = self.max_token_expiration;
        let metrics = cfg.metrics.clone();
        let master = Master::start(cfg).await.expect("master starts");
        let control_plane = match self.control_plane {
            Some(config) => {
                // Each as its own user through the loopback path, as `tinykube master`
                // runs them.
                use tinykube_apiserver::authz::rbac::bootstrap::{CONTROLLER_MANAGER, SCHEDULER};
                let controllers =
                    kube::Client::new(master.loopback(CONTROLLER_MANAGER, &[]), "default");
                let scheduler = kube::Client::new(master.loopback(SCHEDULER, &[]), "default");
                let cancel = tokio_util::sync::CancellationToken::new();
                let caches =
                    tinykube_client::Informers::start_measured(&controllers, &metrics, &cancel);
                let tasks = vec![
                    tokio::spawn(tinykube_controllers::run(
                        controllers,
                        caches.clone(),
                        config,
                        cancel.clone(),
                    )),
                    tokio::spawn({
                        let (caches, cancel) = (caches.clone(), cancel.clone());
                        async move { tinykube_scheduler::run(scheduler, caches, &metrics, cancel).await }
                    }),
                    tokio::spawn(async move { caches.stopped().await }),
                ];
                Some((cancel, tasks))
            }
            None => None,
        };
        TestMaster {
            master,
            control_plane,
            dir,
            home,
        }
    }
}

impl TestMaster {
    pub fn builder() -> TestMasterBuilder {
        TestMasterBuilder {
            retain_revisions: None,
            bookmark_interval: None,
            control_plane: None,
            toleration_seconds: None,
            data_dir: None,
            listen: None,
            signing_duration: None,
            max_token_expiration: None,
        }
    }

    pub async fn start() -> Self {
        Self::builder().start().await
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.master.kubeconfig
    }

    /// A kube-rs client with the admin kubeconfig.
    pub async fn client(&self) -> kube::Client {
        client_for(self.kubeconfig()).await
    }

    /// A kube-rs client with a bearer token of our choosing and no client certificate
    /// (auth tests).
    pub async fn client_with_token(&self, token: &str) -> kube::Client {
        let mut config = without_certificate(kube_config(self.kubeconfig()).await);
        config.auth_info.token = Some(token.to_string().into());
        kube::Client::try_from(config).expect("client")
    }

    /// The join token as the master wrote it (`<data-dir>/node-token`).
    pub fn join_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node-token"))
            .expect("the master writes its node-token")
            .trim()
            .to_string()
    }

    /// Joins node `name` with the token alone, as a worker does, and returns a client
    /// with the credentials it got (its kubeconfig is under `dir`).
    pub async fn node_client(&self, name: &str, dir: &Path) -> kube::Client {
        let token = tinykube_api::pki::JoinToken::parse(&self.join_token()).expect("token");
        let (path, _) = tinykube_client::join::join(&self.master.url, &token, name, None, dir)
            .await
            .expect("the node joins");
        client_for(&path).await
    }

    pub fn kubectl(&self) -> Kubectl {
        Kubectl {
            kubeconfig: self.kubeconfig().to_path_buf(),
            home: self.home.path().to_path_buf(),
        }
    }

    /// Stops the master and hands back its data dir and address, for a restart.
    pub async fn stop_keeping_data(self) -> (tempfile::TempDir, SocketAddr) {
        let addr = self.master.addr;
        if let Some((cancel, tasks)) = self.control_plane {
            cancel.cancel();
            for t in tasks {
                let _ = t.await;
            }
        }
        self.master.shutdown().await;
        (self.dir, addr)
    }

    pub async fn shutdown(self) {
        if let Some((cancel, tasks)) = self.control_plane {
            cancel.cancel();
            for t in tasks {
                let _ = t.await;
            }
        }
        self.master.shutdown().await;
    }

    /// Hollow nodes registered against this master.
    pub async fn hollow_nodes(
        &self,
        names: &[&str],
        heartbeat: Duration,
    ) -> tinykube_node::hollow::HollowNodes {
        let config = tinykube_node::hollow::HollowConfig {
            heartbeat,
            ..Default::default()
        };
        let names = names.iter().map(|n| n.to_string()).collect();
        tinykube_node::hollow::HollowNodes::start(self.client().await, names, config)
            .await
            .expect("hollow nodes register")
    }
}

pub async fn kube_config(kubeconfig: &Path) -> kube::Config {
    init_crypto();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig readable");
    kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig valid")
}

/// `config` with its client certificate taken out (the admin's), so it sends no
/// credentials but what a test adds.
pub fn without_certificate(mut config: kube::Config) -> kube::Config {
    config.auth_info.client_certificate_data = None;
    config.auth_info.client_key_data = None;
    config.auth_info.client_certificate = None;
    config.auth_info.client_key = None;
    config
}

pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    init_crypto();
    tinykube_client::from_kubeconfig(kubeconfig)
        .await
        .expect("a client from the kubeconfig")
}

/// The real kubectl, isolated from the user's own configuration.
#[derive(Clone)]
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub home: PathBuf,
}

pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    /// A kubectl for `user` in a kubeconfig of its own under `dir` (this one's cluster
    /// and CA), made with kubectl's own `config` commands: `set-credentials USER
    /// CREDENTIALS...`, `set-context`, `use-context`.
    pub fn as_user(&self, dir: &Path, user: &str, credentials: &[&str]) -> Kubectl {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::copy(&self.kubeconfig, &kubeconfig).expect("the kubeconfig is copied");
        let k = Kubectl {
            kubeconfig,
            home: dir.to_path_buf(),
        };
        let mut set = vec!["config", "set-credentials", user];
        set.extend_from_slice(credentials);
        k.ok(&set);
        let as_user = format!("--user={user}");
        k.ok(&[
            "config",
            "set-context",
            user,
            "--cluster=tinykube",
            &as_user,
        ]);
        k.ok(&["config", "use-context", user]);
        k
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl; the test fails if kubectl cannot be started at all.
    pub fn run(&self, args: &[&str]) -> Run {
        let out: Output = self
            .command(args)
            .output()
            .expect("kubectl must be installed (it is on every machine of this project)");
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `kubectl exec POD -- /tinykube toolbox ARGS`: a toolbox program in a pod.
    pub fn toolbox(&self, pod: &str, args: &[&str]) -> Run {
        let mut a = vec!["exec", pod, "--", "/tinykube", "toolbox"];
        a.extend_from_slice(args);
        self.run(&a)
    }

    /// Runs kubectl and fails the test with its output unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert!(
            r.ok,
            "kubectl {} failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            r.stdout,
            r.stderr
        );
        r.stdout
    }

    /// Runs kubectl expecting it to fail (exit non-zero); returns its standard output
    /// (`auth can-i` prints "no" there).
    pub fn fails_out(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert!(!r.ok, "kubectl {args:?} succeeded: {}", r.stdout);
        r.stdout
    }

    /// Runs kubectl and fails the test unless it fails; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert!(
            !r.ok,
            "kubectl {} should have failed, printed: {}",
            args.join(" "),
            r.stdout
        );
        r.stderr
    }

    /// Runs kubectl with `input` on standard input.
    pub fn run_stdin(&self, args: &[&str], input: &str) -> Run {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs kubectl with `input` on standard input; it must succeed.
    pub fn ok_stdin(&self, args: &[&str], input: &str) -> String {
        let r = self.run_stdin(args, input);
        assert!(r.ok, "kubectl {} failed: {}", args.join(" "), r.stderr);
        r.stdout
    }
}

/// The tinykube binary of this build (`cargo build` puts it next to the test's deps dir).
pub fn tinykube_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TINYKUBE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no parent directory")?;
    let bin = dir.join("tinykube");
    if !bin.exists() {
        bail!(
            "{} does not exist: build it first (`cargo build --bin tinykube`, which scripts/test does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A master as a child process; killed (by pid) when dropped.
pub struct MasterProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl MasterProcess {
    /// Starts `tinykube master` on `addr` with `data_dir` and waits until it answers.
    pub fn start(data_dir: &Path, addr: SocketAddr) -> Result<Self> {
        Self::start_with(data_dir, addr, &[])
    }

    /// The same, with extra `tinykube master` flags.
    pub fn start_with(data_dir: &Path, addr: SocketAddr, extra: &[&str]) -> Result<Self> {
        let log = std::fs::File::create(data_dir.with_extension("log"))?;
        let child = Command::new(tinykube_bin()?)
            .args(["master", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &addr.to_string(), "--no-kubelet"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start tinykube master")?;
        let mut p = Self {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
        };
        p.wait_ready(Duration::from_secs(20))?;
        Ok(p)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                bail!("master exited early with {status}");
            }
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
                && self.data_dir.join("kubeconfig.yaml").exists()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("master did not listen on {} within {timeout:?}", self.addr)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig.yaml")
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The `p` quantile (0 to 1) of `v` by nearest rank; sorts `v`. For the benches.
/// The pods that answered, by name, in toolbox `fetch`/`udp` output (`pod=NAME ...`).
pub fn answered_by(out: &str) -> std::collections::BTreeSet<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("pod="))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// The median of `v` (the upper of the two middle ones for an even count).
/// A field of `/proc/<pid>/status` given in kB (`VmRSS:`, `VmHWM:`), in MB.
pub fn status_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}

/// A free port on loopback (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns Some or the timeout passes.
pub async fn eventually<T>(timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
