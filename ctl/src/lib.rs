//! `tinykube ctl`: a kubectl-like CLI for the common verbs.

mod access;
mod apply;
mod client;
mod dashboard;
mod delete;
mod get;
mod inspect;
mod nodes;
mod print;
mod rollout;
mod trace;
mod workload;

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
    /// Act as this user (impersonation).
    #[arg(long = "as", global = true)]
    as_user: Option<String>,
    /// Act as a member of this group (with --as).
    #[arg(long = "as-group", global = true)]
    as_groups: Vec<String>,
    #[arg(long = "as-uid", global = true)]
    as_uid: Option<String>,
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
        /// With --watch, a first column with the event type (ADDED, MODIFIED, DELETED).
        #[arg(long)]
        output_watch_events: bool,
    },
    /// Show details of a resource.
    Describe { args: Vec<String> },
    /// Approve or deny certificate signing requests.
    Certificate {
        #[command(subcommand)]
        what: access::CertificateCmd,
    },
    /// Inspect what you may do (can-i) and who you are (whoami).
    Auth {
        #[command(subcommand)]
        what: access::AuthCmd,
    },
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
        /// The Service's name (default: the exposed object's).
        #[arg(long = "name")]
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
    /// Print the logs of a container in a pod (POD, pod/POD or deployment/NAME).
    Logs {
        target: String,
        #[command(flatten)]
        opts: workload::LogsOptions,
    },
    /// Execute a command in a container: exec POD [-c C] [-i] -- COMMAND [ARGS...].
    Exec {
        target: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Pass standard input to the command.
        #[arg(short = 'i', long)]
        stdin: bool,
        /// Accepted for kubectl's `-it`; the command runs without a terminal.
        #[arg(short = 't', long)]
        tty: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Create and run an image in a pod: run NAME --image=IMAGE [-- ARGS...].
    Run {
        name: String,
        #[command(flatten)]
        opts: workload::RunOptions,
        /// client: print the pod (-o yaml|json) without creating it.
        #[arg(long)]
        dry_run: Option<String>,
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
    /// Manage the rollout of a deployment: status, history, undo.
    Rollout {
        #[command(subcommand)]
        what: RolloutCmd,
    },
    /// Add (key=value:Effect) or remove (key:Effect-) taints on a node.
    Taint {
        kind: String,
        node: String,
        taints: Vec<String>,
        #[arg(long)]
        overwrite: bool,
    },
    /// Cordon a node and evict its pods.
    Drain {
        node: String,
        #[command(flatten)]
        opts: nodes::DrainOptions,
    },
    /// Print the client and server versions.
    Version,
    /// The path a packet from pod FROM takes to TO (a pod, a service or an address,
    /// with :PORT), hop by hop; --probe sends a real connection and shows the counters
    /// that moved.
    Trace {
        from: String,
        to: String,
        #[arg(long)]
        probe: bool,
    },
    /// Serve a live map of the cluster on 127.0.0.1 (open it in a browser).
    Dashboard {
        /// The port on 127.0.0.1 (0: any free one).
        #[arg(long, default_value_t = 8001)]
        port: u16,
    },
    /// Show what a pod, node or service is made of on the nodes: namespaces, veths,
    /// bridges, routes, the overlay, the proxy's rules and their counters.
    Inspect {
        #[command(subcommand)]
        what: InspectCmd,
    },
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
enum InspectCmd {
    /// The sandbox, each container's namespaces, cgroup and logs, eth0 and its veth.
    Pod {
        name: String,
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
    /// The podCIDR, the bridge and its ports, routes, overlay peers, service rules, DNS.
    Node {
        name: String,
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
    /// Ports, endpoints and their nodes, and each node's chain of rules with counters.
    #[command(alias = "svc")]
    Service {
        name: String,
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
    /// Why USER (or sa:NAMESPACE:NAME) may or may not VERB RESOURCE (TYPE, TYPE/NAME or
    /// a /path): the binding, role and rule that grant it, or the closest rules and why
    /// they did not match.
    Access {
        who: String,
        verb: String,
        resource: String,
        /// A group the user is in besides system:authenticated (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long)]
        subresource: Option<String>,
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum RolloutCmd {
    /// Watch a rollout until it is done.
    Status {
        /// deployment/NAME, or deployment NAME
        args: Vec<String>,
        /// Give up after this long (e.g. 60s, 2m; 0: wait for ever).
        #[arg(long, default_value = "0s")]
        timeout: String,
    },
    /// The revisions of a deployment.
    History { args: Vec<String> },
    /// Go back to the previous revision (or --to-revision).
    Undo {
        args: Vec<String>,
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
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
    /// Create a role: --verb=get,list --resource=pods.
    Role(access::RoleArgs),
    /// Create a cluster role: --verb, --resource, --non-resource-url.
    Clusterrole(access::RoleArgs),
    /// Bind a role or cluster role in a namespace: --role|--clusterrole, --user,
    /// --group, --serviceaccount NS:NAME.
    Rolebinding(access::BindingArgs),
    /// Bind a cluster role cluster-wide.
    Clusterrolebinding(access::BindingArgs),
    /// Create a service account.
    #[command(alias = "sa")]
    Serviceaccount { name: String },
    /// Request a service account token (TokenRequest): --duration, --audience,
    /// --bound-object-kind Pod|Secret|Node --bound-object-name NAME.
    Token(access::TokenArgs),
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
    let impersonate = client::Impersonate {
        user: args.as_user,
        groups: args.as_groups,
        uid: args.as_uid,
    };
    let mut ctx = Ctx::connect(args.kubeconfig, args.namespace, impersonate).await?;
    match args.command {
        Cmd::Get {
            args,
            output,
            selector,
            all_namespaces,
            watch,
            output_watch_events,
        } => {
            get(
                &mut ctx,
                &args,
                output.as_deref(),
                selector.as_deref(),
                all_namespaces,
                watch.then_some(output_watch_events),
            )
            .await
        }
        Cmd::Logs { target, opts } => workload::logs(&mut ctx, &target, opts).await,
        Cmd::Exec {
            target,
            container,
            stdin,
            tty: _,
            command,
        } => {
            let code = workload::exec(&mut ctx, &target, container, stdin, &command).await?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Cmd::Run {
            name,
            opts,
            dry_run,
            output,
        } => {
            let pod = workload::run_pod(&name, &opts)?;
            match dry_run.as_deref() {
                Some("client") => match output.as_deref() {
                    Some("yaml") => print!("{}", print::yaml(&pod)),
                    Some("json") => println!("{}", serde_json::to_string_pretty(&pod)?),
                    _ => println!("pod/{name} created (dry run)"),
                },
                Some("none") | None => {
                    post(&mut ctx, pod).await?;
                    println!("pod/{name} created");
                }
                Some(other) => bail!(
                    "Invalid dry-run value ({other}). Must be \"none\", \"server\", or \"client\"."
                ),
            }
            Ok(())
        }
        Cmd::Rollout { what } => match what {
            RolloutCmd::Status { args, timeout } => {
                let timeout = parse_duration(&timeout)?;
                rollout::rollout_status(&mut ctx, &target(&args)?, Some(timeout)).await
            }
            RolloutCmd::History { args } => {
                rollout::rollout_history(&mut ctx, &target(&args)?).await
            }
            RolloutCmd::Undo { args, to_revision } => {
                rollout::rollout_undo(&mut ctx, &target(&args)?, to_revision).await
            }
        },
        Cmd::Taint {
            kind,
            node,
            taints,
            overwrite,
        } => nodes::taint(&mut ctx, &kind, &node, &taints, overwrite).await,
        Cmd::Drain { node, opts } => nodes::drain(&mut ctx, &node, &opts).await,
        Cmd::Version => workload::version(&mut ctx).await,
        Cmd::Dashboard { port } => dashboard::serve(ctx.client.clone(), port).await,
        Cmd::Trace { from, to, probe } => trace::trace(&mut ctx, &from, &to, probe).await,
        Cmd::Inspect { what } => match what {
            InspectCmd::Pod { name, output } => {
                let v = inspect::pod(&mut ctx, &name).await?;
                inspect::output(&v, output.as_deref(), inspect::pod_text)
            }
            InspectCmd::Access {
                who,
                verb,
                resource,
                groups,
                subresource,
                output,
            } => {
                let v = access::inspect(
                    &mut ctx,
                    &who,
                    &groups,
                    &verb,
                    &resource,
                    subresource.as_deref(),
                )
                .await?;
                inspect::output(&v, output.as_deref(), access::explanation_text)
            }
            InspectCmd::Node { name, output } => {
                let v = inspect::node(&mut ctx, &name).await?;
                inspect::output(&v, output.as_deref(), inspect::node_text)
            }
            InspectCmd::Service { name, output } => {
                let v = inspect::service(&mut ctx, &name).await?;
                inspect::output(&v, output.as_deref(), inspect::service_text)
            }
        },
        Cmd::Describe { args } => describe(&mut ctx, &args).await,
        Cmd::Certificate { what } => access::certificate(&mut ctx, &what).await,
        Cmd::Auth { what } => match what {
            access::AuthCmd::Whoami { ref output } => access::whoami(&ctx, output.as_deref()).await,
            ref can_i => {
                if !access::can_i(&mut ctx, can_i).await? {
                    std::process::exit(1);
                }
                Ok(())
            }
        },
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
            Some(CreateCmd::Role(r)) => {
                let obj = access::role(&mut ctx, &r, false).await?;
                create(&mut ctx, obj).await
            }
            Some(CreateCmd::Clusterrole(r)) => {
                let obj = access::role(&mut ctx, &r, true).await?;
                create(&mut ctx, obj).await
            }
            Some(CreateCmd::Rolebinding(b)) => create(&mut ctx, access::binding(&b, false)?).await,
            Some(CreateCmd::Clusterrolebinding(b)) => {
                create(&mut ctx, access::binding(&b, true)?).await
            }
            Some(CreateCmd::Token(args)) => access::token(&mut ctx, &args).await,
            Some(CreateCmd::Serviceaccount { name }) => {
                let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
                create(&mut ctx, sa).await
            }
            None => {
                if files.is_empty() {
                    bail!(
                        "must specify -f or a subcommand (deployment, service, role, rolebinding, ...)"
                    );
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

/// `deployment/web` from `deployment/web` or `deployment web`.
fn target(args: &[String]) -> Result<String> {
    match args {
        [one] => Ok(one.clone()),
        [kind, name] => Ok(format!("{kind}/{name}")),
        _ => bail!("required resource not specified (deployment/NAME)"),
    }
}

/// `90s`, `2m`, `1h` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = n
        .parse()
        .map_err(|_| anyhow!("invalid duration {s:?}: use e.g. 90s, 2m, 1h"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "ms" => n / 1000.0,
        _ => bail!("invalid duration {s:?}: use e.g. 90s, 2m, 1h"),
    };
    Ok(std::time::Duration::from_secs_f64(seconds))
}

pub(crate) async fn set_unschedulable(ctx: &mut Ctx, node: &str, value: bool) -> Result<()> {
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
