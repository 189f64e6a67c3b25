//! The master process: data dir, tokens, PKI, storage, the bootstrap objects, and the
//! TLS listener serving the API through the handler chain.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tinykube_api::constants::{API_SERVER_PORT, KUBERNETES_SERVICE_IP};
use tinykube_api::kubeconfig::{Kubeconfig, User};
use tinykube_api::pki::JoinToken;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::authn::{MASTERS, Peer, Tokens, random_token};
use crate::authz::Authorizer;
use crate::authz::rbac::bootstrap::{CONTROLLER_MANAGER, SCHEDULER};
use crate::certificates::pki::{Pki, TlsError, write_private};
use crate::certificates::signer::Signer;
use crate::error::error_chain;
use crate::registry::allocator::{Allocator, Held};
use crate::registry::{self, ListOptions, Registry};
use crate::resources;
use crate::serviceaccount::ServiceAccountTokens;
use crate::state::Shared;
use crate::store::{SledStore, SledStoreOptions, Store};

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("failed to prepare the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to open the store")]
    Store(#[from] crate::store::StoreError),
    #[error("failed to set up TLS")]
    Tls(#[from] TlsError),
    #[error("failed to listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bootstrap(#[from] crate::bootstrap::BootstrapError),
}

#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The address nodes and clients reach the API server at (kubeconfig, endpoints).
    pub advertise: Option<IpAddr>,
    pub bookmark_interval: Duration,
    pub store: SledStoreOptions,
    /// How long pods tolerate a not-ready or unreachable node (DefaultTolerationSeconds).
    pub default_toleration_seconds: i64,
    /// The pod network and the overlay backend the nodes use, published in
    /// `kube-system/tinykube-network`.
    pub cluster_cidr: String,
    pub network_backend: String,
    /// The LoadBalancer address pool, if any (`loadBalancerIP` must be in it).
    pub lb_pool: Option<tinykube_api::lbpool::LbPool>,
    /// The longest client certificate the signer issues, nodes' included
    /// (kube-controller-manager's `--cluster-signing-duration`).
    pub cluster_signing_duration: Duration,
    /// No service-account token lasts longer (`--service-account-max-token-expiration`).
    pub service_account_max_token_expiration: Option<Duration>,
    /// How long an Event lives after its last write (`--event-ttl`).
    pub event_ttl: Duration,
    /// The process's metrics registry, served on `/metrics`.
    pub metrics: tinykube_api::metrics::Metrics,
}

impl MasterConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), API_SERVER_PORT),
            advertise: None,
            bookmark_interval: Duration::from_secs(30),
            store: SledStoreOptions::default(),
            default_toleration_seconds: 300,
            cluster_cidr: tinykube_api::constants::CLUSTER_CIDR.to_string(),
            network_backend: "udp".to_string(),
            lb_pool: None,
            cluster_signing_duration: crate::certificates::signer::DEFAULT_DURATION,
            service_account_max_token_expiration: None,
            event_ttl: registry::expiry::DEFAULT_EVENT_TTL,
            metrics: Default::default(),
        }
    }
}

/// The admin user of the admin kubeconfig, as kubeadm names it.
pub const ADMIN_USER: &str = "kubernetes-admin";
pub const CONTROLLER_MANAGER_KUBECONFIG: &str = "controller-manager.kubeconfig";
pub const SCHEDULER_KUBECONFIG: &str = "scheduler.kubeconfig";

/// A running master. Dropping it does not stop it; call `shutdown`.
pub struct Master {
    pub addr: SocketAddr,
    pub url: String,
    /// The admin's kubeconfig (`system:masters`).
    pub kubeconfig: PathBuf,
    /// The controllers' and the scheduler's own kubeconfigs.
    pub controllers_kubeconfig: PathBuf,
    pub scheduler_kubeconfig: PathBuf,
    pub tokens: Tokens,
    pub ca_pem: String,
    /// The handler chain, also reached in-process by the master's own components.
    router: axum::Router,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// How long the client certificates the master issues to itself are valid (kubeadm's
/// one year); they are issued again at every start.
const OWN_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Writes `<dir>/<file>`: a kubeconfig for `user` in `groups`, with a client
/// certificate from the cluster CA (kubeadm's `admin.conf`, `controller-manager.conf`
/// and `scheduler.conf`).
fn write_kubeconfig(
    pki: &Pki,
    path: &Path,
    url: &str,
    user: &str,
    groups: &[&str],
) -> Result<(), MasterError> {
    let (cert, key) = pki.issue_client(user, groups, OWN_CERTIFICATE_LIFETIME)?;
    let kc = Kubeconfig::new(
        "tinykube",
        user,
        url,
        &pki.ca_pem,
        User::certificate(&cert, &key),
    );
    write_private(path, &kc.to_yaml())?;
    Ok(())
}

/// The join token in `path` (`K10<CA hash>::server:<secret>`), made on first start; a
/// bare secret from an older data dir, or a hash of another CA, is rewritten with this
/// CA's hash, keeping the secret.
fn join_token(path: &Path, ca_pem: &str) -> Result<JoinToken, MasterError> {
    let written = std::fs::read_to_string(path).unwrap_or_default();
    let secret = JoinToken::parse(&written).map_or_else(|_| random_token(), |t| t.secret);
    let token = JoinToken::new(ca_pem, &secret);
    if written.trim() != token.to_string() {
        write_private(path, &format!("{token}\n"))?;
    }
    Ok(token)
}

impl Master {
    pub async fn start(cfg: MasterConfig) -> Result<Self, MasterError> {
        let dir = &cfg.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| MasterError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let metrics = crate::metrics::ApiMetrics::new(cfg.metrics.clone());
        let store: Arc<dyn Store> = Arc::new(crate::store::metered::MeteredStore::new(
            Arc::new(SledStore::open(&dir.join("db"), cfg.store.clone())?),
            metrics.clone(),
        ));
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| MasterError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| MasterError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let advertise = cfg.advertise.unwrap_or(if addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            addr.ip()
        });
        let mut sans = vec![
            advertise.to_string(),
            "127.0.0.1".into(),
            "localhost".into(),
            KUBERNETES_SERVICE_IP.into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        sans.dedup();
        let pki = Pki::ensure(&dir.join("tls"), &sans)?;
        let ca_pem = pki.ca_pem.clone();
        let mut tokens = Tokens {
            node: join_token(&dir.join("node-token"), &ca_pem)?.secret,
            service_accounts: None,
        };
        let url = format!("https://{}", SocketAddr::new(advertise, addr.port()));
        // The admin is a certificate in system:masters, as kubeadm's admin.conf; the
        // controllers and the scheduler have identities of their own.
        let kubeconfig = dir.join("kubeconfig.yaml");
        write_kubeconfig(&pki, &kubeconfig, &url, ADMIN_USER, &[MASTERS])?;
        let controllers_kubeconfig = dir.join(CONTROLLER_MANAGER_KUBECONFIG);
        write_kubeconfig(&pki, &controllers_kubeconfig, &url, CONTROLLER_MANAGER, &[])?;
        let scheduler_kubeconfig = dir.join(SCHEDULER_KUBECONFIG);
        write_kubeconfig(&pki, &scheduler_kubeconfig, &url, SCHEDULER, &[])?;
        // A data dir from before certificates keeps no admin token around.
        let _ = std::fs::remove_file(dir.join("admin-token"));

        let (cleanup_tx, cleanup_rx) = tokio::sync::mpsc::unbounded_channel();
        let reg = Arc::new(Registry {
            store,
            alloc: Allocator::default().with_lb_pool(cfg.lb_pool),
            namespace_cleanup: cleanup_tx,
        });
        restore_allocations(&reg)?;
        let service_accounts = Arc::new(
            ServiceAccountTokens::new(
                &Pki::service_account_key(&dir.join("tls"))?,
                reg.clone(),
                cfg.service_account_max_token_expiration,
            )
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?,
        );
        tokens.service_accounts = Some(service_accounts.clone());
        let network = crate::bootstrap::Network {
            cluster_cidr: &cfg.cluster_cidr,
            backend: &cfg.network_backend,
        };
        crate::bootstrap::bootstrap(&reg, advertise, addr.port(), &network, &pki.ca_pem).await?;
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            registry: reg.clone(),
            tokens: tokens.clone(),
            authorizer: Arc::new(Authorizer::new(reg.clone())),
            admission: Admission {
                default_toleration_seconds: cfg.default_toleration_seconds,
            },
            advertise: SocketAddr::new(advertise, addr.port()).to_string(),
            bookmark_interval: cfg.bookmark_interval,
            kubelet_tls: pki.client_connector()?,
            pki: Arc::new(pki),
            service_accounts,
            signer: Signer {
                duration: cfg.cluster_signing_duration,
            },
            usage: Default::default(),
            metrics,
        });
        let tls = shared.pki.server_config()?;
        let rbac = shared.authorizer.rbac.clone();
        let from = rbac.load(reg.store.as_ref())?;
        shared
            .signer
            .settle_all(&reg, &shared.authorizer, &shared.pki)
            .await;
        let follow = tokio::spawn(rbac.follow(reg.store.clone(), from, cancel.clone()));
        let cleanup = tokio::spawn(registry::namespace::run_namespace_cleanup(
            reg.clone(),
            cleanup_rx,
        ));
        registry::namespace::resume_cleanup(&reg);
        let legacy_tokens = tokio::spawn(
            crate::serviceaccount::legacy::LegacyTokens {
                registry: reg.clone(),
                tokens: shared.service_accounts.clone(),
                ca_pem: shared.pki.ca_pem.clone(),
            }
            .run(cancel.clone()),
        );
        let expiry = tokio::spawn(registry::expiry::run(
            reg.clone(),
            cfg.event_ttl,
            cancel.clone(),
        ));
        let serve_cancel = cancel.clone();
        let router = crate::request::chain::router(shared);
        let serving = router.clone();
        let task = tokio::spawn(async move {
            serve(listener, tls, serving, serve_cancel).await;
            cleanup.abort();
            let _ = follow.await;
            let _ = legacy_tokens.await;
            let _ = expiry.await;
        });
        tracing::info!(%url, kubeconfig = %kubeconfig.display(), "API server listening");
        Ok(Self {
            addr,
            url,
            kubeconfig,
            controllers_kubeconfig,
            scheduler_kubeconfig,
            tokens,
            ca_pem,
            router,
            cancel,
            task,
        })
    }

    /// The API server as a tower service for a component in this process acting as
    /// `user` in `groups`: the whole handler chain (authentication from that identity,
    /// authorization, admission, the verbs), with no socket, TCP or TLS in between, as
    /// kube-apiserver's loopback client is. `kube::Client::new(service, "default")`
    /// makes a client of it.
    pub fn loopback(&self, user: &str, groups: &[&str]) -> axum::Router {
        let peer = Peer {
            identity: Some(tinykube_api::pki::Identity {
                user: user.to_string(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
            }),
            not_after: None,
            addr: None,
        };
        self.router.clone().layer(axum::Extension(peer))
    }

    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }

    /// Runs until SIGINT or SIGTERM.
    pub async fn run_until_signal(self) {
        self.run_until_signal_then(|| {}).await;
    }

    /// Runs until SIGINT or SIGTERM, calls `before_stop`, then shuts down.
    pub async fn run_until_signal_then(self, before_stop: impl FnOnce()) {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { if let Some(t) = term.as_mut() { t.recv().await; } else { std::future::pending::<()>().await } } => {}
        }
        tracing::info!("shutting down");
        before_stop();
        self.shutdown().await;
    }
}

async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: axum::Router,
    cancel: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            // Who the client certificate (verified against the cluster CA) names.
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first());
            let identity = Peer {
                identity: cert.and_then(|c| tinykube_api::pki::identity(c)),
                not_after: cert.and_then(|c| tinykube_api::pki::not_after(c)),
                addr: Some(peer.ip().to_canonical()),
            };
            let service = TowerToHyperService::new(
                tower::ServiceBuilder::new()
                    .layer(axum::Extension(identity))
                    .service(router),
            );
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = cancel.cancelled() => {}
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
}

fn restore_allocations(reg: &Registry) -> Result<(), MasterError> {
    let services = resources::find("", "services").expect("registered");
    let list = reg
        .list(services, None, &ListOptions::default())
        .map_err(|e| crate::bootstrap::BootstrapError {
            what: "service allocations".into(),
            detail: e.to_string(),
        })?;
    for svc in list["items"].as_array().into_iter().flatten() {
        reg.alloc.restore(&Held::of(svc));
    }
    Ok(())
}

/// `tinykube master`: start and serve until signalled.
pub async fn run(cfg: MasterConfig) -> Result<(), String> {
    let master = Master::start(cfg).await.map_err(|e| error_chain(&e))?;
    master.run_until_signal().await;
    Ok(())
}
