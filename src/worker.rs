//! `tinykube worker` (the node agent on a machine of its own) and `tinykube
//! hollow-nodes`, and the node flags the master's own agent shares.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The API server, e.g. https://192.168.56.10:6443.
    #[arg(long)]
    server: String,
    /// The master's join token (its <data-dir>/node-token: K10<CA hash>::server:<secret>).
    /// The CA is fetched from the master and checked against the hash; nothing else
    /// needs copying. Used only to join: the node gets its own certificate.
    #[arg(
        long,
        env = "TINYKUBE_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file"
    )]
    token: Option<String>,
    /// A file holding the join token (e.g. the master's node-token on a shared folder).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Trust this CA file instead of fetching the CA (needed with a token without hash).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    #[arg(long, default_value = tinykube_api::constants::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(clap::Args)]
pub struct NodeArgs {
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// This node's address (default: the one on the route to the API server).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    #[arg(long, default_value = tinykube_kubelet::runtime::daemon::CONTAINERD_SOCKET)]
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
    /// The resolvers names outside the cluster are forwarded to, and what pods with
    /// dnsPolicy Default get (as the kubelet's --resolv-conf).
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Seconds the cluster DNS answers may be cached (CoreDNS's `ttl`).
    #[arg(long, default_value_t = 5)]
    dns_ttl: u32,
}

#[derive(clap::Args)]
pub struct HollowArgs {
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    #[arg(long, default_value_t = 3)]
    count: usize,
    #[arg(long, default_value = "hollow")]
    prefix: String,
}

pub fn parse_backend(s: &str) -> Result<String, String> {
    s.parse::<tinykube_net::overlay::Backend>()
        .map(|b| b.to_string())
        .map_err(|e| e.to_string())
}

impl NodeArgs {
    pub fn config(
        self,
        server: &str,
        token: &str,
        ca_file: Option<PathBuf>,
        data_dir: PathBuf,
    ) -> tinykube_node::AgentConfig {
        let name = self.node_name.unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_lowercase())
                .unwrap_or_else(|_| "node".into())
        });
        let mut cfg = tinykube_node::AgentConfig::new(server, token, ca_file, &name, data_dir);
        cfg.node_ip = self.node_ip;
        cfg.containerd_socket = self.containerd_socket;
        cfg.backoff_base = Duration::from_secs(self.restart_backoff_seconds);
        cfg.insecure_registries = self.insecure_registries;
        cfg.public_ip = self.public_ip;
        cfg.iface = self.iface;
        cfg.resolv_conf = self.resolv_conf;
        cfg.dns_ttl = self.dns_ttl;
        cfg
    }
}

/// Runs the node agent until SIGINT or SIGTERM.
pub async fn run(args: WorkerArgs) -> Result<(), String> {
    let token = match (args.token, &args.token_file) {
        (Some(t), _) => t,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?,
        (None, None) => return Err("--token or --token-file is required".into()),
    };
    let agent = args
        .node
        .config(&args.server, token.trim(), args.ca_file, args.data_dir);
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
    tinykube_node::run(agent, cancel)
        .await
        .map_err(|e| tinykube_api::error_chain(&e))
}

/// Registers hollow nodes and keeps them alive until Ctrl-C.
pub async fn run_hollow(args: HollowArgs) -> Result<(), String> {
    let client = tinykube_client::from_kubeconfig(&args.kubeconfig)
        .await
        .map_err(|e| tinykube_api::error_chain(&e))?;
    let names: Vec<String> = (1..=args.count)
        .map(|i| format!("{}{i}", args.prefix))
        .collect();
    let nodes =
        tinykube_node::hollow::HollowNodes::start(client, names.clone(), Default::default())
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
