//! Pages of the docs run as written: every `sh` block of a Markdown page, in order, in
//! one bash, from the repository's root, with `tinykube` on PATH and a home of its own
//! (so `tinykube up` writes `~/.kube/config` there). Blocks marked `sh vm` (on a machine
//! of its own) are not run. `tinykube down` runs at the end, also when the test fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::tinykube_bin;

const MARK: &str = "@@@ block ";

/// The fenced blocks of a Markdown page: (info string, code).
pub fn blocks(md: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in md.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_string(), String::new())),
            (Some(_), Some("")) => out.push(current.take().expect("open block")),
            (Some((_, code)), _) => {
                code.push_str(line);
                code.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// The script: the page's `sh` blocks, each after a marker line, so the output can be
/// split back per block. `ctl` puts `tinykube ctl` in place of every `kubectl`.
pub fn script(md: &str, ctl: bool) -> (String, Vec<String>) {
    let mut s = String::from("set -euo pipefail\n");
    if ctl {
        s.push_str("kubectl() { tinykube ctl \"$@\"; }\n");
    }
    let mut codes = Vec::new();
    for (i, (_, code)) in blocks(md)
        .into_iter()
        .filter(|(info, _)| info == "sh")
        .enumerate()
    {
        // A newline first: the block before may end without one (jsonpath output).
        s.push_str(&format!("echo; echo '{MARK}{i}'\n{code}"));
        codes.push(code);
    }
    (s, codes)
}

/// Removes the lab when the test ends, also when it fails.
struct Down {
    path: String,
    home: PathBuf,
}

impl Drop for Down {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tinykube")
            .arg("down")
            .env("PATH", &self.path)
            .env("HOME", &self.home)
            .output();
    }
}

/// What a page printed, block by block, and how long it took.
pub struct Walk {
    pub blocks: BTreeMap<usize, String>,
    pub stdout: String,
    pub seconds: f64,
}

impl Walk {
    /// The output of `sh` block `i` (counting from 0).
    pub fn block(&self, i: usize) -> String {
        self.blocks.get(&i).cloned().unwrap_or_default()
    }
}

/// Runs the `sh` blocks of `page` (a path from the repository's root); with `ctl`,
/// `tinykube ctl` stands in for every `kubectl`. Fails the test, naming the block, when
/// one fails.
pub fn walk(page: &str, ctl: bool) -> Walk {
    walk_after("", page, ctl)
}

/// As `walk`, after `prelude` (test set-up that is not part of the page, e.g. a cluster
/// the page assumes is up).
pub fn walk_after(prelude: &str, page: &str, ctl: bool) -> Walk {
    crate::lab::require_root();
    // The pages use the lab's default name and addresses: one page at a time.
    static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository");
    let md = std::fs::read_to_string(root.join(page)).expect("the page");
    let (script, codes) = script(&md, ctl);
    let script = script.replacen('\n', &format!("\n{prelude}"), 1);
    let home = tempfile::tempdir().expect("tempdir");
    let bin = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(
        tinykube_bin().expect("tinykube binary"),
        bin.path().join("tinykube"),
    )
    .expect("symlink");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let _down = Down {
        path: path.clone(),
        home: home.path().to_path_buf(),
    };
    let started = Instant::now();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(root)
        .env("PATH", &path)
        .env("HOME", home.path())
        .env_remove("KUBECONFIG")
        .output()
        .expect("bash runs");
    let seconds = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut blocks: BTreeMap<usize, String> = BTreeMap::new();
    let mut current = None;
    for line in stdout.lines() {
        if let Some(i) = line.strip_prefix(MARK) {
            current = i.parse().ok();
            continue;
        }
        if let Some(i) = current {
            let b = blocks.entry(i).or_default();
            b.push_str(line);
            b.push('\n');
        }
    }
    let last = blocks.keys().last().copied().unwrap_or(0);
    assert!(
        out.status.success(),
        "{page}: block {last} failed ({}):\n{}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
        if ctl { "tinykube ctl" } else { "kubectl" },
        codes.get(last).map(String::as_str).unwrap_or_default()
    );
    Walk {
        blocks,
        stdout,
        seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_split_into_blocks() {
        let md = "text\n```sh\na\nb\n```\n```text\nout\n```\n```sh vm\nvagrant up\n```\n";
        let b = blocks(md);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0], ("sh".to_string(), "a\nb\n".to_string()));
        let (s, codes) = script(md, true);
        assert_eq!(codes, ["a\nb\n"], "vm blocks are not run");
        assert!(s.contains("kubectl() { tinykube ctl"));
    }
}
