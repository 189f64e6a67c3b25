//! The images a node makes from its own binary (`pause`, `toolbox`): one layer with the
//! binary and the libraries it needs, cached on disk, and the manifests around it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{RuntimeError, io_err};

use super::image::*;

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
