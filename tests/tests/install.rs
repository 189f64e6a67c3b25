//! `tinykube install` / `uninstall` into a directory of the test's own (`--root`): the
//! binary, the `kubectl` link when there is none, and a systemd unit that
//! `systemd-analyze verify` accepts and that runs the role with the given flags; then
//! `uninstall` leaves no file behind.

use std::path::Path;
use std::process::Command;

use tinykube_tests::tinykube_bin;

fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn tinykube(args: &[&str]) -> std::process::Output {
    Command::new(tinykube_bin().unwrap())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn install_writes_a_verified_unit_and_uninstall_takes_it_back() {
    for role in ["master", "worker"] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let out = tinykube(&[
            "install",
            role,
            "--root",
            root,
            "--",
            "--node-ip",
            "192.168.56.11",
            "--iface",
            "eth1",
        ]);
        assert!(out.status.success(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(&format!(
                "wrote {root}/etc/systemd/system/tinykube-{role}.service"
            )),
            "{said}"
        );
        assert_eq!(
            files(dir.path()),
            [
                format!("etc/systemd/system/tinykube-{role}.service"),
                "usr/local/bin/kubectl".to_string(),
                "usr/local/bin/tinykube".to_string(),
            ]
        );
        let unit = std::fs::read_to_string(
            dir.path()
                .join(format!("etc/systemd/system/tinykube-{role}.service")),
        )
        .unwrap();
        assert!(
            unit.contains(&format!("ExecStart=/usr/local/bin/tinykube {role} --data-dir /var/lib/tinykube --node-ip 192.168.56.11 --iface eth1\n")),
            "{unit}"
        );
        assert!(
            unit.contains("KillMode=process\n") && unit.contains("Restart=on-failure\n"),
            "{unit}"
        );
        let verify = Command::new("systemd-analyze")
            .args([
                "verify",
                "--recursive-errors=no",
                &format!("--root={root}"),
                &format!("tinykube-{role}.service"),
            ])
            .output()
            .expect("systemd-analyze (Debian's systemd package) is installed");
        assert!(verify.status.success(), "{verify:?}");
        // The installed binary is this one, and the kubectl link answers as the CLI.
        let help = Command::new(dir.path().join("usr/local/bin/kubectl"))
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("kubectl-like"),
            "{help:?}"
        );
        let out = tinykube(&["uninstall", "--root", root]);
        assert!(out.status.success(), "{out:?}");
        assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    }
}

/// The Vagrantfile the README's "On VMs" commands use is valid (`vagrant validate`,
/// Debian's vagrant; offline, no box needed), lays out the course's machines and
/// provisions them with scripts/provision, the script the VM test runs on its VMs.
#[test]
fn the_vagrantfile_validates() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // Validated in a copy, so no `.vagrant` state of a real set-up is touched.
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    std::fs::copy(repo.join("Vagrantfile"), work.path().join("Vagrantfile")).unwrap();
    std::fs::create_dir(work.path().join("scripts")).unwrap();
    std::fs::copy(
        repo.join("scripts/provision"),
        work.path().join("scripts/provision"),
    )
    .unwrap();
    let out = Command::new("vagrant")
        .arg("validate")
        .current_dir(work.path())
        .env("VAGRANT_HOME", home.path())
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .output()
        .expect("vagrant (Debian's package) is installed");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Vagrantfile validated successfully"));
    let text = std::fs::read_to_string(repo.join("Vagrantfile")).unwrap();
    for ip in ["192.168.56.10", "192.168.56.11", "192.168.56.12"] {
        assert!(text.contains(ip), "{ip}");
    }
    assert!(text.contains("path: \"scripts/provision\""), "{text}");
    let script = std::fs::read_to_string(repo.join("scripts/provision")).unwrap();
    assert!(script.contains("install master") && script.contains("install worker"));
}
