//! Running `iptables` and `iptables-restore` in the calling process's network
//! namespace: what the masquerade rules and the service proxy write with; and reading
//! a table back with its counters (`iptables-save -c`), for `inspect` and `trace`.

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

/// One rule of `iptables-save -c`, with its counters.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedRule {
    pub chain: String,
    pub packets: u64,
    pub bytes: u64,
    /// The rule as written, without its counters and `-A CHAIN`.
    pub spec: String,
    /// What `-j` names (a chain, or DNAT, MASQUERADE, RETURN, ...).
    pub target: String,
    pub comment: Option<String>,
    /// `-m statistic --probability`.
    pub probability: Option<f64>,
    /// `--to-destination` of a DNAT.
    pub to_destination: Option<String>,
}

/// Reads table `table` of the calling process's network namespace with its counters.
pub fn save(table: &str) -> Result<String, IptablesError> {
    must("iptables-save", &["-c", "-t", table], None)
}

/// Splits a rule into words as the shell would (double quotes group).
fn words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The rules in `iptables-save -c` output, in order (chain declarations and table
/// markers are skipped).
pub fn parse_save(text: &str) -> Vec<SavedRule> {
    let mut out = Vec::new();
    for line in text.lines() {
        let (counters, rest) = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
            Some((c, r)) => (Some(c), r),
            None => (None, line),
        };
        let Some(rest) = rest.strip_prefix("-A ") else {
            continue;
        };
        let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
        let (packets, bytes) = counters
            .and_then(|c| c.split_once(':'))
            .map(|(p, b)| (p.parse().unwrap_or(0), b.parse().unwrap_or(0)))
            .unwrap_or((0, 0));
        let w = words(spec);
        let after = |flag: &str| {
            w.iter()
                .position(|x| x == flag)
                .and_then(|i| w.get(i + 1))
                .cloned()
        };
        out.push(SavedRule {
            chain: chain.to_string(),
            packets,
            bytes,
            spec: spec.to_string(),
            target: after("-j").unwrap_or_default(),
            comment: after("--comment"),
            probability: after("--probability").and_then(|p| p.parse().ok()),
            to_destination: after("--to-destination"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_rules_keep_their_counters_comment_and_target() {
        let text = "# Generated by iptables-save\n*nat\n:KUBE-SERVICES - [0:0]\n\
[3:180] -A KUBE-SVC-ABC -m comment --comment \"default/server -> 10.244.1.3:8080\" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-X\n\
[0:0] -A KUBE-SEP-X -p tcp -m comment --comment \"default/server\" -m tcp -j DNAT --to-destination 10.244.1.3:8080\n\
-A POSTROUTING -j TINYKUBE-POSTRTG\nCOMMIT\n";
        let r = parse_save(text);
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].packets, r[0].bytes), (3, 180));
        assert_eq!(r[0].chain, "KUBE-SVC-ABC");
        assert_eq!(
            r[0].comment.as_deref(),
            Some("default/server -> 10.244.1.3:8080")
        );
        assert_eq!(r[0].probability, Some(0.5));
        assert_eq!(r[0].target, "KUBE-SEP-X");
        assert_eq!(r[1].to_destination.as_deref(), Some("10.244.1.3:8080"));
        assert_eq!(r[1].target, "DNAT");
        assert_eq!(
            (r[2].packets, r[2].target.as_str()),
            (0, "TINYKUBE-POSTRTG")
        );
    }
}
