//! The node's images: its own (pause and toolbox, made from this binary), the tarballs
//! in `<data-dir>/images/` imported at start, what `status.images` lists, and finding a
//! container's image by its imagePullPolicy (pulling what is missing).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::runtime::image::{
    LOCAL_REGISTRY, PAUSE_IMAGE, ResolvedImage, local_images, local_layer, normalize,
};
use crate::runtime::{Runtime, RuntimeError};

/// The images a node starts with: the pause image every sandbox runs, and what
/// `status.images` reports.
pub struct NodeImages {
    pub pause: ResolvedImage,
    pub sizes: Vec<(Vec<String>, i64)>,
}

/// Makes the node's own images from `binary` (layers cached under
/// `<images_dir>/local`) and imports every tarball in `images_dir`.
pub async fn prepare(
    runtime: &Runtime,
    binary: &Path,
    images_dir: &Path,
) -> Result<NodeImages, RuntimeError> {
    let (layer, digest, size) = local_layer(binary, &images_dir.join("local"))?;
    let mut sizes = Vec::new();
    for (name, blobs) in local_images(&layer, &digest, size) {
        runtime.import(&name, &blobs).await?;
        sizes.push((vec![name], size));
    }
    import_archives(runtime, images_dir).await;
    let pause = runtime
        .resolve(PAUSE_IMAGE)
        .await?
        .ok_or_else(|| RuntimeError::Image {
            image: PAUSE_IMAGE.into(),
            message: "vanished after its import".into(),
        })?;
    Ok(NodeImages { pause, sizes })
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
pub async fn node_images(runtime: &Runtime) -> Vec<(Vec<String>, i64)> {
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

/// Finds images for containers, honouring imagePullPolicy: pulls what is missing (or
/// always, under `Always`), never pulls the node's own `tinykube.local` images.
pub struct Images {
    pub puller: crate::runtime::pull::Puller,
    /// Recently resolved images, so the pods of one Deployment do not each read the
    /// same manifest and config from containerd.
    pub cache: std::sync::Mutex<HashMap<String, (ResolvedImage, std::time::Instant)>>,
}

const IMAGE_CACHE_TTL: Duration = Duration::from_secs(30);

impl Images {
    /// The image for `reference`, or the waiting reason and message Kubernetes shows.
    pub async fn ensure(
        &self,
        rt: &Runtime,
        reference: &str,
        policy: Option<&str>,
    ) -> Result<ResolvedImage, (String, String)> {
        if reference.is_empty() {
            return Err((
                "InvalidImageName".into(),
                "the container has no image".into(),
            ));
        }
        let name = normalize(reference);
        let local = name.starts_with(&format!("{LOCAL_REGISTRY}/"));
        let pull_error = |e: RuntimeError| ("ErrImagePull".to_string(), crate::error_chain(&e));
        let policy = policy.unwrap_or(if name.ends_with(":latest") {
            "Always"
        } else {
            "IfNotPresent"
        });
        let cached = self
            .cache
            .lock()
            .expect("image cache lock")
            .get(&name)
            .filter(|(_, at)| at.elapsed() < IMAGE_CACHE_TTL)
            .map(|(i, _)| i.clone());
        if let Some(i) = cached
            && (local || policy != "Always")
        {
            return Ok(i);
        }
        let found = rt.resolve(&name).await.map_err(pull_error)?;
        if let Some(i) = &found {
            self.cache
                .lock()
                .expect("image cache lock")
                .insert(name.clone(), (i.clone(), std::time::Instant::now()));
        }
        match (found, policy) {
            (Some(i), _) if local => Ok(i),
            (Some(i), "IfNotPresent" | "Never") => Ok(i),
            (None, "Never") => Err((
                "ErrImageNeverPull".into(),
                format!("Container image \"{reference}\" is not present with pull policy of Never"),
            )),
            (None, _) if local => Err((
                "ErrImagePull".into(),
                format!("image \"{name}\" is made by the node itself and is not present"),
            )),
            (_, _) => {
                self.puller.pull(rt, &name).await.map_err(pull_error)?;
                rt.resolve(&name).await.map_err(pull_error)?.ok_or_else(|| {
                    (
                        "ErrImagePull".into(),
                        format!("image \"{name}\" vanished after its pull"),
                    )
                })
            }
        }
    }
}
