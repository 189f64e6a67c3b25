//! Images into containerd without `ctr`: a lease, blobs written through the content
//! service, the image record, and layers unpacked into overlayfs snapshots by chain ID.

use std::collections::HashMap;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, DeleteRequest as DeleteLeaseRequest, Image, InfoRequest,
    ReadContentRequest, UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::services::v1::{CreateRequest as CreateLeaseRequest, Info as ContentInfo};
use containerd_client::tonic::Code;
use containerd_client::types::Descriptor;
use tokio::io::AsyncReadExt;

use super::{Runtime, RuntimeError, SNAPSHOTTER, call};

use super::image::*;

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
