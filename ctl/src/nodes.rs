//! The verbs that work on nodes: `taint` (add, remove, overwrite) and `drain` (cordon,
//! then evict, and wait until the pods are gone), with kubectl's messages.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};

use crate::client::Ctx;

/// One `key[=value]:Effect` to add, or `key[:Effect]-` to remove.
#[derive(Debug, PartialEq)]
pub enum TaintSpec {
    Add {
        key: String,
        value: String,
        effect: String,
    },
    Remove {
        key: String,
        effect: Option<String>,
    },
}

pub fn parse_taint(s: &str) -> Result<TaintSpec> {
    let effect_ok = |e: &str| matches!(e, "NoSchedule" | "PreferNoSchedule" | "NoExecute");
    if let Some(rest) = s.strip_suffix('-') {
        let (key, effect) = match rest.split_once(':') {
            Some((k, e)) => (k, Some(e.to_string())),
            None => (rest, None),
        };
        if key.is_empty() || effect.as_deref().is_some_and(|e| !effect_ok(e)) {
            bail!("invalid taint spec: {s}");
        }
        return Ok(TaintSpec::Remove {
            key: key.into(),
            effect,
        });
    }
    let (kv, effect) = s.rsplit_once(':').ok_or_else(|| {
        anyhow!("invalid taint spec: {s}, the effect is missing (key=value:Effect)")
    })?;
    if !effect_ok(effect) {
        bail!(
            "invalid taint effect: {effect}, unsupported taint effect (NoSchedule, PreferNoSchedule or NoExecute)"
        );
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if key.is_empty() {
        bail!("invalid taint spec: {s}");
    }
    Ok(TaintSpec::Add {
        key: key.into(),
        value: value.into(),
        effect: effect.into(),
    })
}

pub async fn taint(
    ctx: &mut Ctx,
    kind: &str,
    node: &str,
    specs: &[String],
    overwrite: bool,
) -> Result<()> {
    if !matches!(kind, "node" | "nodes" | "no") {
        bail!("taints apply to nodes only, not to {kind}");
    }
    if specs.is_empty() {
        bail!("at least one taint update is required");
    }
    let res = ctx.resource("nodes").await?;
    let url = res.url(None, Some(node));
    let current = ctx.get_json(&url).await?;
    let mut taints: Vec<Value> = current["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let (mut added, mut removed) = (false, false);
    for s in specs {
        match parse_taint(s)? {
            TaintSpec::Add { key, value, effect } => {
                let same = |t: &Value| t["key"] == key.as_str() && t["effect"] == effect.as_str();
                if taints.iter().any(same) {
                    if !overwrite {
                        bail!(
                            "node {node} already has {key} taint(s) with same effect(s) and --overwrite is false"
                        );
                    }
                    taints.retain(|t| !same(t));
                }
                let mut t = json!({"key": key, "effect": effect});
                if !value.is_empty() {
                    t["value"] = json!(value);
                }
                taints.push(t);
                added = true;
            }
            TaintSpec::Remove { key, effect } => {
                let before = taints.len();
                taints.retain(|t| {
                    !(t["key"] == key.as_str()
                        && effect.as_deref().is_none_or(|e| t["effect"] == e))
                });
                if taints.len() == before {
                    let what = effect.map_or(key.clone(), |e| format!("{key}:{e}"));
                    bail!("taint {what:?} not found");
                }
                removed = true;
            }
        }
    }
    ctx.merge_patch(&url, &json!({"spec": {"taints": taints}}))
        .await?;
    let verb = match (added, removed) {
        (true, true) => "modified",
        (true, false) => "tainted",
        _ => "untainted",
    };
    println!("node/{node} {verb}");
    Ok(())
}

/// `kubectl drain` flags.
#[derive(clap::Args, Debug)]
pub struct DrainOptions {
    #[arg(long)]
    pub ignore_daemonsets: bool,
    #[arg(long)]
    pub delete_emptydir_data: bool,
    /// Also delete pods no controller manages.
    #[arg(long)]
    pub force: bool,
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub grace_period: i64,
    /// Give up after this long (e.g. 90s, 2m; 0: wait for ever).
    #[arg(long, default_value = "0s", value_parser = crate::parse_duration)]
    pub timeout: Duration,
}

pub async fn drain(ctx: &mut Ctx, node: &str, o: &DrainOptions) -> Result<()> {
    crate::set_unschedulable(ctx, node, true).await?;
    let pods_res = ctx.resource("pods").await?;
    let url = format!(
        "{}?fieldSelector={}",
        pods_res.url(None, None),
        tinykube_api::query::encode(&format!("spec.nodeName={node}"))
    );
    let list = ctx.get_json(&url).await?;
    let (mut evict, mut daemons, mut unmanaged, mut refused) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for p in list["items"].as_array().into_iter().flatten() {
        let meta = &p["metadata"];
        let id = format!(
            "{}/{}",
            meta["namespace"].as_str().unwrap_or_default(),
            meta["name"].as_str().unwrap_or_default()
        );
        if !meta["annotations"]["kubernetes.io/config.mirror"].is_null() {
            continue;
        }
        let finished = matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
        let controller = meta["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["controller"] == true);
        if controller.is_some_and(|c| c["kind"] == "DaemonSet") {
            daemons.push(id);
            continue;
        }
        if !finished && controller.is_none() {
            if o.force {
                unmanaged.push(id.clone());
            } else {
                refused.push(format!(
                    "cannot delete Pods that declare no controller (use --force to override): {id}"
                ));
                continue;
            }
        }
        let empty_dir = p["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| !v["emptyDir"].is_null());
        if !finished && empty_dir && !o.delete_emptydir_data {
            refused.push(format!(
                "cannot delete Pods with local storage (use --delete-emptydir-data to override): {id}"
            ));
            continue;
        }
        evict.push(p.clone());
    }
    if !daemons.is_empty() {
        if !o.ignore_daemonsets {
            refused.push(format!(
                "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): {}",
                daemons.join(", ")
            ));
        } else {
            eprintln!(
                "Warning: ignoring DaemonSet-managed Pods: {}",
                daemons.join(", ")
            );
        }
    }
    if !refused.is_empty() {
        bail!(
            "unable to drain node {node:?} due to error: {}; the node stays cordoned",
            refused.join(", ")
        );
    }
    if !unmanaged.is_empty() {
        eprintln!(
            "Warning: deleting Pods that declare no controller: {}",
            unmanaged.join(", ")
        );
    }
    let started = Instant::now();
    for p in &evict {
        let (ns, name) = (
            p["metadata"]["namespace"].as_str().unwrap_or_default(),
            p["metadata"]["name"].as_str().unwrap_or_default(),
        );
        println!("evicting pod {ns}/{name}");
        let mut eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
                                  "metadata": {"name": name, "namespace": ns}});
        if o.grace_period >= 0 {
            eviction["deleteOptions"] = json!({"gracePeriodSeconds": o.grace_period});
        }
        let url = format!("{}/eviction", pods_res.url(Some(ns), Some(name)));
        loop {
            let r = ctx
                .send(
                    "POST",
                    &url,
                    Some("application/json"),
                    None,
                    eviction.to_string().into_bytes(),
                )
                .await;
            match r {
                Ok(_) => break,
                Err(e) if e.to_string().contains("not found") => break,
                Err(e)
                    if e.to_string().contains("TooManyRequests")
                        || e.to_string().contains("disruption budget") =>
                {
                    eprintln!(
                        "error when evicting pods/{name:?} -n {ns:?} (will retry after 5s): {e}"
                    );
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(e) => return Err(e),
            }
            if !o.timeout.is_zero() && started.elapsed() > o.timeout {
                bail!("drain did not complete within {:?}", o.timeout);
            }
        }
    }
    // Wait for each evicted pod to be gone (or replaced by one of the same name).
    for p in &evict {
        let (ns, name, uid) = (
            p["metadata"]["namespace"].as_str().unwrap_or_default(),
            p["metadata"]["name"].as_str().unwrap_or_default(),
            p["metadata"]["uid"].clone(),
        );
        let url = pods_res.url(Some(ns), Some(name));
        loop {
            match ctx.get_json(&url).await {
                Ok(now) if now["metadata"]["uid"] == uid => {}
                _ => break,
            }
            if !o.timeout.is_zero() && started.elapsed() > o.timeout {
                bail!("drain did not complete within {:?}", o.timeout);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        println!("pod/{name} evicted");
    }
    println!("node/{node} drained");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taint_specs_parse_as_kubectl_reads_them() {
        assert_eq!(
            parse_taint("dedicated=course:NoSchedule").unwrap(),
            TaintSpec::Add {
                key: "dedicated".into(),
                value: "course".into(),
                effect: "NoSchedule".into()
            }
        );
        assert_eq!(
            parse_taint("node-role.kubernetes.io/control-plane:NoSchedule-").unwrap(),
            TaintSpec::Remove {
                key: "node-role.kubernetes.io/control-plane".into(),
                effect: Some("NoSchedule".into())
            }
        );
        assert_eq!(
            parse_taint("dedicated-").unwrap(),
            TaintSpec::Remove {
                key: "dedicated".into(),
                effect: None
            }
        );
        assert!(parse_taint("dedicated=x").is_err());
        assert!(parse_taint("k=v:Sometimes").is_err());
    }
}
