//! Masquerade for pod traffic leaving the pod network, as flannel sets it up: one chain
//! of our own in the nat table, jumped to from POSTROUTING. Pod-to-pod traffic returns
//! untouched (no NAT inside the cluster CIDR); pods talking to anything else appear as
//! the node.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::cidr::Ipv4Cidr;

pub const CHAIN: &str = "TINYKUBE-POSTRTG";

#[derive(Debug, thiserror::Error)]
pub enum MasqueradeError {
    #[error("cannot run {program} (is the iptables package installed?)")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed: {stderr}")]
    Failed {
        program: &'static str,
        stderr: String,
    },
}

/// The rules, in iptables-restore's format (the chain is flushed and rewritten whole).
pub fn rules(cluster: Ipv4Cidr) -> String {
    format!(
        "*nat\n:{CHAIN} - [0:0]\n\
         -A {CHAIN} -s {cluster} -d {cluster} -m comment --comment \"tinykube: pod to pod, no NAT\" -j RETURN\n\
         -A {CHAIN} -s {cluster} ! -d 224.0.0.0/4 -m comment --comment \"tinykube: pods leaving the pod network\" -j MASQUERADE --random-fully\n\
         COMMIT\n"
    )
}

/// Runs `program args`, feeding it `input`; returns whether it succeeded and what it
/// said on standard error.
fn run(
    program: &'static str,
    args: &[&str],
    input: Option<&str>,
) -> Result<(bool, String), MasqueradeError> {
    let spawn = |source| MasqueradeError::Spawn { program, source };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Ok((out.status.success(), stderr))
}

/// As `run`, failing unless the program succeeds.
fn must(program: &'static str, args: &[&str], input: Option<&str>) -> Result<(), MasqueradeError> {
    match run(program, args, input)? {
        (true, _) => Ok(()),
        (false, stderr) => Err(MasqueradeError::Failed { program, stderr }),
    }
}

/// Writes the chain and makes sure POSTROUTING jumps to it, in the calling process's
/// network namespace. Safe to repeat.
pub fn apply(cluster: Ipv4Cidr) -> Result<(), MasqueradeError> {
    must(
        "iptables-restore",
        &["--noflush", "-w", "5"],
        Some(&rules(cluster)),
    )?;
    let rule = |op: &'static str| {
        [
            "-w",
            "5",
            "-t",
            "nat",
            op,
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "tinykube: pod network masquerade",
            "-j",
            CHAIN,
        ]
    };
    // -C fails when the rule is missing.
    if !run("iptables", &rule("-C"), None)?.0 {
        must("iptables", &rule("-A"), None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_to_pod_returns_before_the_masquerade() {
        let r = rules("10.244.0.0/16".parse().unwrap());
        let ret = r.find("-d 10.244.0.0/16").unwrap();
        let masq = r.find("MASQUERADE").unwrap();
        assert!(ret < masq);
        assert!(r.starts_with("*nat\n:TINYKUBE-POSTRTG - [0:0]\n"));
        assert!(r.ends_with("COMMIT\n"));
    }
}
