//! The harness the integration tests share: an in-process master on 127.0.0.1:0, a
//! master as a child process (for crash tests), and the real kubectl pointed at either.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tinykube_apiserver::store::SledStoreOptions;
use tinykube_apiserver::{Master, MasterConfig};

/// Installs rustls' ring provider once per process, for kube-rs clients.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A master running inside the test process, with its own data dir.
pub struct TestMaster {
    pub master: Master,
    pub dir: tempfile::TempDir,
    /// A HOME for kubectl, so its discovery cache stays per test.
    pub home: tempfile::TempDir,
}

pub struct TestMasterBuilder {
    retain_revisions: Option<u64>,
    bookmark_interval: Option<Duration>,
}

impl TestMasterBuilder {
    pub fn retain_revisions(mut self, n: u64) -> Self {
        self.retain_revisions = Some(n);
        self
    }

    pub fn bookmark_interval(mut self, d: Duration) -> Self {
        self.bookmark_interval = Some(d);
        self
    }

    pub async fn start(self) -> TestMaster {
        init_crypto();
        let dir = tempfile::tempdir().expect("temp dir");
        let home = tempfile::tempdir().expect("temp home");
        let mut cfg = MasterConfig::new(dir.path());
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        if let Some(n) = self.retain_revisions {
            cfg.store = SledStoreOptions {
                retain_revisions: n,
                ..Default::default()
            };
        }
        if let Some(d) = self.bookmark_interval {
            cfg.bookmark_interval = d;
        }
        let master = Master::start(cfg).await.expect("master starts");
        TestMaster { master, dir, home }
    }
}

impl TestMaster {
    pub fn builder() -> TestMasterBuilder {
        TestMasterBuilder {
            retain_revisions: None,
            bookmark_interval: None,
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

    /// A kube-rs client with a bearer token of our choosing (auth tests).
    pub async fn client_with_token(&self, token: &str) -> kube::Client {
        let mut config = kube_config(self.kubeconfig()).await;
        config.auth_info.token = Some(token.to_string().into());
        kube::Client::try_from(config).expect("client")
    }

    pub fn kubectl(&self) -> Kubectl {
        Kubectl {
            kubeconfig: self.kubeconfig().to_path_buf(),
            home: self.home.path().to_path_buf(),
        }
    }

    pub async fn shutdown(self) {
        self.master.shutdown().await;
    }
}

pub async fn kube_config(kubeconfig: &Path) -> kube::Config {
    init_crypto();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig readable");
    kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig valid")
}

pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    kube::Client::try_from(kube_config(kubeconfig).await).expect("client")
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
    pub fn ok_stdin(&self, args: &[&str], input: &str) -> String {
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
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
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
        let log = std::fs::File::create(data_dir.with_extension("log"))?;
        let child = Command::new(tinykube_bin()?)
            .args(["master", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &addr.to_string(), "--no-kubelet"])
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
