//! Image tarballs, as `docker save` (docker-archive) and OCI tools (OCI layout) write
//! them: unpacked into a scratch directory, turned into an OCI manifest, config and
//! layers, and imported like any image (what k3s does with its air-gap images).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::RuntimeError;
use super::image::{
    Blob, BlobData, DOCKER_MANIFEST, ImageBlobs, MEDIA_CONFIG, MEDIA_INDEX, MEDIA_LAYER_TAR,
    MEDIA_MANIFEST, normalize,
};

fn bad(path: &Path, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Image {
        image: path.display().to_string(),
        message: message.into(),
    }
}

fn file_digest(path: &Path) -> Result<(String, i64), RuntimeError> {
    let mut f = std::fs::File::open(path).map_err(super::io_err("open", path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0i64;
    loop {
        let n = f.read(&mut buf).map_err(super::io_err("read", path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        len += n as i64;
    }
    let hex: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((format!("sha256:{hex}"), len))
}

fn blob_file(media_type: &str, path: PathBuf) -> Result<Blob, RuntimeError> {
    let (digest, size) = file_digest(&path)?;
    Ok(Blob {
        media_type: media_type.to_string(),
        digest,
        size,
        data: BlobData::File(path),
    })
}

/// The images in tarball `archive` (named, ready to import); scratch space under `work`.
pub fn read_archive(
    archive: &Path,
    work: &Path,
) -> Result<Vec<(String, ImageBlobs)>, RuntimeError> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).map_err(super::io_err("create", work))?;
    let f = std::fs::File::open(archive).map_err(super::io_err("open", archive))?;
    let reader: Box<dyn Read> = if archive.extension().is_some_and(|e| e == "gz" || e == "tgz") {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(super::io_err("read", archive))? {
        let mut entry = entry.map_err(super::io_err("read", archive))?;
        let rel = entry
            .path()
            .map_err(super::io_err("read", archive))?
            .into_owned();
        if rel.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        }) {
            return Err(bad(
                archive,
                format!("unsafe path {} in the archive", rel.display()),
            ));
        }
        if entry.header().entry_type().is_file() {
            let dest = work.join(&rel);
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p).map_err(super::io_err("create", p))?;
            }
            let mut out = std::fs::File::create(&dest).map_err(super::io_err("create", &dest))?;
            std::io::copy(&mut entry, &mut out).map_err(super::io_err("write", &dest))?;
        }
    }
    if work.join("index.json").exists() {
        oci_layout(archive, work)
    } else if work.join("manifest.json").exists() {
        docker_archive(archive, work)
    } else {
        Err(bad(
            archive,
            "neither an OCI layout (index.json) nor a docker archive (manifest.json)",
        ))
    }
}

fn read_json(path: &Path) -> Result<Value, RuntimeError> {
    let b = std::fs::read(path).map_err(super::io_err("read", path))?;
    serde_json::from_slice(&b).map_err(|e| bad(path, format!("not JSON: {e}")))
}

fn blob_path(work: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    work.join("blobs").join(alg).join(hex)
}

/// `docker save`: manifest.json lists each image's config file, tags and layer tars.
fn docker_archive(archive: &Path, work: &Path) -> Result<Vec<(String, ImageBlobs)>, RuntimeError> {
    let manifest = read_json(&work.join("manifest.json"))?;
    let mut out = Vec::new();
    for img in manifest.as_array().into_iter().flatten() {
        let config_path = work.join(
            img["Config"]
                .as_str()
                .ok_or_else(|| bad(archive, "an image without Config"))?,
        );
        let config = blob_file(MEDIA_CONFIG, config_path.clone())?;
        let config_json = read_json(&config_path)?;
        let diff_ids = super::image::diff_ids(&config_json);
        let mut layers = Vec::new();
        for (i, l) in img["Layers"].as_array().into_iter().flatten().enumerate() {
            let path = work.join(
                l.as_str()
                    .ok_or_else(|| bad(archive, "a layer that is not a path"))?,
            );
            let layer = blob_file(MEDIA_LAYER_TAR, path)?;
            let diff_id = diff_ids
                .get(i)
                .cloned()
                .unwrap_or_else(|| layer.digest.clone());
            layers.push((layer, diff_id));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.size},
            "layers": layers.iter().map(|(l, _)| json!({"mediaType": MEDIA_LAYER_TAR, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        });
        let names: Vec<String> = img["RepoTags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(normalize))
            .collect();
        if names.is_empty() {
            return Err(bad(
                archive,
                "an image without RepoTags: tag it before saving",
            ));
        }
        for name in names {
            let blobs = ImageBlobs {
                manifest: Blob::bytes(MEDIA_MANIFEST, serde_json::to_vec(&manifest).expect("json")),
                config: config.clone(),
                layers: layers.clone(),
            };
            out.push((name, blobs));
        }
    }
    Ok(out)
}

/// OCI layout: index.json names the manifests (by `io.containerd.image.name`, or by a
/// `org.opencontainers.image.ref.name` tag), blobs live under blobs/sha256/.
fn oci_layout(archive: &Path, work: &Path) -> Result<Vec<(String, ImageBlobs)>, RuntimeError> {
    let index = read_json(&work.join("index.json"))?;
    let stem = archive
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.split('.').next().unwrap_or(n).to_string())
        .unwrap_or_else(|| "image".into());
    let mut out = Vec::new();
    for m in index["manifests"].as_array().into_iter().flatten() {
        let ann = &m["annotations"];
        let name = match (
            ann["io.containerd.image.name"].as_str(),
            ann["org.opencontainers.image.ref.name"].as_str(),
        ) {
            (Some(full), _) => normalize(full),
            (None, Some(r)) if r.contains('/') || r.contains(':') => normalize(r),
            (None, Some(tag)) => normalize(&format!("{stem}:{tag}")),
            (None, None) => normalize(&stem),
        };
        let mut digest = m["digest"]
            .as_str()
            .ok_or_else(|| bad(archive, "a manifest without digest"))?
            .to_string();
        let mut media = m["mediaType"]
            .as_str()
            .unwrap_or(MEDIA_MANIFEST)
            .to_string();
        let mut manifest = read_json(&blob_path(work, &digest))?;
        if media == MEDIA_INDEX || manifest["manifests"].is_array() {
            let arch = tinykube_api::constants::arch();
            let pick = manifest["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["platform"]["os"] == "linux" && x["platform"]["architecture"] == arch)
                .ok_or_else(|| bad(archive, format!("no linux/{arch} image in the index")))?;
            digest = pick["digest"].as_str().unwrap_or_default().to_string();
            media = pick["mediaType"]
                .as_str()
                .unwrap_or(MEDIA_MANIFEST)
                .to_string();
            manifest = read_json(&blob_path(work, &digest))?;
        }
        if media != MEDIA_MANIFEST && media != DOCKER_MANIFEST {
            return Err(bad(archive, format!("unsupported manifest type {media}")));
        }
        let config_desc = &manifest["config"];
        let config_digest = config_desc["digest"].as_str().unwrap_or_default();
        let config = blob_file(
            config_desc["mediaType"].as_str().unwrap_or(MEDIA_CONFIG),
            blob_path(work, config_digest),
        )?;
        let config_json = read_json(&blob_path(work, config_digest))?;
        let diff_ids = super::image::diff_ids(&config_json);
        let mut layers = Vec::new();
        for (i, l) in manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let d = l["digest"].as_str().unwrap_or_default();
            let layer = blob_file(
                l["mediaType"].as_str().unwrap_or(MEDIA_LAYER_TAR),
                blob_path(work, d),
            )?;
            let diff_id = diff_ids
                .get(i)
                .cloned()
                .ok_or_else(|| bad(archive, "the config lists fewer diff_ids than layers"))?;
            layers.push((layer, diff_id));
        }
        let manifest_blob = blob_file(&media, blob_path(work, &digest))?;
        out.push((
            name,
            ImageBlobs {
                manifest: manifest_blob,
                config,
                layers,
            },
        ));
    }
    Ok(out)
}
