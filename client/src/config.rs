//! A kube-rs client from a kubeconfig file, as kubectl reads one.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("cannot make a client from {path}: {message}")]
    Config { path: PathBuf, message: String },
}

/// A client for the cluster, user and CA named by the kubeconfig at `path`.
pub async fn from_kubeconfig(path: &Path) -> Result<kube::Client, ClientError> {
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| ClientError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let bad = |message: String| ClientError::Config {
        path: path.to_path_buf(),
        message,
    };
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| bad(e.to_string()))
}
