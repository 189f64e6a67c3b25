//! Pulling images from registries (oci-client): the manifest (the platform's one from
//! an index), the config and the layers are stored exactly as received, then imported
//! and unpacked like any image.

use std::path::PathBuf;
use std::str::FromStr;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;

use super::image::{
    Blob, BlobData, DOCKER_LIST, DOCKER_MANIFEST, ImageBlobs, MEDIA_INDEX, MEDIA_MANIFEST,
};
use super::{Runtime, RuntimeError};

const ACCEPTED: [&str; 4] = [MEDIA_MANIFEST, DOCKER_MANIFEST, MEDIA_INDEX, DOCKER_LIST];

/// A registry client; registries named in `insecure` are spoken to over plain HTTP.
pub struct Puller {
    client: Client,
    dir: PathBuf,
    /// One pull at a time: pods of one Deployment ask for the same image at once.
    lock: tokio::sync::Mutex<()>,
}

fn fail(image: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Image {
        image: image.to_string(),
        message: format!("failed to pull and unpack image \"{image}\": {e}"),
    }
}

impl Puller {
    pub fn new(insecure: Vec<String>, dir: PathBuf) -> Self {
        let protocol = if insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(insecure)
        };
        let client = Client::new(ClientConfig {
            protocol,
            ..Default::default()
        });
        Self {
            client,
            dir,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Pulls `name` (normalised, e.g. `docker.io/library/nginx:latest`) into `rt`.
    pub async fn pull(&self, rt: &Runtime, name: &str) -> Result<(), RuntimeError> {
        let _one = self.lock.lock().await;
        let reference = Reference::from_str(name).map_err(|e| fail(name, e))?;
        let auth = RegistryAuth::Anonymous;
        let (mut raw, mut digest) = self
            .client
            .pull_manifest_raw(&reference, &auth, &ACCEPTED)
            .await
            .map_err(|e| fail(name, e))?;
        let mut manifest: Value = serde_json::from_slice(&raw).map_err(|e| fail(name, e))?;
        if manifest["manifests"].is_array() {
            let arch = tinykube_api::constants::arch();
            let pick = manifest["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
                .and_then(|m| m["digest"].as_str())
                .ok_or_else(|| fail(name, format!("no linux/{arch} image in the index")))?
                .to_string();
            let by_digest = Reference::with_digest(
                reference.registry().to_string(),
                reference.repository().to_string(),
                pick,
            );
            (raw, digest) = self
                .client
                .pull_manifest_raw(&by_digest, &auth, &ACCEPTED)
                .await
                .map_err(|e| fail(name, e))?;
            manifest = serde_json::from_slice(&raw).map_err(|e| fail(name, e))?;
        }
        let media = manifest["mediaType"]
            .as_str()
            .unwrap_or(MEDIA_MANIFEST)
            .to_string();
        let desc = |v: &Value| -> Result<oci_client::manifest::OciDescriptor, RuntimeError> {
            serde_json::from_value(v.clone())
                .map_err(|e| fail(name, format!("bad descriptor: {e}")))
        };
        let config_desc = desc(&manifest["config"])?;
        let mut config = Vec::new();
        self.client
            .pull_blob(&reference, &config_desc, &mut config)
            .await
            .map_err(|e| fail(name, e))?;
        let config_json: Value = serde_json::from_slice(&config).map_err(|e| fail(name, e))?;
        let diff_ids = super::image::diff_ids(&config_json);
        std::fs::create_dir_all(&self.dir).map_err(super::io_err("create", &self.dir))?;
        let mut layers = Vec::new();
        let mut files = Vec::new();
        let result = async {
            for (i, l) in manifest["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let d = desc(l)?;
                let path = self.dir.join(d.digest.replace(':', "-"));
                files.push(path.clone());
                let out = tokio::fs::File::create(&path)
                    .await
                    .map_err(super::io_err("create", &path))?;
                self.client
                    .pull_blob(&reference, &d, out)
                    .await
                    .map_err(|e| fail(name, e))?;
                let diff_id = diff_ids
                    .get(i)
                    .cloned()
                    .ok_or_else(|| fail(name, "the config lists fewer diff_ids than layers"))?;
                layers.push((
                    Blob {
                        media_type: d.media_type.clone(),
                        digest: d.digest.clone(),
                        size: d.size,
                        data: BlobData::File(path),
                    },
                    diff_id,
                ));
            }
            let blobs = ImageBlobs {
                manifest: Blob {
                    media_type: media.clone(),
                    digest: digest.clone(),
                    size: raw.len() as i64,
                    data: BlobData::Bytes(raw.to_vec()),
                },
                config: Blob {
                    media_type: config_desc.media_type.clone(),
                    digest: config_desc.digest.clone(),
                    size: config.len() as i64,
                    data: BlobData::Bytes(config.clone()),
                },
                layers: std::mem::take(&mut layers),
            };
            rt.import(name, &blobs).await
        }
        .await;
        for f in files {
            let _ = std::fs::remove_file(f);
        }
        result
    }
}
