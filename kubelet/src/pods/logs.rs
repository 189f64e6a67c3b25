//! Where a pod's files and container logs live on the node, and log rotation.

use std::path::{Path, PathBuf};

/// The pod's own directory: hosts, hostname, resolv.conf, volumes, logs.
pub fn pod_dir(pods_dir: &Path, uid: &str) -> PathBuf {
    pods_dir.join(uid)
}

/// The log of one attempt of a container: `<pods>/<uid>/logs/<container>/<attempt>.log`.
pub fn log_path(pods_dir: &Path, uid: &str, container: &str, attempt: u32) -> PathBuf {
    pod_dir(pods_dir, uid)
        .join("logs")
        .join(container)
        .join(format!("{attempt}.log"))
}

/// Container logs are rotated past this size (Kubernetes' containerLogMaxSize).
pub const LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// Rotates every container log under `pods_dir` larger than `max`: its content moves to
/// `<attempt>.log.1` (replacing an older one) and the file is truncated in place, since
/// the shim keeps appending to the same open file.
pub fn rotate_logs(pods_dir: &Path, max: u64) -> usize {
    let mut rotated = 0;
    let pods = std::fs::read_dir(pods_dir).into_iter().flatten().flatten();
    for pod in pods {
        let containers = std::fs::read_dir(pod.path().join("logs"))
            .into_iter()
            .flatten()
            .flatten();
        for c in containers {
            for f in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
                let p = f.path();
                if p.extension().is_none_or(|e| e != "log")
                    || f.metadata().map(|m| m.len()).unwrap_or(0) <= max
                {
                    continue;
                }
                let mut old = p.clone().into_os_string();
                old.push(".1");
                if std::fs::copy(&p, &old).is_ok()
                    && let Ok(file) = std::fs::OpenOptions::new().write(true).open(&p)
                    && file.set_len(0).is_ok()
                {
                    rotated += 1;
                }
            }
        }
    }
    rotated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_logs_are_rotated_and_small_ones_left() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("uid-1").join("logs").join("c");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("0.log"), vec![b'x'; 2000]).unwrap();
        std::fs::write(logs.join("1.log"), b"small").unwrap();
        assert_eq!(rotate_logs(dir.path(), 1000), 1);
        assert_eq!(std::fs::metadata(logs.join("0.log")).unwrap().len(), 0);
        assert_eq!(std::fs::read(logs.join("0.log.1")).unwrap().len(), 2000);
        assert_eq!(std::fs::read(logs.join("1.log")).unwrap(), b"small");
        assert_eq!(rotate_logs(dir.path(), 1000), 0);
    }
}
