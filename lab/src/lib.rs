//! The local lab (`tinykube up` / `tinykube down`): a bridge in the root network
//! namespace, one namespace per node plugged into it with an address of the lab
//! subnet, containerd (started if none runs), the master and the workers as processes
//! inside their namespaces; and the removal of every trace of it. The end-to-end tests
//! build their clusters with this same code.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};
use tinykube_kubelet::runtime::Runtime;
use tinykube_net::Ipv4Cidr;
use tinykube_net::link::{self, LinkError};
use tinykube_net::netns::NetNs;

pub const DEFAULT_NAME: &str = "lab";
pub const DEFAULT_SUBNET: &str = "192.168.56.0/24";
const STATE_FILE: &str = "lab.json";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("invalid cluster name {0:?}: use 1 to 8 lowercase letters and digits")]
    Name(String),
    #[error("the lab subnet must be a /24, not {0}")]
    Subnet(Ipv4Cidr),
    #[error("cluster {name:?} already exists ({dir}); `tinykube down{flag}` removes it")]
    Exists {
        name: String,
        dir: PathBuf,
        flag: String,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Net(#[from] LinkError),
    #[error(transparent)]
    Netns(#[from] tinykube_net::netns::NetnsError),
    #[error(transparent)]
    Runtime(#[from] tinykube_kubelet::runtime::RuntimeError),
    #[error("{0}")]
    Failed(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    pub name: String,
    pub workers: usize,
    pub subnet: Ipv4Cidr,
    pub data_dir: PathBuf,
    /// The tinykube binary the nodes run.
    pub binary: PathBuf,
    /// Extra arguments for the master (after the node arguments).
    pub master_args: Vec<String>,
    /// Extra arguments for every node agent (master included).
    pub node_args: Vec<String>,
    /// containerd to use; None: the system's if it answers, else one started for the lab.
    pub containerd_socket: Option<PathBuf>,
    pub ready_timeout: Duration,
    /// Also write ~/.kube/config when there is none (as kind does).
    pub default_kubeconfig: bool,
    /// Start a containerd of the lab's own even if the system's answers.
    pub own_containerd: bool,
}

impl LabConfig {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            workers: 2,
            subnet: DEFAULT_SUBNET.parse().expect("valid default subnet"),
            data_dir: default_dir(name),
            binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("tinykube")),
            master_args: Vec::new(),
            node_args: Vec::new(),
            containerd_socket: None,
            ready_timeout: Duration::from_secs(120),
            default_kubeconfig: false,
            own_containerd: false,
        }
    }
}

/// Where a cluster keeps its data unless told otherwise.
pub fn default_dir(name: &str) -> PathBuf {
    Path::new(tinykube_api::constants::DEFAULT_DATA_DIR)
        .join("clusters")
        .join(name)
}

fn check_name(name: &str) -> Result<(), LabError> {
    if name.is_empty()
        || name.len() > 8
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(LabError::Name(name.to_string()));
    }
    Ok(())
}

/// One node of a lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNode {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub veth: String,
    pub pid: Option<u32>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// How the node's process was started (to start it again).
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// What `up` made, kept in `<data-dir>/lab.json` for `down`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub subnet: String,
    pub bridge: String,
    pub nodes: Vec<LabNode>,
    pub containerd_socket: PathBuf,
    /// containerd started for this lab (stopped by `down`).
    pub containerd_pid: Option<u32>,
    pub kubeconfig: PathBuf,
    pub wrote_default_kubeconfig: Option<PathBuf>,
}

/// A running lab.
pub struct Lab {
    pub state: LabState,
    pub dir: PathBuf,
    binary: PathBuf,
}

fn bridge_name(name: &str) -> String {
    format!("tkbr-{name}")
}

/// What a lab's node names start with: nothing for the default lab, `<name>-` else.
fn node_prefix(name: &str) -> String {
    if name == DEFAULT_NAME {
        String::new()
    } else {
        format!("{name}-")
    }
}

fn node_names(name: &str, workers: usize) -> Vec<String> {
    let prefix = node_prefix(name);
    std::iter::once(format!("{prefix}master"))
        .chain((1..=workers).map(|i| format!("{prefix}worker-{i}")))
        .collect()
}

/// Node `i` (0 = the master) of lab `lab`: its namespace, address .10+i, veth, data dir
/// and log.
fn lab_node(lab: &str, dir: &Path, subnet: Ipv4Cidr, i: usize, name: &str) -> LabNode {
    let short = name.strip_prefix(&format!("{lab}-")).unwrap_or(name);
    LabNode {
        name: name.to_string(),
        netns: format!("{}{short}", netns_prefix(lab)),
        ip: Ipv4Addr::from(u32::from(subnet.network()) + 10 + i as u32),
        veth: format!("tkv{i}-{lab}"),
        pid: None,
        log: dir.join(format!("{short}.log")),
        data_dir: dir.join(short),
        args: Vec::new(),
        env: Vec::new(),
    }
}

fn netns_prefix(name: &str) -> String {
    format!("tk-{name}-")
}

/// Starts `program` detached (own session) inside network namespace `ns`, entering it
/// with setns only, so the process keeps the host's mount namespace (containerd must
/// see the pod namespaces it pins).
fn spawn_in(
    ns: Option<&NetNs>,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<u32, LabError> {
    let out = std::fs::File::create(log).map_err(io(format!("cannot create {}", log.display())))?;
    let err = out.try_clone().map_err(io("cannot duplicate a log file"))?;
    let nsfile = match ns {
        Some(ns) => Some(
            std::fs::File::open(ns.path())
                .map_err(io(format!("cannot open {}", ns.path().display())))?,
        ),
        None => None,
    };
    let fd = nsfile.as_ref().map(|f| f.as_raw_fd());
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: between fork and exec only async-signal-safe calls (setns, setsid) run.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(io(format!("cannot start {}", program.display())))?;
    Ok(child.id())
}

/// Starts a containerd of the lab's own, detached, in the host's namespaces.
fn spawn_containerd(config: &Path, log: &Path) -> Result<u32, LabError> {
    spawn_in(
        None,
        Path::new("containerd"),
        &["--config".into(), config.display().to_string()],
        &[],
        log,
    )
}

/// True while `pid` runs (a zombie counts as gone; our own children are reaped).
fn alive(pid: u32) -> bool {
    // SAFETY: waitpid with WNOHANG on a pid; fails harmlessly if it is not our child.
    unsafe {
        libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Stops process `pid` if its command line still contains `marker` (so a reused pid
/// is never signalled): SIGTERM, up to `grace`, then SIGKILL.
async fn stop_process(pid: u32, marker: &str, grace: Duration) {
    if !alive(pid) || !cmdline(pid).contains(marker) {
        return;
    }
    // SAFETY: kill(2) on a pid we started, checked above by its command line.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        while alive(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn containerd_answers(socket: &Path) -> bool {
    socket.exists()
        && Runtime::connect(socket, "default", Duration::from_millis(500))
            .await
            .is_ok()
}

fn write_state(dir: &Path, state: &LabState) -> Result<(), LabError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join("lab.json.tmp");
    let mut f =
        std::fs::File::create(&tmp).map_err(io(format!("cannot write {}", tmp.display())))?;
    f.write_all(&serde_json::to_vec_pretty(state).expect("json"))
        .map_err(io("cannot write the lab state"))?;
    f.sync_all().map_err(io("cannot write the lab state"))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("cannot write {}", path.display())))
}

fn read_state(dir: &Path) -> Option<LabState> {
    serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE)).ok()?).ok()
}

impl Lab {
    /// Builds and starts a lab, reporting progress through `progress`; on failure
    /// everything made so far is removed.
    pub async fn up(
        cfg: &LabConfig,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Lab, LabError> {
        check_name(&cfg.name)?;
        if cfg.subnet.prefix() != 24 {
            return Err(LabError::Subnet(cfg.subnet));
        }
        let flag = if cfg.name == DEFAULT_NAME {
            String::new()
        } else {
            format!(" --name {}", cfg.name)
        };
        if let Some(st) = read_state(&cfg.data_dir)
            && st.nodes.iter().any(|n| n.pid.is_some_and(alive))
        {
            return Err(LabError::Exists {
                name: cfg.name.clone(),
                dir: cfg.data_dir.clone(),
                flag,
            });
        }
        if link_exists_root(&bridge_name(&cfg.name)).await?
            || leftover_netns(&cfg.name).next().is_some()
        {
            return Err(LabError::Exists {
                name: cfg.name.clone(),
                dir: cfg.data_dir.clone(),
                flag,
            });
        }
        // A stopped cluster's leftovers (a crash, a reboot) are cleared first.
        if cfg.data_dir.join(STATE_FILE).exists() {
            Lab::down(&cfg.name, &cfg.data_dir, false).await?;
        }
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(io(format!("cannot create {}", cfg.data_dir.display())))?;
        let started = Instant::now();
        match Self::build(cfg, progress).await {
            Ok(lab) => {
                progress(&format!(
                    "cluster {:?} is up in {:.1} s",
                    cfg.name,
                    started.elapsed().as_secs_f64()
                ));
                Ok(lab)
            }
            Err(e) => {
                let _ = Lab::down(&cfg.name, &cfg.data_dir, true).await;
                Err(e)
            }
        }
    }

    async fn build(
        cfg: &LabConfig,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Lab, LabError> {
        let base = u32::from(cfg.subnet.network());
        let gateway = Ipv4Addr::from(base + 1);
        let bridge = bridge_name(&cfg.name);
        let names = node_names(&cfg.name, cfg.workers);
        let mut state = LabState {
            name: cfg.name.clone(),
            subnet: cfg.subnet.to_string(),
            bridge: bridge.clone(),
            nodes: names
                .iter()
                .enumerate()
                .map(|(i, n)| lab_node(&cfg.name, &cfg.data_dir, cfg.subnet, i, n))
                .collect(),
            containerd_socket: PathBuf::new(),
            containerd_pid: None,
            kubeconfig: cfg.data_dir.join("kubeconfig.yaml"),
            wrote_default_kubeconfig: None,
        };
        write_state(&cfg.data_dir, &state)?;

        // The lab network: a bridge with the host's address, a namespace per node.
        let h = link::connect()?;
        let bridge_index = link::ensure_bridge(&h, &bridge, gateway, 24).await?;
        progress(&format!("network: bridge {bridge} {gateway}/24"));
        for n in &state.nodes {
            let ns = NetNs::create(&n.netns)?;
            link::plug(&h, bridge_index, &ns, &n.veth, n.ip, 24, gateway, None).await?;
        }

        // containerd: the given one, the system's, or one of our own.
        let socket = match &cfg.containerd_socket {
            Some(s) => s.clone(),
            None if !cfg.own_containerd
                && containerd_answers(Path::new(
                    tinykube_kubelet::runtime::daemon::CONTAINERD_SOCKET,
                ))
                .await =>
            {
                PathBuf::from(tinykube_kubelet::runtime::daemon::CONTAINERD_SOCKET)
            }
            None => {
                let dir = cfg.data_dir.join("containerd");
                let (config, socket) =
                    tinykube_kubelet::runtime::daemon::containerd_config(&dir).map_err(io(
                        format!("cannot write a containerd config in {}", dir.display()),
                    ))?;
                let pid = spawn_containerd(&config, &dir.join("containerd.log"))?;
                state.containerd_pid = Some(pid);
                write_state(&cfg.data_dir, &state)?;
                Runtime::connect(&socket, "default", Duration::from_secs(20)).await?;
                progress(&format!(
                    "containerd: started (pid {pid}, {})",
                    socket.display()
                ));
                socket
            }
        };
        state.containerd_socket = socket.clone();
        let version = Runtime::connect(&socket, "default", Duration::from_secs(5))
            .await?
            .version()
            .await?;
        progress(&format!("containerd {version} on {}", socket.display()));

        // The master first; workers join once its API answers.
        let master = state.nodes[0].clone();
        let master_url = format!("https://{}:6443", master.ip);
        let node_flags = |n: &LabNode| {
            let mut v = vec![
                "--node-name".to_string(),
                n.name.clone(),
                "--node-ip".into(),
                n.ip.to_string(),
                "--containerd-socket".into(),
                socket.display().to_string(),
            ];
            v.extend(cfg.node_args.iter().cloned());
            v
        };
        let mut args = vec![
            "master".to_string(),
            "--data-dir".into(),
            master.data_dir.display().to_string(),
            "--listen".into(),
            "0.0.0.0:6443".into(),
            "--advertise-address".into(),
            master.ip.to_string(),
        ];
        args.extend(node_flags(&master));
        args.extend(cfg.master_args.iter().cloned());
        let ns = NetNs::open(&master.netns)?;
        state.nodes[0].pid = Some(spawn_in(Some(&ns), &cfg.binary, &args, &[], &master.log)?);
        state.nodes[0].args = args;
        write_state(&cfg.data_dir, &state)?;
        progress(&format!(
            "master: {} at {master_url} (log {})",
            master.name,
            master.log.display()
        ));

        let kubeconfig = master.data_dir.join("kubeconfig.yaml");
        let token_file = master.data_dir.join("node-token");
        let ca = master.data_dir.join("tls").join("ca.crt");
        let deadline = Instant::now() + cfg.ready_timeout;
        let client = loop {
            if kubeconfig.exists()
                && token_file.exists()
                && let Ok(c) = client_for(&kubeconfig).await
                && c.apiserver_version().await.is_ok()
            {
                break c;
            }
            if !state.nodes[0].pid.is_some_and(alive) {
                return Err(LabError::Failed(format!(
                    "the master exited; see {}",
                    master.log.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(LabError::Failed(format!(
                    "the master's API did not answer in time; see {}",
                    master.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let token =
            std::fs::read_to_string(&token_file).map_err(io("cannot read the join token"))?;
        for i in 1..state.nodes.len() {
            let n = state.nodes[i].clone();
            let mut args = vec![
                "worker".to_string(),
                "--server".into(),
                master_url.clone(),
                "--ca-file".into(),
                ca.display().to_string(),
                "--data-dir".into(),
                n.data_dir.display().to_string(),
            ];
            args.extend(node_flags(&n));
            let ns = NetNs::open(&n.netns)?;
            std::fs::create_dir_all(&n.data_dir)
                .map_err(io(format!("cannot create {}", n.data_dir.display())))?;
            state.nodes[i].pid = Some(spawn_in(
                Some(&ns),
                &cfg.binary,
                &args,
                &[("TINYKUBE_TOKEN", token.trim())],
                &n.log,
            )?);
            state.nodes[i].args = args;
            state.nodes[i].env = vec![("TINYKUBE_TOKEN".into(), token.trim().to_string())];
            write_state(&cfg.data_dir, &state)?;
            progress(&format!(
                "worker: {} at {} (log {})",
                n.name,
                n.ip,
                n.log.display()
            ));
        }

        std::fs::copy(&kubeconfig, &state.kubeconfig).map_err(io("cannot copy the kubeconfig"))?;
        if cfg.default_kubeconfig
            && let Some(home) = std::env::var_os("HOME")
        {
            let path = Path::new(&home).join(".kube").join("config");
            if !path.exists() {
                let _ = std::fs::create_dir_all(path.parent().expect("has a parent"));
                if std::fs::copy(&kubeconfig, &path).is_ok() {
                    state.wrote_default_kubeconfig = Some(path);
                }
            }
        }
        write_state(&cfg.data_dir, &state)?;

        // Every node Ready.
        let nodes: Api<Node> = Api::all(client);
        let want = state.nodes.len();
        let mut last = usize::MAX;
        loop {
            let ready = nodes
                .list(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|n| {
                            state
                                .nodes
                                .iter()
                                .any(|x| Some(&x.name) == n.metadata.name.as_ref())
                        })
                        .filter(|n| {
                            n.status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .is_some_and(|c| {
                                    c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                                })
                        })
                        .count()
                })
                .unwrap_or(0);
            if ready != last {
                progress(&format!("nodes Ready: {ready}/{want}"));
                last = ready;
            }
            if ready == want {
                break;
            }
            for n in &state.nodes {
                if !n.pid.is_some_and(alive) {
                    return Err(LabError::Failed(format!(
                        "node {} exited; see {}",
                        n.name,
                        n.log.display()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(LabError::Failed(format!(
                    "only {ready} of {want} nodes became Ready in {} s; see the logs in {}",
                    cfg.ready_timeout.as_secs(),
                    cfg.data_dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Lab {
            state,
            dir: cfg.data_dir.clone(),
            binary: cfg.binary.clone(),
        })
    }

    /// Kills node `name`'s process with SIGKILL (a crash), leaving its pods running.
    pub async fn kill_node(&mut self, name: &str) -> Result<(), LabError> {
        let n = self
            .state
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::Failed(format!("no node {name}")))?;
        if let Some(pid) = n.pid.take()
            && alive(pid)
            && cmdline(pid).contains(&self.dir.display().to_string())
        {
            // SAFETY: kill(2) on the node process this lab started, checked by cmdline.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            while alive(pid) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        write_state(&self.dir, &self.state)
    }

    /// Stops the containerd the lab started and starts it again (its pods' shims keep
    /// running, as they do when a node's containerd restarts).
    pub async fn restart_containerd(&mut self) -> Result<(), LabError> {
        let pid = self.state.containerd_pid.ok_or_else(|| {
            LabError::Failed("this lab uses a containerd it did not start".into())
        })?;
        stop_process(
            pid,
            &self.dir.display().to_string(),
            Duration::from_secs(10),
        )
        .await;
        let dir = self.dir.join("containerd");
        let config = dir.join("config.toml");
        let pid = spawn_containerd(&config, &dir.join("containerd.restarted.log"))?;
        self.state.containerd_pid = Some(pid);
        write_state(&self.dir, &self.state)?;
        Runtime::connect(
            &self.state.containerd_socket,
            "default",
            Duration::from_secs(20),
        )
        .await?;
        Ok(())
    }

    /// Starts node `name`'s process again, as `up` started it.
    pub fn start_node(&mut self, name: &str) -> Result<(), LabError> {
        let n = self
            .state
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::Failed(format!("no node {name}")))?;
        let ns = NetNs::open(&n.netns)?;
        let env: Vec<(&str, &str)> = n
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let log = n.log.with_extension("restarted.log");
        n.pid = Some(spawn_in(Some(&ns), &self.binary, &n.args, &env, &log)?);
        write_state(&self.dir, &self.state)
    }

    /// Adds a worker to the running lab (the next name and address, the same flags as
    /// the first worker) and starts it; returns its name. The caller waits for Ready.
    pub async fn add_worker(&mut self) -> Result<String, LabError> {
        let template = self
            .state
            .nodes
            .get(1)
            .cloned()
            .ok_or_else(|| LabError::Failed("the lab has no worker to copy".into()))?;
        let subnet: Ipv4Cidr = self
            .state
            .subnet
            .parse()
            .map_err(|e: tinykube_net::cidr::CidrError| LabError::Failed(e.to_string()))?;
        let i = self.state.nodes.len();
        let prefix = node_prefix(&self.state.name);
        let mut n = lab_node(
            &self.state.name,
            &self.dir,
            subnet,
            i,
            &format!("{prefix}worker-{i}"),
        );
        if i >= 245 || self.state.nodes.iter().any(|x| x.name == n.name) {
            return Err(LabError::Failed(format!("cannot add node {}", n.name)));
        }
        // The first worker's flags, with this node's name, address and data dir.
        let mut args = template.args.clone();
        for (flag, value) in [
            ("--node-name", n.name.clone()),
            ("--node-ip", n.ip.to_string()),
            ("--data-dir", n.data_dir.display().to_string()),
        ] {
            if let Some(k) = args.iter().position(|a| a == flag)
                && k + 1 < args.len()
            {
                args[k + 1] = value;
            }
        }
        n.args = args;
        n.env = template.env.clone();
        let h = link::connect()?;
        let bridge = link::link_index(&h, &self.state.bridge)
            .await?
            .ok_or_else(|| LabError::Failed(format!("bridge {} is gone", self.state.bridge)))?;
        let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let ns = NetNs::create(&n.netns)?;
        self.state.nodes.push(n.clone());
        write_state(&self.dir, &self.state)?;
        link::plug(&h, bridge, &ns, &n.veth, n.ip, 24, gateway, None).await?;
        std::fs::create_dir_all(&n.data_dir)
            .map_err(io(format!("cannot create {}", n.data_dir.display())))?;
        let env: Vec<(&str, &str)> = n
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let pid = spawn_in(Some(&ns), &self.binary, &n.args, &env, &n.log)?;
        self.state.nodes.last_mut().expect("just pushed").pid = Some(pid);
        write_state(&self.dir, &self.state)?;
        Ok(n.name)
    }

    /// Takes worker `name` out of the lab for good, as an admin drains and deletes a
    /// machine: stops its agent, deletes its Node, removes its pods' containers, its
    /// namespaces, veth and data.
    pub async fn remove_worker(&mut self, name: &str) -> Result<(), LabError> {
        let k = self
            .state
            .nodes
            .iter()
            .position(|n| n.name == name)
            .filter(|k| *k > 0)
            .ok_or_else(|| LabError::Failed(format!("no worker {name}")))?;
        let n = self.state.nodes[k].clone();
        if let Some(pid) = n.pid {
            stop_process(
                pid,
                &self.dir.display().to_string(),
                Duration::from_secs(10),
            )
            .await;
        }
        let nodes: Api<Node> = Api::all(self.client().await?);
        match nodes.delete(name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(LabError::Failed(format!("cannot delete node {name}: {e}"))),
        }
        let rt = Runtime::connect(
            &self.state.containerd_socket,
            &format!("tinykube-{name}"),
            Duration::from_secs(5),
        )
        .await?;
        if rt.namespace_exists().await? {
            rt.purge().await?;
        }
        for uid in ipam_owners(&n.data_dir) {
            if let Ok(ns) = NetNs::open(&format!("tk-{uid}")) {
                let _ = ns.delete();
            }
        }
        if let Ok(ns) = NetNs::open(&n.netns) {
            ns.delete()?;
        }
        link::delete_link(&link::connect()?, &n.veth).await?;
        let _ = std::fs::remove_dir_all(&n.data_dir);
        self.state.nodes.remove(k);
        write_state(&self.dir, &self.state)
    }

    /// Removes cluster `name` and everything it left: its processes (by pid, checked),
    /// pods and the nodes' containerd namespaces, network namespaces, bridge and veths,
    /// the containerd it started, the kubeconfig it wrote, and its data unless `keep`.
    /// Returns false if there was nothing to remove.
    pub async fn down(name: &str, dir: &Path, keep: bool) -> Result<bool, LabError> {
        check_name(name)?;
        let state = read_state(dir);
        let mut found = state.is_some();
        let dir_marker = dir.display().to_string();
        // 1. Node processes: recorded pids, and any tinykube still running with this
        // lab's data dir (a crashed `up` may not have recorded it).
        let mut pids: Vec<u32> = state
            .iter()
            .flat_map(|s| s.nodes.iter().filter_map(|n| n.pid))
            .collect();
        pids.extend(
            processes_mentioning(&format!("{dir_marker}/"))
                .into_iter()
                .filter(|p| {
                    let c = cmdline(*p);
                    c.contains(" master ") || c.contains(" worker ")
                }),
        );
        pids.sort_unstable();
        pids.dedup();
        let stops: Vec<_> = pids
            .iter()
            .map(|p| stop_process(*p, &dir_marker, Duration::from_secs(10)))
            .collect();
        found |= !stops.is_empty();
        for s in stops {
            s.await;
        }
        // 2. Pods and containerd namespaces of the nodes.
        let mut node_names: Vec<String> = state
            .iter()
            .flat_map(|s| s.nodes.iter().map(|n| n.name.clone()))
            .collect();
        for ns in leftover_netns(name) {
            found = true;
            let suffix = ns.trim_start_matches(&netns_prefix(name)).to_string();
            let n = if name == DEFAULT_NAME {
                suffix
            } else {
                format!("{name}-{suffix}")
            };
            if !node_names.contains(&n) {
                node_names.push(n);
            }
        }
        let own_socket = dir.join("containerd").join("containerd.sock");
        let socket = state
            .as_ref()
            .map(|s| s.containerd_socket.clone())
            .filter(|s| !s.as_os_str().is_empty())
            .unwrap_or_else(|| {
                if own_socket.exists() {
                    own_socket.clone()
                } else {
                    PathBuf::from(tinykube_kubelet::runtime::daemon::CONTAINERD_SOCKET)
                }
            });
        let mut pod_uids: Vec<String> = Vec::new();
        if containerd_answers(&socket).await {
            for n in &node_names {
                let rt =
                    Runtime::connect(&socket, &format!("tinykube-{n}"), Duration::from_secs(2))
                        .await?;
                if rt.namespace_exists().await? {
                    found = true;
                    for c in rt.list_containers().await? {
                        if let Some(uid) = c.labels.get(tinykube_kubelet::pods::LABEL_POD_UID) {
                            pod_uids.push(uid.clone());
                        }
                    }
                    rt.purge().await?;
                }
            }
        }
        pod_uids.extend(ipam_owners(dir));
        for uid in pod_uids {
            if let Ok(ns) = NetNs::open(&format!("tk-{uid}")) {
                let _ = ns.delete();
            }
        }
        // 3. The containerd the lab started.
        if let Some(pid) = state.as_ref().and_then(|s| s.containerd_pid) {
            stop_process(pid, &dir_marker, Duration::from_secs(10)).await;
        }
        for pid in processes_mentioning(&format!("{dir_marker}/containerd/config.toml")) {
            stop_process(pid, &dir_marker, Duration::from_secs(10)).await;
        }
        // 4. Network: node namespaces (their veth ends and cni0 go with them), bridge.
        for ns in leftover_netns(name).collect::<Vec<_>>() {
            if let Ok(n) = NetNs::open(&ns) {
                n.delete()?;
            }
        }
        let h = link::connect()?;
        let bridge = bridge_name(name);
        if link::link_index(&h, &bridge).await?.is_some() {
            found = true;
            link::delete_link(&h, &bridge).await?;
        }
        if let Some(st) = &state {
            for n in &st.nodes {
                link::delete_link(&h, &n.veth).await?;
            }
            // 5. The default kubeconfig, if it is still the one `up` wrote.
            if let Some(p) = &st.wrote_default_kubeconfig
                && std::fs::read(p).ok() == std::fs::read(&st.kubeconfig).ok()
            {
                let _ = std::fs::remove_file(p);
            }
        }
        // 6. Data.
        if dir.exists() {
            found = true;
            if !keep {
                // Mounts under the data dir (a lab containerd's) are gone with it.
                std::fs::remove_dir_all(dir)
                    .map_err(io(format!("cannot remove {}", dir.display())))?;
            } else {
                let _ = std::fs::remove_file(dir.join(STATE_FILE));
            }
        }
        Ok(found)
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.state.kubeconfig
    }

    pub async fn client(&self) -> Result<kube::Client, LabError> {
        client_for(&self.state.kubeconfig).await
    }

    pub fn node(&self, name: &str) -> Option<&LabNode> {
        self.state.nodes.iter().find(|n| n.name == name)
    }
}

async fn client_for(kubeconfig: &Path) -> Result<kube::Client, LabError> {
    let fail = |e: String| LabError::Failed(format!("cannot use {}: {e}", kubeconfig.display()));
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| fail(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| fail(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| fail(e.to_string()))
}

async fn link_exists_root(name: &str) -> Result<bool, LabError> {
    let h = link::connect()?;
    Ok(link::link_index(&h, name).await?.is_some())
}

/// Node namespaces of cluster `name` under /var/run/netns.
fn leftover_netns(name: &str) -> impl Iterator<Item = String> {
    let prefix = netns_prefix(name);
    std::fs::read_dir(tinykube_net::netns::NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(move |n| n.starts_with(&prefix))
}

/// Pod UIDs with addresses in any node's allocations under `dir`.
fn ipam_owners(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir()
                && !p.ends_with("containerd")
                && !p.ends_with("pods")
                && !p.ends_with("db")
            {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "allocations.json")
                && let Ok(b) = std::fs::read(&p)
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
                && let Some(owners) = v["owners"].as_object()
            {
                out.extend(owners.values().filter_map(|o| o.as_str().map(String::from)));
            }
        }
    }
    out
}

/// Pids whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| *p != me && cmdline(*p).contains(needle))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_layout() {
        assert!(check_name("lab").is_ok());
        assert!(check_name("t12").is_ok());
        assert!(check_name("Lab").is_err());
        assert!(check_name("toolongname").is_err());
        assert_eq!(node_names("lab", 2), ["master", "worker-1", "worker-2"]);
        assert_eq!(node_names("t1", 1), ["t1-master", "t1-worker-1"]);
        assert!(format!("tkv9-{}p", "abcdefgh").len() <= 15);
        assert!(bridge_name("abcdefgh").len() <= 15);
    }
}
