//! A containerd of the node's own, for machines where none answers: its config, root,
//! state and socket under the node's data dir, as k3s runs one.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// containerd's own default socket.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// Writes the config of a containerd of our own with its root, state and socket under
/// `dir` (no CRI plugin: the kubelet speaks to containerd's own API); returns the
/// config's path and the socket's.
pub fn containerd_config(dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let socket = dir.join("containerd.sock");
    std::fs::create_dir_all(dir.join("root"))?;
    std::fs::create_dir_all(dir.join("state"))?;
    let config = format!(
        "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n",
        dir.display(),
        socket.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config)?;
    Ok((path, socket))
}

/// A containerd this node started because none answered.
pub struct OwnContainerd {
    child: tokio::process::Child,
    pub socket: PathBuf,
}

impl OwnContainerd {
    /// Starts containerd with its config, root and state under `dir`, logging to
    /// `dir/containerd.log`.
    pub async fn start(dir: &Path) -> std::io::Result<Self> {
        let (config_path, socket) = containerd_config(dir)?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let child = tokio::process::Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self { child, socket })
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child by pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
