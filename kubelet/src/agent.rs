//! The node agent's life: connect to containerd (or start one), make the node's own
//! images, register the Node, wait for its podCIDR, set up the bridge, then run pods,
//! the Lease and status heartbeats until told to stop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tinykube_net::Ipv4Cidr;
use tinykube_net::ipam::Ipam;
use tinykube_net::link::Bridge;
use tinykube_net::overlay::{Local, Overlay, OverlayError};
use tokio_util::sync::CancellationToken;

use crate::node::{self, NodeFacts};
use crate::pods::{self, Images, PodContext};
use crate::runtime::Runtime;
use crate::runtime::image::{PAUSE_IMAGE, local_images, local_layer};

/// containerd's own default socket.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    pub token: String,
    /// The cluster CA (PEM) that signed the API server's certificate.
    pub ca_file: PathBuf,
    pub node_name: String,
    pub node_ip: Option<IpAddr>,
    pub data_dir: PathBuf,
    pub containerd_socket: PathBuf,
    /// Register as a control-plane node (label and NoSchedule taint).
    pub control_plane: bool,
    /// First container restart back-off (Kubernetes: 10 s).
    pub backoff_base: Duration,
    pub heartbeat: Duration,
    /// Registries (host:port) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The address peers send overlay traffic to (default: the node's address), or the
    /// interface whose address that is; never a NAT address every VM shares.
    pub public_ip: Option<Ipv4Addr>,
    pub iface: Option<String>,
}

impl AgentConfig {
    pub fn new(
        server: &str,
        token: &str,
        ca_file: PathBuf,
        node_name: &str,
        data_dir: PathBuf,
    ) -> Self {
        Self {
            server: server.to_string(),
            token: token.to_string(),
            ca_file,
            node_name: node_name.to_string(),
            node_ip: None,
            data_dir,
            containerd_socket: PathBuf::from(CONTAINERD_SOCKET),
            control_plane: false,
            backoff_base: Duration::from_secs(10),
            heartbeat: Duration::from_secs(10),
            insecure_registries: Vec::new(),
            public_ip: None,
            iface: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read the cluster CA {path}")]
    Ca {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make an API client for {server}: {message}")]
    Client { server: String, message: String },
    #[error("cannot register node {node}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("cannot start containerd")]
    Containerd(#[source] std::io::Error),
    #[error("cannot set up the pod network")]
    Network(#[from] tinykube_net::link::LinkError),
    #[error("cannot set up the overlay")]
    Overlay(#[from] OverlayError),
    #[error("cannot open the pod address allocations")]
    Ipam(#[from] tinykube_net::ipam::IpamError),
    #[error("{0}")]
    Other(String),
}

/// Writes the config of a containerd of our own with its root, state and socket under
/// `dir` (no CRI plugin: the kubelet speaks to containerd's own API); returns the
/// config's path and the socket's.
pub fn containerd_config(dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let socket = dir.join("containerd.sock");
    std::fs::create_dir_all(dir.join("root"))?;
    std::fs::create_dir_all(dir.join("state"))?;
    let config = format!(
        "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
        dir.display(),
        socket.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config)?;
    Ok((path, socket))
}

/// A containerd this agent started because none answered.
pub struct OwnContainerd {
    child: tokio::process::Child,
    pub socket: PathBuf,
}

impl OwnContainerd {
    /// Starts containerd with its config, root and state under `dir`, as k3s does.
    pub async fn start(dir: &Path) -> Result<Self, AgentError> {
        let (config_path, socket) = containerd_config(dir).map_err(AgentError::Containerd)?;
        let log =
            std::fs::File::create(dir.join("containerd.log")).map_err(AgentError::Containerd)?;
        let child = tokio::process::Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdout(log.try_clone().map_err(AgentError::Containerd)?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(AgentError::Containerd)?;
        Ok(Self { child, socket })
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child by pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

async fn client(cfg: AgentConfig) -> Result<kube::Client, AgentError> {
    let ca = std::fs::read_to_string(&cfg.ca_file).map_err(|source| AgentError::Ca {
        path: cfg.ca_file.clone(),
        source,
    })?;
    let token = format!("node:{}:{}", cfg.node_name, cfg.token);
    let kc = tinykube_api::kubeconfig::Kubeconfig::admin(&cfg.node_name, &cfg.server, &ca, &token);
    let path = cfg.data_dir.join("kubelet.kubeconfig");
    let server = cfg.server.clone();
    let bad = move |message: String| AgentError::Client {
        server: server.clone(),
        message,
    };
    std::fs::write(&path, kc.to_yaml()).map_err(|e| bad(e.to_string()))?;
    let kc = kube::config::Kubeconfig::read_from(&path).map_err(|e| bad(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| bad(e.to_string()))
}

fn server_addr(server: &str) -> Option<SocketAddr> {
    let hostport = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))?;
    let hostport = hostport.split('/').next()?;
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:443")
    };
    hostport.to_socket_addrs().ok()?.next()
}

/// Runs the node agent until `cancel`.
pub async fn run(cfg: AgentConfig, cancel: CancellationToken) -> Result<(), AgentError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| AgentError::Other(format!("cannot create {}: {e}", cfg.data_dir.display())))?;
    let client = client(cfg.clone()).await?;
    let namespace = format!("tinykube-{}", cfg.node_name);
    let (runtime, own) = match Runtime::connect(
        &cfg.containerd_socket,
        &namespace,
        Duration::from_secs(1),
    )
    .await
    {
        Ok(r) => (r, None),
        Err(_) => {
            tracing::info!(socket = %cfg.containerd_socket.display(), "no containerd answers; starting one");
            let own = OwnContainerd::start(&cfg.data_dir.join("containerd")).await?;
            let rt = Runtime::connect(&own.socket, &namespace, Duration::from_secs(20)).await?;
            (rt, Some(own))
        }
    };
    let result = run_with(cfg, client, runtime, cancel).await;
    if let Some(own) = own {
        own.stop().await;
    }
    result
}

async fn run_with(
    cfg: AgentConfig,
    client: kube::Client,
    runtime: Runtime,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    runtime.ensure_namespace().await?;
    let version = runtime.version().await?;
    let binary = std::env::current_exe()
        .map_err(|e| AgentError::Other(format!("cannot find the tinykube binary: {e}")))?;
    let (layer, digest, size) = local_layer(&binary, &cfg.data_dir.join("images").join("local"))?;
    let mut image_sizes = Vec::new();
    for (name, blobs) in local_images(&layer, &digest, size) {
        runtime.import(&name, &blobs).await?;
        image_sizes.push((vec![name], size));
    }
    import_archives(&runtime, &cfg.data_dir.join("images")).await;
    release_free_memory();
    let pause = runtime
        .resolve(PAUSE_IMAGE)
        .await?
        .ok_or_else(|| AgentError::Other("the pause image vanished after import".into()))?;
    let ip = cfg
        .node_ip
        .or_else(|| server_addr(&cfg.server).and_then(node::address_towards))
        .ok_or_else(|| {
            AgentError::Other("cannot tell this node's address; pass --node-ip".into())
        })?;
    let facts = NodeFacts {
        name: cfg.node_name.clone(),
        ip,
        control_plane: cfg.control_plane,
        runtime_version: version,
        max_pods: 110,
    };
    let registered = node::register(&client, &facts, node::status(&facts, &image_sizes, false))
        .await
        .map_err(|source| AgentError::Register {
            node: cfg.node_name.clone(),
            source,
        })?;
    node::renew_lease(&client, &cfg.node_name, Duration::from_secs(40))
        .await
        .ok();
    tracing::info!(node = %cfg.node_name, %ip, "node registered");

    // The node IPAM controller hands out the podCIDR shortly after registration.
    let nodes: Api<Node> = Api::all(client.clone());
    let mut cidr = registered.spec.and_then(|s| s.pod_cidr);
    while cidr.is_none() {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        cidr = nodes
            .get(&cfg.node_name)
            .await
            .ok()
            .and_then(|n| n.spec)
            .and_then(|s| s.pod_cidr);
    }
    let cidr: Ipv4Cidr = cidr
        .unwrap_or_default()
        .parse()
        .map_err(|e: tinykube_net::cidr::CidrError| AgentError::Other(e.to_string()))?;
    // The overlay first: its MTU is the pods'.
    let Some(conf) = crate::network::net_conf(&client, &cancel).await? else {
        return Ok(());
    };
    let public_ip = public_ip(&cfg, ip).await?;
    let overlay = Arc::new(
        Overlay::setup(
            conf.backend,
            Local {
                cluster: conf.network,
                subnet: cidr,
                public_ip,
            },
        )
        .await?,
    );
    crate::network::publish(&client, &cfg.node_name, &overlay)
        .await
        .map_err(|e| AgentError::Other(format!("cannot publish the overlay annotations: {e}")))?;
    tracing::info!(backend = %conf.backend, %public_ip, mtu = overlay.pod_mtu(), "overlay ready");
    let peers = tokio::spawn(crate::network::follow_peers(
        client.clone(),
        overlay.clone(),
        cfg.node_name.clone(),
        cancel.clone(),
    ));
    // The service proxy: ClusterIP and NodePort rules in this node's namespace.
    let proxy = tokio::spawn(tinykube_proxy::run(
        client.clone(),
        conf.network,
        cancel.clone(),
    ));
    let bridge = Bridge::setup("cni0", cidr, Some(overlay.pod_mtu())).await?;
    let ipam = Ipam::open(&cfg.data_dir.join("ipam"), cidr)?;
    let ctx = Arc::new(PodContext {
        client: client.clone(),
        runtime,
        bridge,
        ipam,
        node: cfg.node_name.clone(),
        node_ip: ip.to_string(),
        pods_dir: cfg.data_dir.join("pods"),
        backoff_base: cfg.backoff_base,
        backoff_max: Duration::from_secs(300).max(cfg.backoff_base),
        cgroup_parent: format!("/tinykube/{}", cfg.node_name),
        pause_image: pause,
        images: Images {
            cache: Default::default(),
            puller: crate::runtime::pull::Puller::new(
                cfg.insecure_registries.clone(),
                cfg.data_dir.join("images").join(".pulling"),
            ),
        },
        registry: Default::default(),
    });
    let pods = tokio::spawn(pods::run(ctx.clone(), cancel.clone()));
    let tls = serving_tls(&client, &cfg.data_dir).await?;
    let addr = SocketAddr::from(([0, 0, 0, 0], tinykube_api::constants::KUBELET_PORT));
    let server = tokio::spawn(crate::server::serve(
        addr,
        tls,
        ctx.clone(),
        overlay.clone(),
        cfg.token.clone(),
        cancel.clone(),
    ));
    let mut tick = tokio::time::interval(cfg.heartbeat);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let pods_dir = ctx.pods_dir.clone();
        let _ =
            tokio::task::spawn_blocking(move || pods::rotate_logs(&pods_dir, pods::LOG_MAX_BYTES))
                .await;
        if let Err(e) = node::renew_lease(&client, &cfg.node_name, Duration::from_secs(40)).await {
            tracing::warn!(error = %e, "cannot renew the node lease");
        }
        let status = node::status(&facts, &node_images(&ctx.runtime).await, true);
        if let Err(e) = nodes
            .patch_status(
                &cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            tracing::warn!(error = %e, "cannot post node status");
        }
    }
    let _ = pods.await;
    let _ = peers.await;
    let _ = proxy.await;
    if let Ok(Err(e)) = server.await {
        tracing::warn!(error = %e, "the kubelet API stopped with an error");
    }
    Ok(())
}

/// The overlay's public address: `--public-ip`, else the address of `--iface`, else the
/// node's own.
async fn public_ip(cfg: &AgentConfig, node_ip: IpAddr) -> Result<Ipv4Addr, AgentError> {
    if let Some(ip) = cfg.public_ip {
        return Ok(ip);
    }
    if let Some(name) = &cfg.iface {
        let h = tinykube_net::link::connect()?;
        return tinykube_net::overlay::routes::address_of(&h, name)
            .await?
            .ok_or_else(|| AgentError::Other(format!("interface {name} has no IPv4 address")));
    }
    match node_ip {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => Err(AgentError::Other(
            "the overlay needs an IPv4 address; pass --public-ip".into(),
        )),
    }
}

/// Imports every image tarball (docker-archive or OCI layout, `.tar`, `.tar.gz`) in
/// `dir`, as k3s imports its air-gap images; a bad tarball is reported and skipped.
pub async fn import_archives(runtime: &Runtime, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz")
                })
        })
        .collect();
    files.sort();
    for f in files {
        let work = dir.join(".unpacked");
        let read = {
            let (f, work) = (f.clone(), work.clone());
            tokio::task::spawn_blocking(move || crate::runtime::archive::read_archive(&f, &work))
                .await
        };
        match read {
            Ok(Ok(images)) => {
                for (name, blobs) in images {
                    match runtime.import(&name, &blobs).await {
                        Ok(()) => {
                            tracing::info!(image = %name, file = %f.display(), "image imported")
                        }
                        Err(e) => {
                            tracing::warn!(image = %name, file = %f.display(), error = %crate::error_chain(&e), "cannot import image")
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(file = %f.display(), error = %crate::error_chain(&e), "cannot read image tarball")
            }
            Err(e) => tracing::warn!(file = %f.display(), error = %e, "cannot read image tarball"),
        }
        let _ = std::fs::remove_dir_all(&work);
    }
}

/// The images the node holds, with their sizes, for `status.images`.
async fn node_images(runtime: &Runtime) -> Vec<(Vec<String>, i64)> {
    let mut by_digest: std::collections::BTreeMap<String, (Vec<String>, i64)> = Default::default();
    for name in runtime.list_images().await.unwrap_or_default() {
        if let Ok(Some(i)) = runtime.resolve(&name).await {
            let e = by_digest
                .entry(i.manifest_digest.clone())
                .or_insert((Vec::new(), i.size));
            e.0.push(format!(
                "{}@{}",
                crate::runtime::image::repository(&name),
                i.manifest_digest
            ));
            e.0.push(name);
        }
    }
    by_digest.into_values().collect()
}

/// The kubelet API's TLS setup, with a certificate the API server issues for this node
/// (its name and addresses, signed by the cluster CA).
async fn serving_tls(
    client: &kube::Client,
    data_dir: &Path,
) -> Result<Arc<rustls::ServerConfig>, AgentError> {
    let fail =
        |m: String| AgentError::Other(format!("cannot get the kubelet's serving certificate: {m}"));
    let req = http::Request::post("/tinykube/v1/kubelet-certificate")
        .body(Vec::new())
        .expect("static request");
    let v: serde_json::Value = client.request(req).await.map_err(|e| fail(e.to_string()))?;
    let (cert, key) = (
        v["certificate"].as_str().unwrap_or_default(),
        v["key"].as_str().unwrap_or_default(),
    );
    let dir = data_dir.join("pki");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("kubelet.crt"), cert);
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| fail(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| fail("no private key in the answer".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| fail(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Hands the heap's free pages back to the kernel. Importing the local images streams
/// tens of MB through gRPC buffers; glibc keeps what they freed in its arenas, and
/// the worker would carry it as resident memory for the rest of its life.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
