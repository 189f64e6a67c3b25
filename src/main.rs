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
) -> Result<(), String> {
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
                no_kubelet: _,
                disable_controllers,
                disable_scheduler,
                node_monitor_grace_period,
                default_toleration_seconds,
                cluster_cidr,
            } => {
                let mut cfg = tinykube_apiserver::MasterConfig::new(data_dir);
                cfg.listen = listen;
                cfg.advertise = advertise_address;
                cfg.default_toleration_seconds = default_toleration_seconds;
                let controllers = (!disable_controllers).then(|| tinykube_controllers::Config {
                    node_monitor_grace: Duration::from_secs(node_monitor_grace_period),
                    cluster_cidr,
                    ..Default::default()
                });
                run_master(cfg, controllers, !disable_scheduler).await
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
