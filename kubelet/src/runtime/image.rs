//! Images in containerd without `ctr`: blobs written through the content service,
//! image records, layers unpacked into overlayfs snapshots by chain ID; the images a
//! node makes from its own binary (`pause`, `toolbox`); resolving an image for a
//! container.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, DeleteRequest as DeleteLeaseRequest, GetImageRequest, Image,
    InfoRequest, ListImagesRequest, ReadContentRequest, UpdateImageRequest, UpdateRequest,
    WriteAction, WriteContentRequest,
};
use containerd_client::services::v1::{CreateRequest as CreateLeaseRequest, Info as ContentInfo};
use containerd_client::tonic::Code;
use containerd_client::types::Descriptor;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use super::{Runtime, RuntimeError, SNAPSHOTTER, call, io_err};

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

const CHUNK: usize = 1 << 20;

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
    )
}

fn hex(b: &[u8]) -> String {
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

    fn descriptor(&self) -> Descriptor {
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
    pub(crate) async fn lease(&self) -> Result<String, RuntimeError> {
        let id = format!("tinykube-{}", uuid_like());
        let mut c = LeasesClient::new(self.channel());
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire_in_hour())]);
        c.create(self.req(CreateLeaseRequest {
            id: id.clone(),
            labels,
        }))
        .await
        .map_err(call("take a lease"))?;
        Ok(id)
    }

    pub(crate) async fn drop_lease(&self, id: &str) {
        let mut c = LeasesClient::new(self.channel());
        let _ = c
            .delete(self.req(DeleteLeaseRequest {
                id: id.to_string(),
                sync: false,
            }))
            .await;
    }

    /// Whether the content store of this namespace has `digest`.
    pub async fn has_content(&self, digest: &str) -> Result<bool, RuntimeError> {
        let mut c = ContentClient::new(self.channel());
        match c
            .info(self.req(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(call(format!("look up content {digest}"))(s)),
        }
    }

    /// Stores one blob (a no-op if it is there) and sets its labels.
    async fn write_blob(
        &self,
        lease: &str,
        blob: &Blob,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        if !self.has_content(&blob.digest).await? {
            let stream = write_requests(blob, labels.clone());
            let mut c = ContentClient::new(self.channel());
            let res = match c.write(self.leased(stream, lease)).await {
                Ok(r) => {
                    let mut answers = r.into_inner();
                    loop {
                        match answers.message().await {
                            Ok(Some(_)) => {}
                            Ok(None) => break Ok(()),
                            Err(s) => break Err(s),
                        }
                    }
                }
                Err(s) => Err(s),
            };
            match res {
                Ok(()) => {}
                Err(s) if s.code() == Code::AlreadyExists => {}
                Err(s) => return Err(call(format!("store blob {}", blob.digest))(s)),
            }
        }
        if !labels.is_empty() {
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            let mut c = ContentClient::new(self.channel());
            c.update(self.req(UpdateRequest {
                info: Some(ContentInfo {
                    digest: blob.digest.clone(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(call(format!("label blob {}", blob.digest)))?;
        }
        Ok(())
    }

    /// Reads a whole blob from the content store.
    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
        let mut c = ContentClient::new(self.channel());
        let mut s = c
            .read(self.req(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(call(format!("read blob {digest}")))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = s
            .message()
            .await
            .map_err(call(format!("read blob {digest}")))?
        {
            out.extend_from_slice(&m.data);
        }
        Ok(out)
    }

    /// Stores an image's blobs, records it under `name` and unpacks its layers.
    pub async fn import(&self, name: &str, blobs: &ImageBlobs) -> Result<(), RuntimeError> {
        let lease = self.lease().await?;
        let r = self.import_leased(name, blobs, &lease).await;
        self.drop_lease(&lease).await;
        r
    }

    async fn import_leased(
        &self,
        name: &str,
        blobs: &ImageBlobs,
        lease: &str,
    ) -> Result<(), RuntimeError> {
        let diff_ids: Vec<String> = blobs.layers.iter().map(|(_, d)| d.clone()).collect();
        let chains = chain_ids(&diff_ids);
        for (layer, diff_id) in &blobs.layers {
            let labels =
                HashMap::from([("containerd.io/uncompressed".to_string(), diff_id.clone())]);
            self.write_blob(lease, layer, labels).await?;
        }
        let mut config_labels = HashMap::new();
        if let Some(top) = chains.last() {
            config_labels.insert(
                format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
                top.clone(),
            );
        }
        self.write_blob(lease, &blobs.config, config_labels).await?;
        let mut manifest_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            blobs.config.digest.clone(),
        )]);
        for (i, (layer, _)) in blobs.layers.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                layer.digest.clone(),
            );
        }
        self.write_blob(lease, &blobs.manifest, manifest_labels)
            .await?;
        self.unpack(lease, &blobs.layers, &chains).await?;
        self.record_image(name, blobs.manifest.descriptor()).await
    }

    async fn record_image(&self, name: &str, target: Descriptor) -> Result<(), RuntimeError> {
        let image = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let mut c = ImagesClient::new(self.channel());
        match c
            .create(self.req(CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => c
                .update(self.req(UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                }))
                .await
                .map(|_| ())
                .map_err(call(format!("update image {name}"))),
            Err(s) => Err(call(format!("create image {name}"))(s)),
        }
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool, RuntimeError> {
        let mut c = SnapshotsClient::new(self.channel());
        match c
            .stat(self.req(StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(call(format!("look up snapshot {key}"))(s)),
        }
    }

    async fn unpack(
        &self,
        lease: &str,
        layers: &[(Blob, String)],
        chains: &[String],
    ) -> Result<(), RuntimeError> {
        for (i, ((layer, diff_id), chain)) in layers.iter().zip(chains).enumerate() {
            if self.snapshot_exists(chain).await? {
                continue;
            }
            let parent = if i == 0 {
                String::new()
            } else {
                chains[i - 1].clone()
            };
            let key = format!("extract-{}-{chain}", uuid_like());
            let mut snaps = SnapshotsClient::new(self.channel());
            let mounts = snaps
                .prepare(self.leased(
                    PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: key.clone(),
                        parent,
                        labels: HashMap::new(),
                    },
                    lease,
                ))
                .await
                .map_err(call(format!(
                    "prepare a snapshot for layer {}",
                    layer.digest
                )))?
                .into_inner()
                .mounts;
            let mut diff = DiffClient::new(self.channel());
            let applied = diff
                .apply(self.leased(
                    ApplyRequest {
                        diff: Some(layer.descriptor()),
                        mounts,
                        payloads: HashMap::new(),
                        sync_fs: false,
                    },
                    lease,
                ))
                .await
                .map_err(call(format!("apply layer {}", layer.digest)));
            let applied = match applied {
                Ok(a) => a.into_inner().applied.map(|d| d.digest).unwrap_or_default(),
                Err(e) => {
                    self.remove_snapshot(&key).await;
                    return Err(e);
                }
            };
            if &applied != diff_id {
                self.remove_snapshot(&key).await;
                return Err(RuntimeError::Image {
                    image: layer.digest.clone(),
                    message: format!("layer unpacked to {applied}, the config says {diff_id}"),
                });
            }
            let committed = snaps
                .commit(self.leased(
                    CommitSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        name: chain.clone(),
                        key: key.clone(),
                        labels: HashMap::new(),
                    },
                    lease,
                ))
                .await;
            match committed {
                Ok(_) => {}
                Err(s) if s.code() == Code::AlreadyExists => self.remove_snapshot(&key).await,
                Err(s) => {
                    self.remove_snapshot(&key).await;
                    return Err(call(format!("commit layer {}", layer.digest))(s));
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn remove_snapshot(&self, key: &str) {
        let mut c = SnapshotsClient::new(self.channel());
        let _ = c
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.to_string(),
            }))
            .await;
    }

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

/// The requests of one content write: the blob in 1 MiB chunks, then the commit with
/// its labels. A task feeds them, so a file is streamed rather than held in memory.
fn write_requests(
    blob: &Blob,
    labels: HashMap<String, String>,
) -> tokio_stream::wrappers::ReceiverStream<WriteContentRequest> {
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
    let reference = format!("tinykube-{}", blob.digest);
    let (total, expected) = (blob.size, blob.digest.clone());
    let source = match &blob.data {
        BlobData::Bytes(b) => Ok(b.clone()),
        BlobData::File(p) => Err(p.clone()),
    };
    tokio::spawn(async move {
        let req = |action: WriteAction,
                   offset: i64,
                   data: Vec<u8>,
                   labels: HashMap<String, String>| WriteContentRequest {
            action: action as i32,
            r#ref: reference.clone(),
            total,
            expected: expected.clone(),
            offset,
            data,
            labels,
        };
        let mut offset = 0i64;
        match source {
            Ok(bytes) => {
                for chunk in bytes.chunks(CHUNK) {
                    if tx
                        .send(req(
                            WriteAction::Write,
                            offset,
                            chunk.to_vec(),
                            HashMap::new(),
                        ))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    offset += chunk.len() as i64;
                }
            }
            Err(path) => {
                let Ok(mut f) = tokio::fs::File::open(&path).await else {
                    return;
                };
                loop {
                    let mut buf = vec![0u8; CHUNK];
                    let n = match f.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf.truncate(n);
                    if tx
                        .send(req(WriteAction::Write, offset, buf, HashMap::new()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    offset += n as i64;
                }
            }
        }
        let _ = tx
            .send(req(WriteAction::Commit, offset, Vec::new(), labels))
            .await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn expire_in_hour() -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A random hex id (for leases, temporary snapshot keys, exec sessions).
pub fn random_id() -> String {
    uuid_like()
}

pub(crate) fn uuid_like() -> String {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("system randomness");
    hex(&b)
}

/// The one layer of the node's own images: the tinykube binary (plus the shared
/// libraries it loads, when it is not static) and the directories a root filesystem
/// needs. Cached under `dir`, keyed by the binary's identity, so a restart is cheap.
pub fn local_layer(binary: &Path, dir: &Path) -> Result<(PathBuf, String, i64), RuntimeError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let meta = std::fs::metadata(binary).map_err(io_err("stat", binary))?;
    let key = format!(
        "{}:{}:{}:{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000
    );
    let tar_path = dir.join("layer.tar");
    let key_path = dir.join("layer.key");
    if let Ok(saved) = std::fs::read_to_string(&key_path)
        && let Some((k, digest)) = saved.trim().split_once(' ')
        && k == key
        && let Ok(m) = std::fs::metadata(&tar_path)
    {
        return Ok((tar_path, digest.to_string(), m.len() as i64));
    }
    let tmp = dir.join("layer.tar.tmp");
    let file = std::fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    let hashing = HashingWriter {
        inner: std::io::BufWriter::new(file),
        ctx: ring::digest::Context::new(&ring::digest::SHA256),
        len: 0,
    };
    let mut tar = tar::Builder::new(hashing);
    tar.mode(tar::HeaderMode::Deterministic);
    let add = |tar: &mut tar::Builder<HashingWriter>,
               path: &str,
               data: &[u8],
               mode: u32|
     -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, data)
    };
    let dirs =
        |tar: &mut tar::Builder<HashingWriter>, path: &str, mode: u32| -> std::io::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(mode);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut h, path, std::io::empty())
        };
    let build = (|| -> std::io::Result<()> {
        for d in ["dev", "proc", "sys", "etc", "var", "var/run", "run", "root"] {
            dirs(&mut tar, d, 0o755)?;
        }
        dirs(&mut tar, "tmp", 0o1777)?;
        add(&mut tar, "etc/passwd", b"root:x:0:0:root:/root:/tinykube\nnobody:x:65534:65534:nobody:/nonexistent:/tinykube\n", 0o644)?;
        add(
            &mut tar,
            "etc/group",
            b"root:x:0:\nnogroup:x:65534:\n",
            0o644,
        )?;
        for lib in shared_libraries(binary) {
            let rel = lib
                .strip_prefix("/")
                .unwrap_or(&lib)
                .to_string_lossy()
                .to_string();
            let parent = Path::new(&rel)
                .parent()
                .map(|p| p.to_string_lossy().to_string());
            if let Some(p) = parent.filter(|p| !p.is_empty()) {
                let mut acc = String::new();
                for part in p.split('/') {
                    acc = if acc.is_empty() {
                        part.to_string()
                    } else {
                        format!("{acc}/{part}")
                    };
                    dirs(&mut tar, &acc, 0o755)?;
                }
            }
            add(&mut tar, &rel, &std::fs::read(&lib)?, 0o755)?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(meta.len());
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, "tinykube", std::fs::File::open(binary)?)?;
        Ok(())
    })();
    build.map_err(io_err("write", &tmp))?;
    let mut hashing = tar.into_inner().map_err(io_err("finish", &tmp))?;
    hashing.inner.flush().map_err(io_err("flush", &tmp))?;
    let digest = format!("sha256:{}", hex(hashing.ctx.finish().as_ref()));
    let len = hashing.len as i64;
    std::fs::rename(&tmp, &tar_path).map_err(io_err("rename", &tmp))?;
    std::fs::write(&key_path, format!("{key} {digest}\n")).map_err(io_err("write", &key_path))?;
    Ok((tar_path, digest, len))
}

struct HashingWriter {
    inner: std::io::BufWriter<std::fs::File>,
    ctx: ring::digest::Context,
    len: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The shared libraries (and loader) a dynamically linked binary needs, as `ldd` lists
/// them; none for a static binary.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let Ok(out) = std::process::Command::new("ldd").arg(binary).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim().split(' ').next()?,
                None => l.split(' ').next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The pause and toolbox images, both over the one local layer.
pub fn local_images(
    layer: &Path,
    layer_digest: &str,
    layer_size: i64,
) -> Vec<(String, ImageBlobs)> {
    let image = |entrypoint: Value, cmd: Value, ports: Value| {
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": {
                "Entrypoint": entrypoint,
                "Cmd": cmd,
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "WorkingDir": "/",
                "ExposedPorts": ports,
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        let config = Blob::bytes(MEDIA_CONFIG, serde_json::to_vec(&config).expect("json"));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.size},
            "layers": [{"mediaType": MEDIA_LAYER_TAR, "digest": layer_digest, "size": layer_size}],
        });
        let manifest = Blob::bytes(MEDIA_MANIFEST, serde_json::to_vec(&manifest).expect("json"));
        let layer = Blob {
            media_type: MEDIA_LAYER_TAR.into(),
            digest: layer_digest.to_string(),
            size: layer_size,
            data: BlobData::File(layer.to_path_buf()),
        };
        ImageBlobs {
            manifest,
            config,
            layers: vec![(layer, layer_digest.to_string())],
        }
    };
    vec![
        (
            PAUSE_IMAGE.to_string(),
            image(json!(["/tinykube", "pause"]), Value::Null, json!({})),
        ),
        (
            TOOLBOX_IMAGE.to_string(),
            image(
                json!(["/tinykube", "toolbox"]),
                json!(["serve"]),
                json!({"8080/tcp": {}}),
            ),
        ),
    ]
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
