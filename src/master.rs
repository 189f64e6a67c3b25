//! `tinykube master`: the API server, then the controllers, the scheduler and the
//! master's own node agent, all as API clients of the server.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::worker::NodeArgs;

#[derive(clap::Args)]
pub struct MasterArgs {
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
    #[arg(long, default_value = "udp", value_parser = crate::worker::parse_backend)]
    flannel_backend: String,
    /// Give LoadBalancer services addresses from this pool (FIRST-LAST or a CIDR, e.g.
    /// 192.168.56.240-192.168.56.250), each announced by one node over ARP, instead of
    /// the nodes' own addresses.
    #[arg(long)]
    lb_pool: Option<tinykube_api::lbpool::LbPool>,
    /// Taint the master's own node NoSchedule (node-role.kubernetes.io/control-plane), so
    /// ordinary pods run on the workers; without it a master alone runs pods too (as
    /// kind and k3s do). `tinykube up` sets it when the cluster has workers.
    #[arg(long)]
    taint_master: bool,
    /// The longest client certificate the cluster signs, nodes' own included; nodes
    /// renew theirs between 70% and 80% of it (kube-controller-manager's flag).
    #[arg(long, default_value = "8760h", value_parser = tinykube_api::format::parse_go_duration)]
    cluster_signing_duration: Duration,
    /// No service-account token lasts longer than this (e.g. 1h); unlimited when absent.
    #[arg(long, value_parser = tinykube_api::format::parse_go_duration)]
    service_account_max_token_expiration: Option<Duration>,
    /// How often the master hands freed heap pages back to the kernel (0s: never).
    #[arg(long, default_value = "10s", value_parser = tinykube_api::format::parse_go_duration)]
    memory_trim_interval: Duration,
    /// How long an Event lives after its last write (kube-apiserver's flag).
    #[arg(long, default_value = "1h", value_parser = tinykube_api::format::parse_go_duration)]
    event_ttl: Duration,
    #[command(flatten)]
    node: NodeArgs,
}

/// Runs the master until SIGINT or SIGTERM.
pub async fn run(args: MasterArgs) -> Result<(), String> {
    let mut cfg = tinykube_apiserver::MasterConfig::new(args.data_dir.clone());
    // One metrics registry for the process: the API server serves what the controllers
    // and the scheduler register in it too.
    let metrics = cfg.metrics.clone();
    cfg.cluster_cidr = args.cluster_cidr.clone();
    cfg.network_backend = args.flannel_backend;
    cfg.listen = args.listen;
    cfg.advertise = args.advertise_address;
    cfg.default_toleration_seconds = args.default_toleration_seconds;
    cfg.lb_pool = args.lb_pool;
    cfg.cluster_signing_duration = args.cluster_signing_duration;
    cfg.service_account_max_token_expiration = args.service_account_max_token_expiration;
    cfg.event_ttl = args.event_ttl;
    let controllers = (!args.disable_controllers).then(|| tinykube_controllers::Config {
        node_monitor_grace: Duration::from_secs(args.node_monitor_grace_period),
        cluster_cidr: args.cluster_cidr,
        lb_pool: args.lb_pool,
        ..Default::default()
    });
    let master = tinykube_apiserver::Master::start(cfg)
        .await
        .map_err(|e| tinykube_apiserver::error::error_chain(&e))?;
    // The controllers and the scheduler each as their own user, as kube-controller-manager
    // and kube-scheduler are, limited by their RBAC roles; they reach the API server
    // in-process (its loopback path: the same chain, no TCP or TLS), as do the caches.
    use tinykube_apiserver::authz::rbac::bootstrap::{CONTROLLER_MANAGER, SCHEDULER};
    let controllers_client = kube::Client::new(master.loopback(CONTROLLER_MANAGER, &[]), "default");
    let scheduler_client = kube::Client::new(master.loopback(SCHEDULER, &[]), "default");
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    // One watch cache per kind, shared by the controllers and the scheduler; it reads as
    // the controllers' user, who may list everything it holds.
    let caches = (controllers.is_some() || !args.disable_scheduler).then(|| {
        tinykube_client::Informers::start_measured(&controllers_client, &metrics, &cancel)
    });
    if let (Some(c), Some(caches)) = (controllers, &caches) {
        tasks.push(tokio::spawn(tinykube_controllers::run(
            controllers_client,
            caches.clone(),
            c,
            cancel.clone(),
        )));
    }
    if let (false, Some(caches)) = (args.disable_scheduler, &caches) {
        let (caches, cancel, metrics) = (caches.clone(), cancel.clone(), metrics.clone());
        tasks.push(tokio::spawn(async move {
            tinykube_scheduler::run(scheduler_client, caches, &metrics, cancel).await
        }));
    }
    if !args.memory_trim_interval.is_zero() {
        tasks.push(tokio::spawn(trim_memory(
            args.memory_trim_interval,
            cancel.clone(),
        )));
    }
    if !args.no_kubelet {
        // The master is a node too; tainted when asked, so ordinary pods go to the workers.
        let token = tinykube_api::pki::JoinToken::new(&master.ca_pem, &master.tokens.node);
        let mut agent = args.node.config(
            &master.url,
            &token.to_string(),
            Some(args.data_dir.join("tls").join("ca.crt")),
            args.data_dir.join("agent"),
        );
        agent.control_plane = true;
        agent.taint_control_plane = args.taint_master;
        // Through the loopback as this node's user, whom the Node authorizer knows.
        let user = format!("system:node:{}", agent.node_name);
        let api = kube::Client::new(master.loopback(&user, &["system:nodes"]), "default");
        let cancel = cancel.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = tinykube_node::run_in_master(agent, api, cancel).await {
                eprintln!("error: node agent: {}", tinykube_api::error_chain(&e));
            }
        }));
    }
    master.run_until_signal_then(|| cancel.cancel()).await;
    for t in tasks {
        let _ = t.await;
    }
    if let Some(caches) = caches {
        caches.stopped().await;
    }
    Ok(())
}

/// After a burst (10,000 pods scaled down) the allocator keeps what the heap freed;
/// every `every` the free pages go back to the kernel (jemalloc's purge of every arena,
/// or glibc's `malloc_trim`: see `tinykube_api::memory`), a few milliseconds each.
async fn trim_memory(every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        tinykube_api::memory::release_free_memory();
    }
}
