//! The verbs that work with running pods and nodes: logs, exec, run, rollout, taint,
//! drain, version; kubectl's flags and output for the same cases.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, LogParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{self, Ctx};

/// `kubectl logs` flags.
#[derive(clap::Args, Debug)]
pub struct LogsOptions {
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    #[arg(short = 'f', long)]
    pub follow: bool,
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Lines of the end of the log to show (-1: all).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub tail: i64,
}

/// Which pod `NAME`, `pod/NAME` or `deployment/NAME` (its first pod) means.
async fn pod_of(ctx: &mut Ctx, target: &str) -> Result<String> {
    let Some((kind, name)) = target.split_once('/') else {
        return Ok(target.to_string());
    };
    let res = ctx.resource(kind).await?;
    if res.plural == "pods" {
        return Ok(name.to_string());
    }
    let obj = ctx
        .get_json(&res.url(Some(&ctx.namespace), Some(name)))
        .await?;
    let labels = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .ok_or_else(|| anyhow!("cannot find the pods of {target}: it has no matchLabels"))?;
    let selector: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let pods = ctx.resource("pods").await?;
    let url = format!(
        "{}?labelSelector={}",
        pods.url(Some(&ctx.namespace), None),
        tinykube_api::query::encode(&selector.join(","))
    );
    let list = ctx.get_json(&url).await?;
    let mut names: Vec<&str> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    names.sort();
    names
        .first()
        .map(|s| s.to_string())
        .ok_or_else(|| anyhow!("no pods found for {target}"))
}

pub async fn logs(ctx: &mut Ctx, target: &str, opts: LogsOptions) -> Result<()> {
    let pod = pod_of(ctx, target).await?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let params = LogParams {
        container: opts.container,
        follow: opts.follow,
        previous: opts.previous,
        tail_lines: Some(opts.tail).filter(|t| *t >= 0),
        ..Default::default()
    };
    let mut stream = api
        .log_stream(&pod, &params)
        .await
        .map_err(client::server_error)?;
    let mut out = tokio::io::stdout();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = futures::AsyncReadExt::read(&mut stream, &mut buf)
            .await
            .context("the log stream broke")?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).await?;
        out.flush().await?;
    }
    Ok(())
}

/// Runs `command` in a container of `pod`; returns the command's exit code.
pub async fn exec(
    ctx: &mut Ctx,
    target: &str,
    container: Option<String>,
    stdin: bool,
    command: &[String],
) -> Result<i32> {
    if command.is_empty() {
        bail!("you must specify at least one command for the container");
    }
    let pod = pod_of(ctx, target).await?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let mut params = AttachParams::default().stdin(stdin).stderr(true);
    if let Some(c) = container {
        params = params.container(c);
    }
    let mut proc = api
        .exec(&pod, command.to_vec(), &params)
        .await
        .map_err(client::server_error)?;
    let status = proc.take_status();
    let feed = proc.stdin().map(|mut w| {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut w).await;
            let _ = w.shutdown().await;
        })
    });
    let copy = |r: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>, err: bool| {
        tokio::spawn(async move {
            let Some(mut r) = r else { return };
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let _ = if err {
                    let mut e = tokio::io::stderr();
                    e.write_all(&buf[..n]).await.and(e.flush().await)
                } else {
                    let mut o = tokio::io::stdout();
                    o.write_all(&buf[..n]).await.and(o.flush().await)
                };
            }
        })
    };
    let out = copy(
        proc.stdout()
            .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        false,
    );
    let err = copy(
        proc.stderr()
            .map(|r| Box::new(r) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        true,
    );
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    let _ = out.await;
    let _ = err.await;
    if let Some(f) = feed {
        f.abort();
    }
    let _ = proc.join().await;
    let Some(status) = status else {
        return Ok(0);
    };
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let code = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.as_deref()?.parse::<i32>().ok());
    match code {
        Some(code) => {
            eprintln!("command terminated with exit code {code}");
            Ok(code)
        }
        None => bail!(
            "{}",
            status
                .message
                .unwrap_or_else(|| "the command failed".into())
        ),
    }
}

/// `kubectl run` flags.
#[derive(clap::Args, Debug)]
pub struct RunOptions {
    #[arg(long)]
    pub image: String,
    #[arg(long)]
    pub port: Option<i32>,
    #[arg(long, default_value = "Always")]
    pub restart: String,
    #[arg(short = 'l', long)]
    pub labels: Option<String>,
    #[arg(long)]
    pub env: Vec<String>,
    /// The arguments after -- are the command, not the image's arguments.
    #[arg(long)]
    pub command: bool,
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// The Pod `kubectl run NAME` makes.
pub fn run_pod(name: &str, o: &RunOptions) -> Result<Value> {
    let mut labels = serde_json::Map::new();
    match &o.labels {
        Some(l) => {
            for kv in l.split(',').filter(|s| !s.is_empty()) {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow!("invalid label spec: {kv}"))?;
                labels.insert(k.into(), json!(v));
            }
        }
        None => {
            labels.insert("run".into(), json!(name));
        }
    }
    let restart = match o.restart.as_str() {
        "Always" | "OnFailure" | "Never" => o.restart.clone(),
        other => bail!("invalid restart policy: {other}"),
    };
    let mut container = json!({"name": name, "image": o.image, "resources": {}});
    if let Some(p) = o.port {
        container["ports"] = json!([{"containerPort": p}]);
    }
    let env: Vec<Value> = o
        .env
        .iter()
        .map(|e| {
            e.split_once('=')
                .map(|(k, v)| json!({"name": k, "value": v}))
                .ok_or_else(|| anyhow!("invalid env: {e}"))
        })
        .collect::<Result<_>>()?;
    if !env.is_empty() {
        container["env"] = json!(env);
    }
    if !o.args.is_empty() {
        container[if o.command { "command" } else { "args" }] = json!(o.args);
    }
    Ok(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [container], "restartPolicy": restart, "dnsPolicy": "ClusterFirst"},
        "status": {},
    }))
}

fn deployment_name(target: &str) -> Result<&str> {
    match target.split_once('/') {
        Some(("deployment" | "deployments" | "deploy" | "deployment.apps", n)) => Ok(n),
        Some((kind, _)) => bail!("no rollout support for {kind}: only deployments"),
        None => Ok(target),
    }
}

/// What `kubectl rollout status` says of a deployment, and whether it is done.
pub fn rollout_message(d: &Value) -> Result<(String, bool)> {
    let name = d["metadata"]["name"].as_str().unwrap_or_default();
    let generation = d["metadata"]["generation"].as_i64().unwrap_or(0);
    let st = &d["status"];
    if generation > st["observedGeneration"].as_i64().unwrap_or(0) {
        return Ok((
            "Waiting for deployment spec update to be observed...".into(),
            false,
        ));
    }
    let deadline_exceeded = st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded");
    if deadline_exceeded {
        bail!("deployment {name:?} exceeded its progress deadline");
    }
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let updated = st["updatedReplicas"].as_i64().unwrap_or(0);
    let replicas = st["replicas"].as_i64().unwrap_or(0);
    let available = st["availableReplicas"].as_i64().unwrap_or(0);
    let waiting = |m: String| {
        Ok((
            format!("Waiting for deployment {name:?} rollout to finish: {m}"),
            false,
        ))
    };
    if updated < want {
        return waiting(format!(
            "{updated} out of {want} new replicas have been updated..."
        ));
    }
    if replicas > updated {
        return waiting(format!(
            "{} old replicas are pending termination...",
            replicas - updated
        ));
    }
    if available < updated {
        return waiting(format!(
            "{available} of {updated} updated replicas are available..."
        ));
    }
    Ok((format!("deployment {name:?} successfully rolled out"), true))
}

pub async fn rollout_status(ctx: &mut Ctx, target: &str, timeout: Option<Duration>) -> Result<()> {
    let name = deployment_name(target)?;
    let res = ctx.resource("deployments").await?;
    let url = res.url(Some(&ctx.namespace), Some(name));
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let d = ctx.get_json(&url).await?;
        let (message, done) = rollout_message(&d)?;
        if message != last {
            println!("{message}");
            last = message;
        }
        if done {
            return Ok(());
        }
        if timeout.is_some_and(|t| !t.is_zero() && started.elapsed() > t) {
            bail!("timed out waiting for the condition");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

const REVISION: &str = "deployment.kubernetes.io/revision";

/// The deployment and its ReplicaSets by revision.
async fn history(ctx: &mut Ctx, name: &str) -> Result<(Value, BTreeMap<i64, Value>)> {
    let res = ctx.resource("deployments").await?;
    let d = ctx
        .get_json(&res.url(Some(&ctx.namespace), Some(name)))
        .await?;
    let uid = d["metadata"]["uid"].clone();
    let rs = ctx.resource("replicasets").await?;
    let list = ctx.get_json(&rs.url(Some(&ctx.namespace), None)).await?;
    let mut by_revision = BTreeMap::new();
    for r in list["items"].as_array().into_iter().flatten() {
        let owned = r["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["uid"] == uid && o["controller"] == true);
        let revision = r["metadata"]["annotations"][REVISION]
            .as_str()
            .and_then(|v| v.parse::<i64>().ok());
        if let (true, Some(rev)) = (owned, revision) {
            by_revision.insert(rev, r.clone());
        }
    }
    Ok((d, by_revision))
}

pub async fn rollout_history(ctx: &mut Ctx, target: &str) -> Result<()> {
    let name = deployment_name(target)?;
    let (_, revisions) = history(ctx, name).await?;
    println!("deployment.apps/{name} ");
    // kubectl's tabwriter: two spaces after the widest cell of the column.
    println!("{:<10}CHANGE-CAUSE", "REVISION");
    for (rev, rs) in &revisions {
        let cause = rs["metadata"]["annotations"]["kubernetes.io/change-cause"]
            .as_str()
            .unwrap_or("<none>");
        println!("{:<10}{cause}", rev.to_string());
    }
    println!();
    Ok(())
}

pub async fn rollout_undo(ctx: &mut Ctx, target: &str, to_revision: i64) -> Result<()> {
    let name = deployment_name(target)?;
    let (d, revisions) = history(ctx, name).await?;
    if revisions.is_empty() {
        bail!("no rollout history found for deployment {name:?}");
    }
    let (rev, rs) = if to_revision == 0 {
        revisions
            .iter()
            .rev()
            .nth(1)
            .ok_or_else(|| anyhow!("no rollout history found for deployment {name:?}"))?
    } else {
        revisions
            .get_key_value(&to_revision)
            .ok_or_else(|| anyhow!("unable to find specified revision {to_revision} in history"))?
    };
    let template = strip_hash(&rs["spec"]["template"]);
    if strip_hash(&d["spec"]["template"]) == template {
        println!(
            "deployment.apps/{name} skipped rollback (current template already matches revision {rev})"
        );
        return Ok(());
    }
    let res = ctx.resource("deployments").await?;
    let url = res.url(Some(&ctx.namespace), Some(name));
    let patch = json!([{"op": "replace", "path": "/spec/template", "value": template}]);
    ctx.send(
        "PATCH",
        &url,
        Some("application/json-patch+json"),
        None,
        patch.to_string().into_bytes(),
    )
    .await?;
    println!("deployment.apps/{name} rolled back");
    Ok(())
}

fn strip_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(l) = t["metadata"]["labels"].as_object_mut() {
        l.remove("pod-template-hash");
    }
    t
}

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

pub async fn version(ctx: &mut Ctx) -> Result<()> {
    println!(
        "Client Version: {}",
        tinykube_api::constants::KUBE_GIT_VERSION
    );
    let v = ctx.get_json("/version").await?;
    println!(
        "Server Version: {}",
        v["gitVersion"].as_str().unwrap_or("unknown")
    );
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

    #[test]
    fn rollout_status_messages_follow_kubectl() {
        let d = |generation: i64, observed: i64, updated: i64, replicas: i64, available: i64| {
            json!({"metadata": {"name": "web", "generation": generation},
                   "spec": {"replicas": 3},
                   "status": {"observedGeneration": observed, "updatedReplicas": updated,
                              "replicas": replicas, "availableReplicas": available}})
        };
        assert_eq!(
            rollout_message(&d(2, 1, 0, 0, 0)).unwrap().0,
            "Waiting for deployment spec update to be observed..."
        );
        assert_eq!(
            rollout_message(&d(1, 1, 1, 3, 1)).unwrap().0,
            "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated..."
        );
        assert_eq!(
            rollout_message(&d(1, 1, 3, 4, 3)).unwrap().0,
            "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination..."
        );
        assert_eq!(
            rollout_message(&d(1, 1, 3, 3, 2)).unwrap().0,
            "Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available..."
        );
        assert_eq!(
            rollout_message(&d(1, 1, 3, 3, 3)).unwrap(),
            ("deployment \"web\" successfully rolled out".into(), true)
        );
    }

    #[test]
    fn run_makes_kubectl_s_pod() {
        let o = RunOptions {
            image: "tinykube.local/toolbox".into(),
            port: Some(8080),
            restart: "Never".into(),
            labels: None,
            env: vec!["A=1".into()],
            command: false,
            args: vec!["sleep".into()],
        };
        let p = run_pod("client", &o).unwrap();
        assert_eq!(p["metadata"]["labels"]["run"], "client");
        assert_eq!(p["spec"]["restartPolicy"], "Never");
        let c = &p["spec"]["containers"][0];
        assert_eq!(c["name"], "client");
        assert_eq!(c["ports"][0]["containerPort"], 8080);
        assert_eq!(c["env"][0]["value"], "1");
        assert_eq!(c["args"][0], "sleep");
    }

    #[test]
    fn jsonpath_reads_fields_and_lists() {
        let v = json!({"items": [{"status": {"podIP": "10.244.1.2"}}, {"status": {"podIP": "10.244.2.2"}}],
                       "spec": {"ports": [{"nodePort": 31234}]}});
        let p = |t: &str| crate::print::jsonpath(t, &v).unwrap();
        assert_eq!(p("{.items[0].status.podIP}"), "10.244.1.2");
        assert_eq!(p("{.items[*].status.podIP}"), "10.244.1.2 10.244.2.2");
        assert_eq!(p("port={.spec.ports[0].nodePort}\n"), "port=31234\n");
        assert_eq!(p("{.missing}"), "");
        assert!(crate::print::jsonpath("{.a", &v).is_err());
    }
}
