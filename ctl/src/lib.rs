//! `tinykube ctl`: a kubectl-like CLI for the common verbs.

mod apply;
mod client;
mod delete;
mod get;
mod print;

use apply::*;
use delete::*;
use get::*;

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use client::Ctx;

const TABLE_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

#[derive(Args, Debug)]
pub struct CtlArgs {
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Display one or many resources.
    Get {
        /// TYPE [NAME...] or TYPE/NAME
        args: Vec<String>,
        #[arg(short = 'o', long)]
        output: Option<String>,
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Show details of a resource.
    Describe { args: Vec<String> },
    /// Create or update resources from files (-f FILE|DIR|-).
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// Create resources from files, or a deployment or service.
    Create {
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        #[command(subcommand)]
        what: Option<CreateCmd>,
    },
    /// Expose a deployment as a new Service.
    Expose {
        kind: String,
        name: String,
        #[arg(long)]
        port: i32,
        #[arg(long)]
        target_port: Option<String>,
        #[arg(long = "type")]
        service_type: Option<String>,
        #[arg(long)]
        name_override: Option<String>,
    },
    /// Set the number of replicas of a deployment or replica set.
    Scale {
        args: Vec<String>,
        #[arg(long)]
        replicas: i64,
    },
    /// Add (k=v) or remove (k-) labels.
    Label {
        kind: String,
        name: String,
        labels: Vec<String>,
        #[arg(long)]
        overwrite: bool,
    },
    /// Mark a node unschedulable.
    Cordon { node: String },
    /// Mark a node schedulable.
    Uncordon { node: String },
    /// Delete resources by type and name, by file, or by label.
    Delete {
        args: Vec<String>,
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum CreateCmd {
    /// Create a deployment with the given image.
    Deployment {
        name: String,
        #[arg(long)]
        image: String,
        #[arg(long, default_value_t = 1)]
        replicas: i32,
        #[arg(long)]
        port: Option<i32>,
    },
    /// Create a service (nodeport or clusterip).
    Service {
        #[command(subcommand)]
        kind: ServiceCmd,
    },
}

#[derive(Subcommand, Debug)]
enum ServiceCmd {
    Nodeport {
        name: String,
        /// port:targetPort pairs
        #[arg(long = "tcp", required = true)]
        tcp: Vec<String>,
        #[arg(long)]
        node_port: Option<i32>,
    },
    Clusterip {
        name: String,
        #[arg(long = "tcp", required = true)]
        tcp: Vec<String>,
    },
}

pub async fn run(args: CtlArgs) -> Result<()> {
    let mut ctx = Ctx::connect(args.kubeconfig, args.namespace).await?;
    match args.command {
        Cmd::Get {
            args,
            output,
            selector,
            all_namespaces,
            watch,
        } => {
            get(
                &mut ctx,
                &args,
                output.as_deref(),
                selector.as_deref(),
                all_namespaces,
                watch,
            )
            .await
        }
        Cmd::Describe { args } => describe(&mut ctx, &args).await,
        Cmd::Apply { files } => {
            for doc in read_documents(&files)? {
                let line = apply(&mut ctx, doc).await?;
                println!("{line}");
            }
            Ok(())
        }
        Cmd::Create { files, what } => match what {
            Some(CreateCmd::Deployment {
                name,
                image,
                replicas,
                port,
            }) => {
                let obj = deployment(&name, &image, replicas, port);
                create(&mut ctx, obj).await
            }
            Some(CreateCmd::Service { kind }) => {
                let (name, tcp, kind, node_port) = match kind {
                    ServiceCmd::Nodeport {
                        name,
                        tcp,
                        node_port,
                    } => (name, tcp, "NodePort", node_port),
                    ServiceCmd::Clusterip { name, tcp } => (name, tcp, "ClusterIP", None),
                };
                let obj = service(&name, &tcp, kind, node_port)?;
                create(&mut ctx, obj).await
            }
            None => {
                if files.is_empty() {
                    bail!("must specify -f or a subcommand (deployment, service)");
                }
                for doc in read_documents(&files)? {
                    create(&mut ctx, doc).await?;
                }
                Ok(())
            }
        },
        Cmd::Expose {
            kind,
            name,
            port,
            target_port,
            service_type,
            name_override,
        } => {
            let res = ctx.resource(&kind).await?;
            let obj = ctx
                .get_json(&res.url(Some(&ctx.namespace), Some(&name)))
                .await?;
            let selector = obj["spec"]["selector"]["matchLabels"].clone();
            if !selector.is_object() {
                bail!(
                    "couldn't retrieve selectors via --selector flag or introspection: the {kind} has no matchLabels"
                );
            }
            let target: Value = match target_port {
                Some(t) => t.parse::<i64>().map(Value::from).unwrap_or(Value::from(t)),
                None => json!(port),
            };
            let svc = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name_override.unwrap_or(name), "labels": obj["metadata"]["labels"]},
                "spec": {"type": service_type.unwrap_or_else(|| "ClusterIP".into()), "selector": selector,
                         "ports": [{"port": port, "protocol": "TCP", "targetPort": target}]}});
            let created = post(&mut ctx, svc).await?;
            println!(
                "service/{} exposed",
                created["metadata"]["name"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        Cmd::Scale { args, replicas } => {
            let (res, names) = type_and_names(&mut ctx, &args).await?;
            for name in names {
                let url = format!("{}/scale", res.url(Some(&ctx.namespace), Some(&name)));
                ctx.merge_patch(&url, &json!({"spec": {"replicas": replicas}}))
                    .await?;
                println!("{}/{name} scaled", res.type_name());
            }
            Ok(())
        }
        Cmd::Label {
            kind,
            name,
            labels,
            overwrite,
        } => {
            let res = ctx.resource(&kind).await?;
            let url = res.url(Some(&ctx.namespace), Some(&name));
            let current = ctx.get_json(&url).await?;
            let mut patch = serde_json::Map::new();
            for l in &labels {
                if let Some(key) = l.strip_suffix('-') {
                    patch.insert(key.into(), Value::Null);
                } else {
                    let (k, v) = l
                        .split_once('=')
                        .ok_or_else(|| anyhow!("invalid label spec: {l}"))?;
                    if !overwrite && current["metadata"]["labels"].get(k).is_some_and(|c| c != v) {
                        bail!(
                            "'{k}' already has a value ({}), and --overwrite is false",
                            current["metadata"]["labels"][k]
                                .as_str()
                                .unwrap_or_default()
                        );
                    }
                    patch.insert(k.into(), json!(v));
                }
            }
            ctx.merge_patch(&url, &json!({"metadata": {"labels": patch}}))
                .await?;
            println!("{}/{name} labeled", res.type_name());
            Ok(())
        }
        Cmd::Cordon { node } => set_unschedulable(&mut ctx, &node, true).await,
        Cmd::Uncordon { node } => set_unschedulable(&mut ctx, &node, false).await,
        Cmd::Delete {
            args,
            files,
            selector,
        } => delete(&mut ctx, &args, &files, selector.as_deref()).await,
    }
}

async fn set_unschedulable(ctx: &mut Ctx, node: &str, value: bool) -> Result<()> {
    let res = ctx.resource("nodes").await?;
    let url = res.url(None, Some(node));
    let current = ctx.get_json(&url).await?;
    let verb = if value { "cordoned" } else { "uncordoned" };
    if current["spec"]["unschedulable"].as_bool().unwrap_or(false) == value {
        println!("node/{node} already {verb}");
        return Ok(());
    }
    let body = json!({"spec": {"unschedulable": if value { json!(true) } else { Value::Null }}})
        .to_string()
        .into_bytes();
    ctx.send(
        "PATCH",
        &url,
        Some("application/strategic-merge-patch+json"),
        None,
        body,
    )
    .await?;
    println!("node/{node} {verb}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_removes_what_the_last_config_had() {
        let last = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 3}});
        let mut patch = json!({"metadata": {"labels": {"a": "1"}}, "spec": {}});
        add_deletions(&last, &mut patch);
        assert_eq!(
            patch,
            json!({"metadata": {"labels": {"a": "1", "b": null}}, "spec": {"replicas": null}})
        );
    }

    #[test]
    fn create_deployment_matches_kubectl_shape() {
        let d = deployment("server", "registry.local/toolbox:1", 2, Some(8080));
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["name"],
            "toolbox"
        );
        assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "server");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
            8080
        );
    }
}
