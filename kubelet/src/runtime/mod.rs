//! containerd, spoken to over gRPC: one containerd namespace per node, images
//! (`image`: names and resolving; `import`: content and unpacking; `local`: the node's
//! own images; `archive` and `pull`: tarballs and registries), the OCI spec of
//! sandboxes and containers (`spec`), containers and their tasks (`container`),
//! clearing a namespace (`purge`), and a containerd of the node's own (`daemon`).
//! Nothing here knows what a Pod is.

pub mod archive;
pub mod container;
pub mod daemon;
pub mod image;
mod import;
mod local;
pub mod pull;
pub mod purge;
pub mod spec;

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::Namespace;
use containerd_client::services::v1::{CreateNamespaceRequest, GetNamespaceRequest};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};

pub use containerd_client::services::v1 as api;
pub use containerd_client::services::v1::snapshots as snapshots_api;

/// containerd's overlay snapshotter, the one Kubernetes nodes use.
pub const SNAPSHOTTER: &str = "overlayfs";
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("containerd is not answering on {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: containerd_client::tonic::transport::Error,
    },
    /// The gRPC status is kept, not chained: its text repeats the message.
    #[error("containerd failed to {what}: {}", .status.message())]
    Call { what: String, status: Status },
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    #[error("failed to {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// True if containerd said the object is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::Call { status, .. } if status.code() == Code::NotFound)
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, RuntimeError::Call { status, .. } if status.code() == Code::AlreadyExists)
    }
}

/// Wraps a gRPC error with what was being done.
pub(crate) fn call(what: impl Into<String>) -> impl FnOnce(Status) -> RuntimeError {
    let what = what.into();
    move |status| RuntimeError::Call { what, status }
}

pub(crate) fn io_err(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::Io { what, path, source }
}

/// A client of one containerd, scoped to one containerd namespace.
#[derive(Clone)]
pub struct Runtime {
    channel: Channel,
    namespace: String,
}

impl Runtime {
    /// Connects to the containerd on `socket`, waiting up to `wait` for it to answer.
    pub async fn connect(
        socket: &Path,
        namespace: &str,
        wait: Duration,
    ) -> Result<Self, RuntimeError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match containerd_client::connect(socket).await {
                Ok(channel) => {
                    let rt = Self {
                        channel,
                        namespace: namespace.to_string(),
                    };
                    match rt.version().await {
                        Ok(_) => return Ok(rt),
                        Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                        Err(_) => {}
                    }
                }
                Err(source) if tokio::time::Instant::now() >= deadline => {
                    return Err(RuntimeError::Connect {
                        path: socket.to_path_buf(),
                        source,
                    });
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A request carrying this runtime's containerd namespace.
    pub(crate) fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert(
            "containerd-namespace",
            self.namespace
                .parse()
                .expect("namespace names are valid header values"),
        );
        r
    }

    /// A request in this namespace that also holds lease `lease` (what keeps content
    /// and snapshots from garbage collection while an image is put together).
    pub(crate) fn leased<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut r = self.req(msg);
        r.metadata_mut().insert(
            "containerd-lease",
            lease.parse().expect("lease ids are valid header values"),
        );
        r
    }

    /// containerd's version string, e.g. `1.6.20~ds1`.
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let mut c =
            containerd_client::services::v1::version_client::VersionClient::new(self.channel());
        let v = c.version(()).await.map_err(call("report its version"))?;
        Ok(v.into_inner().version)
    }

    /// Creates this runtime's containerd namespace if it does not exist yet.
    pub async fn ensure_namespace(&self) -> Result<(), RuntimeError> {
        let mut c = containerd_client::services::v1::namespaces_client::NamespacesClient::new(
            self.channel(),
        );
        let got = c
            .get(GetNamespaceRequest {
                name: self.namespace.clone(),
            })
            .await;
        match got {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => {
                let r = c
                    .create(CreateNamespaceRequest {
                        namespace: Some(Namespace {
                            name: self.namespace.clone(),
                            labels: Default::default(),
                        }),
                    })
                    .await;
                match r {
                    Ok(_) => Ok(()),
                    Err(s) if s.code() == Code::AlreadyExists => Ok(()),
                    Err(s) => Err(call(format!("create namespace {}", self.namespace))(s)),
                }
            }
            Err(s) => Err(call(format!("look up namespace {}", self.namespace))(s)),
        }
    }
}
