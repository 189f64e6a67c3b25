//! `tinykube up` and `tinykube down`: a local cluster on this machine, each node in its
//! own network namespace (the lab crate does the work).

use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct UpArgs {
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
    #[arg(long, default_value = "udp", value_parser = crate::worker::parse_backend)]
    backend: String,
    /// LoadBalancer addresses from this pool (e.g. 192.168.56.240-192.168.56.250), each
    /// announced by one node, instead of the nodes' own addresses (the master's --lb-pool).
    #[arg(long)]
    lb_pool: Option<tinykube_api::lbpool::LbPool>,
}

#[derive(clap::Args)]
pub struct DownArgs {
    #[arg(long, default_value = tinykube_lab::DEFAULT_NAME)]
    name: String,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep the cluster's data directory.
    #[arg(long)]
    keep_data: bool,
}

/// Builds the cluster and says how to use it.
pub async fn up(args: UpArgs) -> Result<(), String> {
    let mut cfg = tinykube_lab::LabConfig::new(&args.name);
    cfg.workers = args.workers;
    cfg.subnet = args
        .subnet
        .parse()
        .map_err(|e: tinykube_net::cidr::CidrError| e.to_string())?;
    cfg.data_dir = args
        .data_dir
        .unwrap_or_else(|| tinykube_lab::default_dir(&args.name));
    cfg.containerd_socket = args.containerd_socket;
    cfg.ready_timeout = Duration::from_secs(args.timeout);
    cfg.default_kubeconfig = true;
    cfg.node_args = vec![
        "--restart-backoff-seconds".into(),
        args.restart_backoff_seconds.to_string(),
    ];
    cfg.master_args = vec!["--flannel-backend".into(), args.backend];
    if let Some(pool) = args.lb_pool {
        cfg.master_args
            .extend(["--lb-pool".into(), pool.to_string()]);
    }
    let mut progress = |line: &str| println!("{line}");
    let lab = tinykube_lab::Lab::up(&cfg, &mut progress)
        .await
        .map_err(|e| {
            format!(
                "{}; `tinykube down{}` clears what is left",
                tinykube_api::error_chain(&e),
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

/// Removes the cluster and everything it left behind.
pub async fn down(args: DownArgs) -> Result<(), String> {
    let name = args.name;
    let dir = args
        .data_dir
        .unwrap_or_else(|| tinykube_lab::default_dir(&name));
    match tinykube_lab::Lab::down(&name, &dir, args.keep_data).await {
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
            tinykube_api::error_chain(&e),
            name_flag(&name)
        )),
    }
}

fn name_flag(name: &str) -> String {
    if name == tinykube_lab::DEFAULT_NAME {
        String::new()
    } else {
        format!(" --name {name}")
    }
}
