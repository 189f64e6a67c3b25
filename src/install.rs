//! `tinykube install master|worker [FLAGS]` and `tinykube uninstall`: the binary in
//! /usr/local/bin, a systemd unit that runs it with those flags (restarted on failure;
//! `KillMode=process`, so the pods' shims outlive an agent restart), enabled and (re)started
//! when systemd runs; `kubectl` linked to the binary's CLI when there is none.
//! `--root DIR` writes under DIR instead of /, for packaging and for tests.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct InstallArgs {
    /// master or worker
    #[arg(value_parser = ["master", "worker"])]
    role: String,
    /// Install under this directory instead of / (nothing is started then).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// The flags of `tinykube master` / `tinykube worker` the service runs with, after
    /// `--` (e.g. `-- --server https://192.168.56.10:6443 --token K10...`).
    #[arg(last = true)]
    flags: Vec<String>,
}

#[derive(clap::Args)]
pub struct UninstallArgs {
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

const BIN: &str = "usr/local/bin/tinykube";
const KUBECTL: &str = "usr/local/bin/kubectl";
const UNIT_DIR: &str = "etc/systemd/system";

fn unit_name(role: &str) -> String {
    format!("tinykube-{role}.service")
}

/// A flag as systemd's ExecStart reads it: quoted when it has spaces or quotes.
fn quote(arg: &str) -> String {
    if arg.is_empty() || arg.contains([' ', '"', '\\', '\'', '$', '%', ';']) {
        format!(
            "\"{}\"",
            arg.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "$$")
                .replace('%', "%%")
        )
    } else {
        arg.to_string()
    }
}

/// The unit file of `role` running `/usr/local/bin/tinykube ROLE FLAGS`.
pub fn unit(role: &str, flags: &[String]) -> String {
    let what = match role {
        "master" => "tinykube master: API server, controllers, scheduler and its own node agent",
        _ => "tinykube worker: the node agent (pods, overlay, service proxy, cluster DNS)",
    };
    let mut exec = format!("/{BIN} {role}");
    if !flags
        .iter()
        .any(|f| f == "--data-dir" || f.starts_with("--data-dir="))
    {
        exec.push_str(" --data-dir /var/lib/tinykube");
    }
    for f in flags {
        exec.push(' ');
        exec.push_str(&quote(f));
    }
    format!(
        "[Unit]\n\
         Description={what}\n\
         After=network-online.target containerd.service\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exec}\n\
         Restart=on-failure\n\
         RestartSec=5\n\
         # Only the agent is stopped: the pods' containerd shims keep running, and the\n\
         # agent adopts them when it starts again.\n\
         KillMode=process\n\
         Delegate=yes\n\
         LimitNOFILE=1048576\n\
         TasksMax=infinity\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

fn systemd_runs(root: &Path) -> bool {
    root == Path::new("/") && Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "systemctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn fail(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> String {
    let what = format!("cannot {what} {}", path.display());
    move |e| format!("{what}: {e}")
}

pub fn install(args: InstallArgs) -> Result<(), String> {
    let root = &args.root;
    let bin = root.join(BIN);
    let me = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let dir = bin.parent().expect("a parent");
    std::fs::create_dir_all(dir).map_err(fail("create", dir))?;
    if me != bin {
        // Copied next to the target and renamed over it: a running binary is replaced,
        // not written into.
        let tmp = bin.with_extension("new");
        std::fs::copy(&me, &tmp).map_err(fail("write", &tmp))?;
        std::fs::rename(&tmp, &bin).map_err(fail("write", &bin))?;
    }
    println!("installed {}", bin.display());
    let kubectl = root.join(KUBECTL);
    let has_kubectl = kubectl.exists()
        || (root == Path::new("/")
            && Command::new("sh")
                .args(["-c", "command -v kubectl"])
                .output()
                .is_ok_and(|o| o.status.success()));
    if !has_kubectl {
        std::os::unix::fs::symlink("tinykube", &kubectl).map_err(fail("link", &kubectl))?;
        println!(
            "linked {} -> tinykube (its CLI answers as kubectl)",
            kubectl.display()
        );
    }
    let units = root.join(UNIT_DIR);
    std::fs::create_dir_all(&units).map_err(fail("create", &units))?;
    let path = units.join(unit_name(&args.role));
    std::fs::write(&path, unit(&args.role, &args.flags)).map_err(fail("write", &path))?;
    println!("wrote {}", path.display());
    if systemd_runs(root) {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", &unit_name(&args.role)])?;
        // Restarted, not only started: installing again with other flags (another
        // overlay backend, say) takes effect at once, as the unit file now says.
        systemctl(&["restart", &unit_name(&args.role)])?;
        println!("enabled and (re)started {}", unit_name(&args.role));
    } else {
        println!(
            "systemd is not running here: start it with `systemctl enable --now {}` where it is",
            unit_name(&args.role)
        );
    }
    Ok(())
}

pub fn uninstall(args: UninstallArgs) -> Result<(), String> {
    let root = &args.root;
    for role in ["master", "worker"] {
        let path = root.join(UNIT_DIR).join(unit_name(role));
        if !path.exists() {
            continue;
        }
        if systemd_runs(root) {
            systemctl(&["disable", "--now", &unit_name(role)])?;
        }
        std::fs::remove_file(&path).map_err(fail("remove", &path))?;
        println!("removed {}", path.display());
    }
    if systemd_runs(root) {
        systemctl(&["daemon-reload"])?;
    }
    let kubectl = root.join(KUBECTL);
    if std::fs::read_link(&kubectl).is_ok_and(|t| t == Path::new("tinykube")) {
        std::fs::remove_file(&kubectl).map_err(fail("remove", &kubectl))?;
        println!("removed {}", kubectl.display());
    }
    let bin = root.join(BIN);
    if bin.exists() {
        std::fs::remove_file(&bin).map_err(fail("remove", &bin))?;
        println!("removed {}", bin.display());
    }
    println!("data under /var/lib/tinykube is kept; remove it by hand to start afresh");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_the_role_with_its_flags() {
        let u = unit(
            "worker",
            &[
                "--server".into(),
                "https://192.168.56.10:6443".into(),
                "--token".into(),
                "K10ab::server:x y".into(),
            ],
        );
        assert!(u.contains("ExecStart=/usr/local/bin/tinykube worker --data-dir /var/lib/tinykube --server https://192.168.56.10:6443 --token \"K10ab::server:x y\"\n"), "{u}");
        assert!(u.contains("KillMode=process\n") && u.contains("Restart=on-failure\n"));
        let m = unit("master", &["--data-dir".into(), "/srv/tk".into()]);
        assert!(
            m.contains("ExecStart=/usr/local/bin/tinykube master --data-dir /srv/tk\n"),
            "{m}"
        );
    }
}
