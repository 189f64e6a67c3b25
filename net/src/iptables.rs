//! Running `iptables` and `iptables-restore` in the calling process's network
//! namespace: what the masquerade rules and the service proxy write with.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
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

/// Runs `program args`, feeding it `input`; returns whether it succeeded, its standard
/// output and what it said on standard error.
pub fn run(
    program: &'static str,
    args: &[&str],
    input: Option<&str>,
) -> Result<(bool, String, String), IptablesError> {
    let spawn = |source| IptablesError::Spawn { program, source };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// As `run`, failing unless the program succeeds; returns its standard output.
pub fn must(
    program: &'static str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, IptablesError> {
    match run(program, args, input)? {
        (true, stdout, _) => Ok(stdout),
        (false, _, stderr) => Err(IptablesError::Failed { program, stderr }),
    }
}

/// Makes sure `rule` (iptables arguments after the chain name) is in `chain` of
/// `table`, appended if `append`, else inserted first. Safe to repeat.
pub fn ensure_rule(
    table: &str,
    chain: &str,
    rule: &[&str],
    append: bool,
) -> Result<(), IptablesError> {
    let with = |op: &'static str| {
        let mut a = vec!["-w", "5", "-t", table, op, chain];
        a.extend_from_slice(rule);
        a
    };
    // -C fails when the rule is missing.
    if !run("iptables", &with("-C"), None)?.0 {
        must("iptables", &with(if append { "-A" } else { "-I" }), None)?;
    }
    Ok(())
}

/// Writes `rules` (iptables-restore's format) without flushing the chains it does not
/// name.
pub fn restore(rules: &str) -> Result<(), IptablesError> {
    must("iptables-restore", &["--noflush", "-w", "5"], Some(rules)).map(|_| ())
}
