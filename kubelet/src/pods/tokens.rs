//! Service-account tokens in pods' projected volumes, as the kubelet's token manager
//! keeps them: each requested from the API server (TokenRequest, bound to the pod),
//! written into the volume, and requested again once 80% of its lifetime has passed,
//! the file replaced in place so the running container reads the new one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use tokio_util::sync::CancellationToken;

use super::PodContext;

/// Why a token could not be had or written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

/// What a token file holds a token for, and how long the current one lasts.
#[derive(Debug, Clone)]
pub struct TokenFile {
    pub namespace: String,
    pub account: String,
    pub pod: String,
    pub pod_uid: String,
    pub audience: Option<String>,
    pub seconds: i64,
    pub mode: u32,
    issued: i64,
    expires: i64,
}

impl TokenFile {
    pub fn new(
        namespace: &str,
        account: &str,
        pod: &str,
        pod_uid: &str,
        audience: Option<String>,
        seconds: i64,
        mode: u32,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            account: account.into(),
            pod: pod.into(),
            pod_uid: pod_uid.into(),
            audience,
            seconds,
            mode,
            issued: 0,
            expires: 0,
        }
    }

    /// Past 80% of the current token's life.
    fn due(&self, now: i64) -> bool {
        now >= self.issued + (self.expires - self.issued) * 4 / 5
    }
}

/// The token files of this node's pods, by path.
#[derive(Default)]
pub struct TokenFiles(Mutex<HashMap<PathBuf, TokenFile>>);

/// Replaces `path` whole: written beside it, then renamed over it.
pub fn write_atomically(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_file_name(format!(
        "..{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::write(&tmp, data)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

/// Asks for a token for `f`; returns it, setting when it was issued and expires.
async fn request(client: &kube::Client, f: &mut TokenFile) -> Result<String, TokenError> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &f.namespace);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: f.audience.iter().cloned().collect(),
            expiration_seconds: Some(f.seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(f.pod.clone()),
                uid: Some(f.pod_uid.clone()),
            }),
        },
        ..Default::default()
    };
    let got = api
        .create_token_request(&f.account, &PostParams::default(), &req)
        .await
        .map_err(|e| {
            TokenError(format!(
                "cannot get a token for service account {}/{}: {e}",
                f.namespace, f.account
            ))
        })?;
    let status = got.status.ok_or_else(|| {
        TokenError(format!(
            "the token request for {}/{} was answered without a token",
            f.namespace, f.account
        ))
    })?;
    let now = jiff::Timestamp::now().as_second();
    f.issued = now;
    f.expires = status.expiration_timestamp.0.as_second();
    Ok(status.token)
}

impl TokenFiles {
    /// Writes a fresh token to `path` and keeps it fresh from then on.
    pub async fn write(
        &self,
        client: &kube::Client,
        path: &Path,
        mut f: TokenFile,
    ) -> Result<(), TokenError> {
        let token = request(client, &mut f).await?;
        write_atomically(path, token.as_bytes(), f.mode)
            .map_err(|e| TokenError(format!("cannot write {}: {e}", path.display())))?;
        self.0
            .lock()
            .expect("not poisoned")
            .insert(path.to_path_buf(), f);
        Ok(())
    }

    /// Renews the tokens that are due; forgets the files whose pod is gone.
    async fn renew_due(&self, client: &kube::Client) {
        let now = jiff::Timestamp::now().as_second();
        let due: Vec<(PathBuf, TokenFile)> = {
            let mut files = self.0.lock().expect("not poisoned");
            files.retain(|p, _| p.parent().is_some_and(Path::is_dir));
            files
                .iter()
                .filter(|(_, f)| f.due(now))
                .map(|(p, f)| (p.clone(), f.clone()))
                .collect()
        };
        for (path, f) in due {
            match self.write(client, &path, f).await {
                Ok(()) => tracing::debug!(file = %path.display(), "service account token renewed"),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e.0, "cannot renew a service account token")
                }
            }
        }
    }
}

/// Renews due tokens every second until `cancel`.
pub async fn run(ctx: Arc<PodContext>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => ctx.tokens.renew_due(&ctx.client).await,
        }
    }
}
