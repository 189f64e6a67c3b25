//! Images in containerd: names and digests, the blobs of an image, and resolving an
//! image for a container. Importing them is in `import`, the node's own images in
//! `local`.

pub use super::import::random_id;
pub use super::local::{local_images, local_layer};

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetImageRequest, ListImagesRequest};
use containerd_client::tonic::Code;
use containerd_client::types::Descriptor;
use serde_json::Value;

use super::{Runtime, RuntimeError, call};

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Images the node makes from its own binary; there is no registry behind this name,
/// so they are never pulled whatever the pull policy says.
pub const LOCAL_REGISTRY: &str = "tinykube.local";
pub const PAUSE_IMAGE: &str = "tinykube.local/pause:latest";
pub const TOOLBOX_IMAGE: &str = "tinykube.local/toolbox:latest";

pub(crate) const CHUNK: usize = 1 << 20;

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
    )
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The uncompressed layer digests an image config lists (`rootfs.diff_ids`).
pub fn diff_ids(config: &Value) -> Vec<String> {
    config["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(String::from))
        .collect()
}

/// The chain IDs of a stack of layers (OCI image spec: the identity of a snapshot).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => digest_of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The repository part of a reference (`reg:5000/app:v1` -> `reg:5000/app`).
pub fn repository(reference: &str) -> &str {
    if let Some(i) = reference.find('@') {
        return &reference[..i];
    }
    let last = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last..].rfind(':') {
        Some(i) => &reference[..last + i],
        None => reference,
    }
}

/// Docker's reference normalisation: `nginx` is `docker.io/library/nginx:latest`.
pub fn normalize(image: &str) -> String {
    let (name, suffix) = match image.find('@') {
        Some(i) => (&image[..i], image[i..].to_string()),
        None => {
            let last = image.rsplit('/').next().unwrap_or(image);
            match last.rfind(':') {
                Some(i) => {
                    let cut = image.len() - last.len() + i;
                    (&image[..cut], image[cut..].to_string())
                }
                None => (image, ":latest".to_string()),
            }
        }
    };
    let first = name.split('/').next().unwrap_or(name);
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{full}{suffix}")
}

/// Where a blob's bytes come from.
#[derive(Clone)]
pub enum BlobData {
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// One blob to store: its descriptor and bytes.
#[derive(Clone)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    pub data: BlobData,
}

impl Blob {
    pub fn bytes(media_type: &str, data: Vec<u8>) -> Self {
        Self {
            media_type: media_type.to_string(),
            digest: digest_of(&data),
            size: data.len() as i64,
            data: BlobData::Bytes(data),
        }
    }

    pub(crate) fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: HashMap::new(),
        }
    }
}

/// An image to import: a manifest, its config and its layers (with their uncompressed
/// digests).
#[derive(Clone)]
pub struct ImageBlobs {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<(Blob, String)>,
}

/// What a container needs from its image.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub name: String,
    pub manifest_digest: String,
    pub config: Value,
    /// Chain ID of the top layer: the parent snapshot of a container's rootfs.
    pub top_chain_id: String,
    pub size: i64,
}

impl ResolvedImage {
    fn strings(&self, key: &str) -> Vec<String> {
        self.config["config"][key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn entrypoint(&self) -> Vec<String> {
        self.strings("Entrypoint")
    }
    pub fn cmd(&self) -> Vec<String> {
        self.strings("Cmd")
    }
    pub fn env(&self) -> Vec<String> {
        self.strings("Env")
    }
    pub fn working_dir(&self) -> Option<String> {
        self.config["config"]["WorkingDir"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from)
    }
    pub fn user(&self) -> Option<String> {
        self.config["config"]["User"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from)
    }
}

impl Runtime {
    /// The image recorded as `name` (already normalised), or None if there is none.
    pub async fn resolve(&self, name: &str) -> Result<Option<ResolvedImage>, RuntimeError> {
        let mut c = ImagesClient::new(self.channel());
        let image = match c
            .get(self.req(GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(r) => r.into_inner().image,
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(call(format!("look up image {name}"))(s)),
        };
        let Some(target) = image.and_then(|i| i.target) else {
            return Ok(None);
        };
        let bad = |message: String| RuntimeError::Image {
            image: name.to_string(),
            message,
        };
        let mut manifest_digest = target.digest.clone();
        let mut manifest: Value = serde_json::from_slice(&self.read_blob(&manifest_digest).await?)
            .map_err(|e| bad(format!("manifest is not JSON: {e}")))?;
        if target.media_type == MEDIA_INDEX
            || target.media_type == DOCKER_LIST
            || manifest["manifests"].is_array()
        {
            let pick = manifest["manifests"]
                .as_array()
                .and_then(|ms| {
                    ms.iter().find(|m| {
                        m["platform"]["os"] == "linux"
                            && m["platform"]["architecture"]
                                == std::env::consts::ARCH
                                    .replace("x86_64", "amd64")
                                    .replace("aarch64", "arm64")
                    })
                })
                .and_then(|m| m["digest"].as_str())
                .ok_or_else(|| bad("no manifest for this platform".into()))?
                .to_string();
            manifest_digest = pick;
            manifest = serde_json::from_slice(&self.read_blob(&manifest_digest).await?)
                .map_err(|e| bad(format!("manifest is not JSON: {e}")))?;
        }
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| bad("manifest has no config".into()))?;
        let config: Value = serde_json::from_slice(&self.read_blob(config_digest).await?)
            .map_err(|e| bad(format!("config is not JSON: {e}")))?;
        let diff_ids = diff_ids(&config);
        let top_chain_id = chain_ids(&diff_ids)
            .pop()
            .ok_or_else(|| bad("image has no layers".into()))?;
        let size = manifest["layers"]
            .as_array()
            .map(|ls| ls.iter().filter_map(|l| l["size"].as_i64()).sum())
            .unwrap_or(0);
        Ok(Some(ResolvedImage {
            name: name.to_string(),
            manifest_digest,
            config,
            top_chain_id,
            size,
        }))
    }

    /// Names of the images in this namespace.
    pub async fn list_images(&self) -> Result<Vec<String>, RuntimeError> {
        let mut c = ImagesClient::new(self.channel());
        let r = c
            .list(self.req(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(call("list images"))?;
        Ok(r.into_inner().images.into_iter().map(|i| i.name).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised_like_docker() {
        assert_eq!(normalize("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(normalize("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(normalize("bitnami/redis"), "docker.io/bitnami/redis:latest");
        assert_eq!(normalize("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest");
        assert_eq!(normalize("localhost/app:v2"), "localhost/app:v2");
        assert_eq!(normalize("tinykube.local/toolbox"), TOOLBOX_IMAGE);
        assert_eq!(
            normalize("reg:5000/a/b@sha256:00"),
            "reg:5000/a/b@sha256:00"
        );
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], digest_of(b"sha256:a sha256:b"));
    }
}
