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

mod down;
mod nodes;
mod process;

use down::{ipam_owners, leftover_netns, link_exists_root};
use process::*;

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
    /// Give every node namespace a second interface with Vagrant's NAT address
    /// (10.0.2.15 on all of them) and the default route through it, as on the VMs.
    pub nat_like_vagrant: bool,
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
            nat_like_vagrant: false,
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
            if cfg.nat_like_vagrant {
                link::nat_like_vagrant(&ns).await?;
            }
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
                "--containerd-socket".into(),
                socket.display().to_string(),
            ];
            // Like a VM, a node then finds its address itself (the route to the master).
            if !cfg.nat_like_vagrant {
                v.extend(["--node-ip".into(), n.ip.to_string()]);
            }
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
        // With workers, pods go to them (the course's layout); a master alone runs them.
        if cfg.workers > 0 {
            args.push("--taint-master".into());
        }
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
        let deadline = Instant::now() + cfg.ready_timeout;
        let client = loop {
            if kubeconfig.exists()
                && token_file.exists()
                && let Ok(c) = tinykube_client::from_kubeconfig(&kubeconfig).await
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

        // Every node Ready, and without the taint the node controller put on it while it
        // was not (so the first pods spread over every worker, not only the first one up).
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
                        .filter(|n| {
                            !n.spec
                                .as_ref()
                                .and_then(|s| s.taints.as_ref())
                                .is_some_and(|t| t.iter().any(tinykube_api::taint::is_not_ready))
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

    pub fn kubeconfig(&self) -> &Path {
        &self.state.kubeconfig
    }

    pub async fn client(&self) -> Result<kube::Client, LabError> {
        tinykube_client::from_kubeconfig(&self.state.kubeconfig)
            .await
            .map_err(|e| LabError::Failed(tinykube_api::error_chain(&e)))
    }

    pub fn node(&self, name: &str) -> Option<&LabNode> {
        self.state.nodes.iter().find(|n| n.name == name)
    }
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
