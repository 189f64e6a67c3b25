//! The one tinykube binary: parses the command line and hands off to a component's `run`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "tinykube",
    version,
    about = "A small Kubernetes-compatible cluster in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server, the controllers and the scheduler.
    Master {
        #[arg(long, default_value = tinykube_api::constants::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:6443")]
        listen: SocketAddr,
        /// The address clients and nodes use to reach this master.
        #[arg(long)]
        advertise_address: Option<IpAddr>,
        /// Do not run a node agent on the master.
        #[arg(long)]
        no_kubelet: bool,
        /// Run without the controllers (API server and scheduler only).
        #[arg(long)]
        disable_controllers: bool,
        /// Run without the scheduler.
        #[arg(long)]
        disable_scheduler: bool,
        /// Seconds a node may go without a heartbeat before it is NotReady.
        #[arg(long, default_value_t = 40)]
        node_monitor_grace_period: u64,
        /// Seconds pods tolerate a not-ready or unreachable node before eviction (labs lower it).
        #[arg(long, default_value_t = 300)]
        default_toleration_seconds: i64,
        /// The pod network; each node gets a /24 of it.
        #[arg(long, default_value = tinykube_api::constants::CLUSTER_CIDR)]
        cluster_cidr: String,
        /// How pod traffic crosses nodes: udp (TUN + UDP 8285), vxlan (kernel VXLAN,
        /// UDP 8472) or host-gw (plain routes; nodes on one L2 segment).
        #[arg(long, default_value = "udp", value_parser = parse_backend)]
        flannel_backend: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Run the node agent: register this machine and run the pods bound to it.
    Worker {
        /// The API server, e.g. https://192.168.56.10:6443.
        #[arg(long)]
        server: String,
        /// The master's join token (its <data-dir>/node-token).
        #[arg(long, env = "TINYKUBE_TOKEN", hide_env_values = true)]
        token: String,
        /// The cluster CA (the master's <data-dir>/tls/ca.crt); default <data-dir>/ca.crt.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        #[arg(long, default_value = tinykube_api::constants::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Build a local cluster on this machine: a master and workers, each in its own
    /// network namespace on a lab bridge (192.168.56.0/24 by default).
    Up {
        /// Cluster name (1-8 lowercase letters and digits); several can run side by side.
        #[arg(long, default_value = tinykube_lab::DEFAULT_NAME)]
        name: String,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// The lab network, a /24: the host takes .1, the master .10, workers .11 on.
        #[arg(long, default_value = tinykube_lab::DEFAULT_SUBNET)]
        subnet: String,
        /// Default: /var/lib/tinykube/clusters/<name>.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Use this containerd (default: the system's if it answers, else one of the lab's own).
        #[arg(long)]
        containerd_socket: Option<PathBuf>,
        /// Seconds to wait for every node to be Ready.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Seconds of the first container restart back-off on every node.
        #[arg(long, default_value_t = 10)]
        restart_backoff_seconds: u64,
        /// The overlay backend: udp, vxlan or host-gw (the master's --flannel-backend).
        #[arg(long, default_value = "udp", value_parser = parse_backend)]
        backend: String,
    },
    /// Remove a local cluster and everything it left behind.
    Down {
        #[arg(long, default_value = tinykube_lab::DEFAULT_NAME)]
        name: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Keep the cluster's data directory.
        #[arg(long)]
        keep_data: bool,
    },
    /// PID 1 of a pod sandbox (runs inside the pause image).
    #[command(hide = true)]
    Pause,
    /// Programs of the toolbox image: `serve` (HTTP on 8080 saying which pod answered)
    /// and `fetch URL` (requests it repeatedly and prints the answers).
    Toolbox {
        #[command(subcommand)]
        command: ToolboxCommand,
    },
    /// Register fake nodes that run no containers but report pods Running (kubemark-style).
    HollowNodes {
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        #[arg(long, default_value_t = 3)]
        count: usize,
        #[arg(long, default_value = "hollow")]
        prefix: String,
    },
    /// A kubectl-like client.
    Ctl(tinykube_ctl::CtlArgs),
}

#[derive(clap::Args)]
struct NodeArgs {
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// This node's address (default: the one on the route to the API server).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    #[arg(long, default_value = tinykube_kubelet::agent::CONTAINERD_SOCKET)]
    containerd_socket: PathBuf,
    /// Seconds of the first container restart back-off (doubling up to 5 minutes).
    #[arg(long, default_value_t = 10)]
    restart_backoff_seconds: u64,
    /// A registry (HOST:PORT) to pull from over plain HTTP; may be repeated.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// The address other nodes send overlay traffic to (default: the node's address).
    #[arg(long)]
    public_ip: Option<std::net::Ipv4Addr>,
    /// Use this interface's address for the overlay (e.g. eth1 on Vagrant, never the
    /// NAT interface every VM shares).
    #[arg(long, conflicts_with = "public_ip")]
    iface: Option<String>,
}

fn parse_backend(s: &str) -> Result<String, String> {
    s.parse::<tinykube_net::overlay::Backend>()
        .map(|b| b.to_string())
        .map_err(|e| e.to_string())
}

impl NodeArgs {
    fn config(
        self,
        server: &str,
        token: &str,
        ca_file: PathBuf,
        data_dir: PathBuf,
    ) -> tinykube_kubelet::agent::AgentConfig {
        let name = self.node_name.unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_lowercase())
                .unwrap_or_else(|_| "node".into())
        });
        let mut cfg =
            tinykube_kubelet::agent::AgentConfig::new(server, token, ca_file, &name, data_dir);
        cfg.node_ip = self.node_ip;
        cfg.containerd_socket = self.containerd_socket;
        cfg.backoff_base = Duration::from_secs(self.restart_backoff_seconds);
        cfg.insecure_registries = self.insecure_registries;
        cfg.public_ip = self.public_ip;
        cfg.iface = self.iface;
        cfg
    }
}

#[derive(Subcommand)]
enum ToolboxCommand {
    /// Answer HTTP and UDP on PORT with this pod's name, namespace, node and IP, and the caller's.
    Serve {
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Request URL repeatedly and print each answer.
    Fetch {
        url: String,
        /// How many requests (0: until stopped).
        #[arg(long, default_value_t = 0)]
        count: u64,
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// Send a datagram to HOST:PORT and print the answer, COUNT times.
    Udp {
        addr: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// Print the environment, one VAR=value per line.
    Env,
    /// Print files.
    Cat { files: Vec<PathBuf> },
    /// Write TEXT (and a newline) to FILE.
    Write { file: PathBuf, text: String },
    /// Sleep (as PID 1 this ignores SIGTERM, like `sleep` in a container).
    Sleep { seconds: u64 },
    /// Exit with CODE.
    Exit { code: u8 },
    /// Allocate and touch MiB of memory, then sleep.
    Alloc { mib: usize },
}

fn toolbox(command: ToolboxCommand) -> std::io::Result<ExitCode> {
    use tinykube_kubelet::toolbox;
    match command {
        ToolboxCommand::Serve { port } => toolbox::serve(port)?,
        ToolboxCommand::Fetch {
            url,
            count,
            interval_ms,
        } => toolbox::fetch(&url, count, Duration::from_millis(interval_ms))?,
        ToolboxCommand::Udp {
            addr,
            count,
            interval_ms,
        } => toolbox::udp(&addr, count, Duration::from_millis(interval_ms))?,
        ToolboxCommand::Env => {
            for (k, v) in std::env::vars() {
                println!("{k}={v}");
            }
        }
        ToolboxCommand::Cat { files } => {
            for f in files {
                print!("{}", std::fs::read_to_string(&f)?);
            }
        }
        ToolboxCommand::Write { file, text } => std::fs::write(file, format!("{text}\n"))?,
        ToolboxCommand::Sleep { seconds } => std::thread::sleep(Duration::from_secs(seconds)),
        ToolboxCommand::Exit { code } => return Ok(ExitCode::from(code)),
        ToolboxCommand::Alloc { mib } => toolbox::alloc(mib),
    }
    Ok(ExitCode::SUCCESS)
}

/// Lets a CLI killed by a closed pipe (`tinykube ctl get pods | head`) end quietly, as
/// command-line tools do, instead of panicking on the failed write.
fn default_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_DFL at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

async fn client_for(kubeconfig: &std::path::Path) -> Result<kube::Client, String> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| format!("cannot read {}: {e}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// The master: the API server, then the controllers and the scheduler as its clients.
async fn run_master(
    cfg: tinykube_apiserver::MasterConfig,
    controllers: Option<tinykube_controllers::Config>,
    scheduler: bool,
    node: Option<NodeArgs>,
) -> Result<(), String> {
    let data_dir = cfg.data_dir.clone();
    let master = tinykube_apiserver::Master::start(cfg)
        .await
        .map_err(|e| tinykube_apiserver::error::error_chain(&e))?;
    let client = client_for(&master.kubeconfig).await?;
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    if let Some(c) = controllers {
        tasks.push(tokio::spawn(tinykube_controllers::run(
            client.clone(),
            c,
            cancel.clone(),
        )));
    }
    if scheduler {
        tasks.push(tokio::spawn(tinykube_scheduler::run(
            client,
            cancel.clone(),
        )));
    }
    if let Some(node) = node {
        // The master is a node too, tainted so ordinary pods go to the workers.
        let mut agent = node.config(
            &master.url,
            &master.tokens.node,
            data_dir.join("tls").join("ca.crt"),
            data_dir.join("agent"),
        );
        agent.control_plane = true;
        let cancel = cancel.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = tinykube_kubelet::agent::run(agent, cancel).await {
                eprintln!("error: node agent: {}", tinykube_kubelet::error_chain(&e));
            }
        }));
    }
    master.run_until_signal_then(|| cancel.cancel()).await;
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn run_hollow_nodes(kubeconfig: PathBuf, count: usize, prefix: String) -> Result<(), String> {
    let client = client_for(&kubeconfig).await?;
    let names: Vec<String> = (1..=count).map(|i| format!("{prefix}{i}")).collect();
    let nodes =
        tinykube_kubelet::hollow::HollowNodes::start(client, names.clone(), Default::default())
            .await
            .map_err(|e| format!("cannot register hollow nodes: {e}"))?;
    eprintln!(
        "{} hollow nodes running ({}); Ctrl-C stops them",
        names.len(),
        names.join(", ")
    );
    let _ = tokio::signal::ctrl_c().await;
    nodes.stop().await;
    Ok(())
}

async fn run_worker(agent: tinykube_kubelet::agent::AgentConfig) -> Result<(), String> {
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        stop.cancel();
    });
    tinykube_kubelet::agent::run(agent, cancel)
        .await
        .map_err(|e| tinykube_kubelet::error_chain(&e))
}

async fn run_up(cfg: tinykube_lab::LabConfig) -> Result<(), String> {
    let mut progress = |line: &str| println!("{line}");
    let lab = tinykube_lab::Lab::up(&cfg, &mut progress)
        .await
        .map_err(|e| {
            format!(
                "{}; `tinykube down{}` clears what is left",
                tinykube_kubelet::error_chain(&e),
                name_flag(&cfg.name)
            )
        })?;
    let kc = lab.kubeconfig().display().to_string();
    println!("\nkubeconfig: {kc}");
    if let Some(p) = &lab.state.wrote_default_kubeconfig {
        println!(
            "(also written to {}, so kubectl finds it without KUBECONFIG)",
            p.display()
        );
    }
    println!(
        "\nNext:\n  export KUBECONFIG={kc}\n  kubectl get nodes -o wide\n  kubectl create deployment server --image=tinykube.local/toolbox --replicas=3\n  kubectl get pods -o wide\n  tinykube down{}    # removes the cluster",
        name_flag(&cfg.name)
    );
    Ok(())
}

fn name_flag(name: &str) -> String {
    if name == tinykube_lab::DEFAULT_NAME {
        String::new()
    } else {
        format!(" --name {name}")
    }
}

fn main() -> ExitCode {
    // Invoked through a link named `ctl`, the binary is the CLI.
    let argv0 = std::env::args().next().unwrap_or_default();
    let cli = if std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "ctl")
    {
        let args = std::iter::once("tinykube".to_string())
            .chain(std::iter::once("ctl".to_string()))
            .chain(std::env::args().skip(1));
        Cli::parse_from(args)
    } else {
        Cli::parse()
    };
    if matches!(cli.command, Command::Ctl(_)) {
        default_sigpipe();
    }
    // The sandbox's PID 1 and the toolbox run inside containers: no async runtime, no
    // log setup.
    match cli.command {
        Command::Pause => tinykube_kubelet::pause::run(),
        Command::Toolbox { command } => {
            return match toolbox(command) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    // Daemons keep their resident size small: glibc otherwise grows a malloc arena per
    // thread that allocates, and a node agent's threads come and go.
    if matches!(cli.command, Command::Master { .. } | Command::Worker { .. }) {
        // SAFETY: mallopt before any allocation-heavy work; it only tunes the allocator.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
    // One TLS crypto provider for every client in the process (kube, registry pulls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("TINYKUBE_LOG")
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = runtime.block_on(async {
        match cli.command {
            Command::Master {
                data_dir,
                listen,
                advertise_address,
                no_kubelet,
                disable_controllers,
                disable_scheduler,
                node_monitor_grace_period,
                default_toleration_seconds,
                cluster_cidr,
                flannel_backend,
                node,
            } => {
                let mut cfg = tinykube_apiserver::MasterConfig::new(data_dir);
                cfg.cluster_cidr = cluster_cidr.clone();
                cfg.network_backend = flannel_backend;
                cfg.listen = listen;
                cfg.advertise = advertise_address;
                cfg.default_toleration_seconds = default_toleration_seconds;
                let controllers = (!disable_controllers).then(|| tinykube_controllers::Config {
                    node_monitor_grace: Duration::from_secs(node_monitor_grace_period),
                    cluster_cidr,
                    ..Default::default()
                });
                run_master(
                    cfg,
                    controllers,
                    !disable_scheduler,
                    (!no_kubelet).then_some(node),
                )
                .await
            }
            Command::Worker {
                server,
                token,
                ca_file,
                data_dir,
                node,
            } => {
                let ca = ca_file.unwrap_or_else(|| data_dir.join("ca.crt"));
                run_worker(node.config(&server, &token, ca, data_dir)).await
            }
            Command::Up {
                name,
                workers,
                subnet,
                data_dir,
                containerd_socket,
                timeout,
                restart_backoff_seconds,
                backend,
            } => {
                let mut cfg = tinykube_lab::LabConfig::new(&name);
                cfg.workers = workers;
                cfg.subnet = subnet
                    .parse()
                    .map_err(|e: tinykube_net::cidr::CidrError| e.to_string())?;
                cfg.data_dir = data_dir.unwrap_or_else(|| tinykube_lab::default_dir(&name));
                cfg.containerd_socket = containerd_socket;
                cfg.ready_timeout = Duration::from_secs(timeout);
                cfg.default_kubeconfig = true;
                cfg.node_args = vec![
                    "--restart-backoff-seconds".into(),
                    restart_backoff_seconds.to_string(),
                ];
                cfg.master_args = vec!["--flannel-backend".into(), backend];
                run_up(cfg).await
            }
            Command::Down {
                name,
                data_dir,
                keep_data,
            } => {
                let dir = data_dir.unwrap_or_else(|| tinykube_lab::default_dir(&name));
                match tinykube_lab::Lab::down(&name, &dir, keep_data).await {
                    Ok(true) => {
                        println!("cluster {name:?} removed");
                        Ok(())
                    }
                    Ok(false) => {
                        println!("no cluster {name:?} here; nothing to remove");
                        Ok(())
                    }
                    Err(e) => Err(format!(
                        "{}; run `tinykube down{}` again after fixing it",
                        tinykube_kubelet::error_chain(&e),
                        name_flag(&name)
                    )),
                }
            }
            Command::Pause | Command::Toolbox { .. } => {
                unreachable!("handled before the runtime starts")
            }
            Command::HollowNodes {
                kubeconfig,
                count,
                prefix,
            } => run_hollow_nodes(kubeconfig, count, prefix).await,
            Command::Ctl(args) => tinykube_ctl::run(args).await.map_err(|e| format!("{e:#}")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
