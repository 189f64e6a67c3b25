//! The kubelet: pods through containerd with a shared pause sandbox per pod (`pods`),
//! containerd's API (`runtime`), the node's images (`images`), and the kubelet API
//! on 10250 (`server`: logs, exec, metrics, `stats` from cgroups, `inspect`). The
//! node agent (`tinykube-node`) starts it once the node is registered and its pod
//! network is known.

pub mod images;
pub mod inspect;
pub mod pause;
pub mod pods;
pub mod runtime;
pub mod server;
pub mod stats;

pub use tinykube_api::error_chain;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tinykube_client::Recorder;
use tinykube_net::Ipv4Cidr;
use tinykube_net::ipam::Ipam;
use tinykube_net::link::Bridge;
use tokio_util::sync::CancellationToken;

use crate::pods::{Backoff, PodContext};
use crate::runtime::Runtime;
use crate::runtime::image::ResolvedImage;

/// What the kubelet of one node needs to run its pods.
pub struct KubeletConfig {
    pub node: String,
    pub node_ip: String,
    pub data_dir: PathBuf,
    /// The node's podCIDR, which `cni0` and the pod addresses come from.
    pub pod_cidr: Ipv4Cidr,
    /// The pods' MTU (the overlay's).
    pub pod_mtu: Option<u32>,
    /// First container restart back-off (Kubernetes: 10 s, doubling to 5 min).
    pub backoff_base: Duration,
    /// Registries (host:port) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub pause_image: ResolvedImage,
    /// The node's own resolv.conf (pods with `dnsPolicy: Default` get its servers).
    pub resolv_conf: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("cannot set up the pod bridge")]
    Bridge(#[from] tinykube_net::link::LinkError),
    #[error("cannot open the pod address allocations")]
    Ipam(#[from] tinykube_net::ipam::IpamError),
    #[error("{0}")]
    ServingCertificate(String),
}

/// A running kubelet: the pod workers, the kubelet API and log housekeeping.
pub struct Kubelet {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Kubelet {
    /// Sets up the pod bridge and addresses and gets the kubelet API's certificate
    /// (errors come back here), then runs the node's pods and the kubelet API until
    /// `cancel`; container logs are rotated every `housekeeping`.
    pub async fn start(
        client: kube::Client,
        runtime: Runtime,
        cfg: KubeletConfig,
        parts: Arc<dyn server::NodeParts>,
        housekeeping: Duration,
        cancel: CancellationToken,
    ) -> Result<Self, KubeletError> {
        let bridge = Bridge::setup("cni0", cfg.pod_cidr, cfg.pod_mtu).await?;
        let ipam = Ipam::open(&cfg.data_dir.join("ipam"), cfg.pod_cidr)?;
        let ctx = Arc::new(PodContext {
            client: client.clone(),
            runtime,
            bridge,
            ipam,
            node: cfg.node.clone(),
            node_ip: cfg.node_ip,
            pods_dir: cfg.data_dir.join("pods"),
            resolv_conf: cfg.resolv_conf,
            backoff: Backoff {
                base: cfg.backoff_base,
                max: Duration::from_secs(300).max(cfg.backoff_base),
            },
            cgroup_parent: format!("/tinykube/{}", cfg.node),
            pause_image: cfg.pause_image,
            images: images::Images {
                cache: Default::default(),
                puller: runtime::pull::Puller::new(
                    cfg.insecure_registries,
                    cfg.data_dir.join("images").join(".pulling"),
                ),
            },
            registry: Default::default(),
            recorder: Recorder::new(client.clone(), "kubelet", Some(&cfg.node)),
            tokens: Default::default(),
        });
        let pods = tokio::spawn(pods::run(ctx.clone(), cancel.clone()));
        let tokens = tokio::spawn(pods::tokens::run(ctx.clone(), cancel.clone()));
        let tls = server::serving_tls(&client, &cfg.data_dir)
            .await
            .map_err(KubeletError::ServingCertificate)?;
        let server = tokio::spawn(server::serve(
            server::listen_addr(),
            tls,
            ctx.clone(),
            parts,
            cancel.clone(),
        ));
        let pods_dir = ctx.pods_dir.clone();
        let logs = tokio::spawn(async move {
            let mut tick = tokio::time::interval(housekeeping);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let dir = pods_dir.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    pods::rotate_logs(&dir, pods::LOG_MAX_BYTES)
                })
                .await;
            }
        });
        Ok(Self {
            tasks: vec![pods, tokens, logs],
            server,
        })
    }

    /// Waits for the kubelet's tasks to end (after the `cancel` given to `start`).
    pub async fn stopped(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        if let Ok(Err(e)) = self.server.await {
            tracing::warn!(error = %e, "the kubelet API stopped with an error");
        }
    }
}
