//! The verbs that work with running pods: logs, exec, run, and version; kubectl's flags
//! and output for the same cases. Deployments' rollouts are in `rollout.rs`, taint and
//! drain in `nodes.rs`.

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
}
