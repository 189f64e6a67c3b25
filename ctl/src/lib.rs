//! `tinykube ctl`: a kubectl-like CLI for the common verbs.

mod client;
mod print;

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use futures::AsyncBufReadExt;
use serde_json::{Value, json};

use client::{Ctx, Resource};

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

/// `TYPE NAME...` or `TYPE/NAME...`.
async fn type_and_names(ctx: &mut Ctx, args: &[String]) -> Result<(Resource, Vec<String>)> {
    let first = args
        .first()
        .ok_or_else(|| anyhow!("you must specify the type of resource"))?;
    if let Some((t, n)) = first.split_once('/') {
        let res = ctx.resource(t).await?;
        let mut names = vec![n.to_string()];
        for a in &args[1..] {
            let (t2, n2) = a.split_once('/').ok_or_else(|| anyhow!("there is no need to specify a resource type as a separate argument when passing arguments in resource/name form"))?;
            if ctx.resource(t2).await?.plural != res.plural {
                bail!("mixing resource types in one command is not supported");
            }
            names.push(n2.to_string());
        }
        return Ok((res, names));
    }
    let res = ctx.resource(first).await?;
    Ok((res, args[1..].to_vec()))
}

async fn get(
    ctx: &mut Ctx,
    args: &[String],
    output: Option<&str>,
    selector: Option<&str>,
    all: bool,
    watch: bool,
) -> Result<()> {
    let (res, names) = type_and_names(ctx, args).await?;
    let ns = if all || !res.namespaced {
        None
    } else {
        Some(ctx.namespace.clone())
    };
    let mut query = Vec::new();
    if let Some(s) = selector {
        query.push(format!("labelSelector={}", tinykube_api::query::encode(s)));
    }
    let wide = output == Some("wide");
    let table_output = output.is_none() || wide;
    let mut objects = Vec::new();
    if names.is_empty() {
        let url = format!("{}?{}", res.url(ns.as_deref(), None), query.join("&"));
        let accept = if table_output {
            TABLE_ACCEPT
        } else {
            "application/json"
        };
        let body = ctx
            .send("GET", &url, None, Some(accept), Vec::new())
            .await?;
        if table_output {
            let rows = body["rows"].as_array().map_or(0, Vec::len);
            if rows == 0 && !watch {
                match &ns {
                    Some(n) => eprintln!("No resources found in {n} namespace."),
                    None => eprintln!("No resources found"),
                }
            } else {
                for line in print::table(&body, wide, all && res.namespaced, true) {
                    println!("{line}");
                }
            }
            if watch {
                let rv = body["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                return watch_table(ctx, &res, ns.as_deref(), &query, &rv, wide, all).await;
            }
            return Ok(());
        }
        objects = body["items"].as_array().cloned().unwrap_or_default();
        for o in &mut objects {
            o["apiVersion"] = json!(if res.group.is_empty() {
                res.version.clone()
            } else {
                format!("{}/{}", res.group, res.version)
            });
            o["kind"] = json!(res.kind);
        }
    } else {
        let mut tables = Vec::new();
        for n in &names {
            let url = res.url(ns.as_deref(), Some(n));
            if table_output {
                tables.push(
                    ctx.send("GET", &url, None, Some(TABLE_ACCEPT), Vec::new())
                        .await?,
                );
            } else {
                objects.push(ctx.get_json(&url).await?);
            }
        }
        if table_output {
            let mut merged = tables.first().cloned().unwrap_or(json!({}));
            merged["rows"] = Value::Array(
                tables
                    .iter()
                    .flat_map(|t| t["rows"].as_array().cloned().unwrap_or_default())
                    .collect(),
            );
            for line in print::table(&merged, wide, false, true) {
                println!("{line}");
            }
            return Ok(());
        }
    }
    let single = !names.is_empty() && names.len() == 1;
    match output {
        Some("json") => {
            let v = if single {
                objects.remove(0)
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": objects, "metadata": {"resourceVersion": ""}})
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Some("yaml") => {
            let v = if single {
                objects.remove(0)
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": objects, "metadata": {"resourceVersion": ""}})
            };
            print!("{}", print::yaml(&v));
        }
        Some("name") => {
            for o in &objects {
                println!(
                    "{}/{}",
                    res.type_name(),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                );
            }
        }
        Some(other) => bail!(
            "unable to match a printer suitable for the output format \"{other}\", allowed formats are: json,name,wide,yaml"
        ),
        None => unreachable!("tables are printed above"),
    }
    Ok(())
}

async fn watch_table(
    ctx: &Ctx,
    res: &Resource,
    ns: Option<&str>,
    query: &[String],
    rv: &str,
    wide: bool,
    all: bool,
) -> Result<()> {
    let mut q = query.to_vec();
    q.push("watch=true".into());
    q.push(format!("resourceVersion={rv}"));
    let url = format!("{}?{}", res.url(ns, None), q.join("&"));
    let req = http::Request::builder()
        .method("GET")
        .uri(url)
        .header(http::header::ACCEPT, TABLE_ACCEPT)
        .body(Vec::new())?;
    let stream = ctx
        .client
        .request_stream(req)
        .await
        .map_err(client::server_error)?;
    let mut lines = stream.lines();
    let mut defs = Value::Null;
    use futures::StreamExt;
    while let Some(line) = lines.next().await {
        let line = line.context("the watch stream broke")?;
        let ev: Value = serde_json::from_str(&line)
            .context("the server sent a watch event that is not JSON")?;
        if ev["type"] == "ERROR" {
            bail!(
                "Error from server: {}",
                ev["object"]["message"].as_str().unwrap_or_default()
            );
        }
        let mut t = ev["object"].clone();
        if t["columnDefinitions"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
        {
            defs = t["columnDefinitions"].clone();
        } else {
            t["columnDefinitions"] = defs.clone();
        }
        for l in print::table(&t, wide, all && res.namespaced, false) {
            println!("{l}");
        }
    }
    Ok(())
}

async fn describe(ctx: &mut Ctx, args: &[String]) -> Result<()> {
    let (res, names) = type_and_names(ctx, args).await?;
    if names.is_empty() {
        bail!("describe needs a name");
    }
    for name in names {
        let obj = ctx
            .get_json(&res.url(Some(&ctx.namespace), Some(&name)))
            .await?;
        let meta = &obj["metadata"];
        println!(
            "Name:         {}",
            meta["name"].as_str().unwrap_or_default()
        );
        if res.namespaced {
            println!(
                "Namespace:    {}",
                meta["namespace"].as_str().unwrap_or_default()
            );
        }
        for (title, key) in [("Labels:", "labels"), ("Annotations:", "annotations")] {
            let map = meta[key].as_object().cloned().unwrap_or_default();
            if map.is_empty() {
                println!("{title:<14}<none>");
            }
            for (i, (k, v)) in map.iter().enumerate() {
                let head = if i == 0 { title } else { "" };
                println!("{head:<14}{k}={}", v.as_str().unwrap_or_default());
            }
        }
        println!(
            "CreationTimestamp:  {}",
            meta["creationTimestamp"].as_str().unwrap_or_default()
        );
        for section in ["spec", "status", "subsets", "data"] {
            if let Some(v) = obj.get(section).filter(|v| !v.is_null()) {
                println!("{}:", section[..1].to_uppercase() + &section[1..]);
                for line in print::yaml(v).lines() {
                    println!("  {line}");
                }
            }
        }
        let selector = format!(
            "involvedObject.name={name},involvedObject.kind={}",
            res.kind
        );
        let events_url = format!(
            "/api/v1/namespaces/{}/events?fieldSelector={}",
            ctx.namespace,
            tinykube_api::query::encode(&selector)
        );
        let events = ctx.get_json(&events_url).await.unwrap_or(json!({}));
        let items = events["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            println!("Events:       <none>");
        } else {
            println!("Events:");
            let mut rows = vec![vec!["Type".to_string(), "Reason".into(), "Message".into()]];
            for e in items {
                rows.push(vec![
                    e["type"].as_str().unwrap_or_default().into(),
                    e["reason"].as_str().unwrap_or_default().into(),
                    e["message"].as_str().unwrap_or_default().into(),
                ]);
            }
            for l in print::align(&rows) {
                println!("  {l}");
            }
        }
    }
    Ok(())
}

/// Reads YAML or JSON documents from files, directories (their .yaml/.yml/.json files) or `-`.
fn read_documents(sources: &[String]) -> Result<Vec<Value>> {
    let mut texts = Vec::new();
    for s in sources {
        if s == "-" {
            let mut buf = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf)
                .context("cannot read standard input")?;
            texts.push(("stdin".to_string(), buf));
            continue;
        }
        let path = PathBuf::from(s);
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&path)
                .with_context(|| format!("cannot read directory {s}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                })
                .collect();
            entries.sort();
            for p in entries {
                let t = std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                texts.push((p.display().to_string(), t));
            }
        } else {
            let t = std::fs::read_to_string(&path)
                .with_context(|| format!("the path \"{s}\" does not exist"))?;
            texts.push((s.clone(), t));
        }
    }
    let mut docs = Vec::new();
    for (name, text) in texts {
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| {
            // The parser's message carries a source excerpt; its first line says it all.
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_string();
            anyhow!("error parsing {name}: {first}")
        })?;
        for doc in parsed.into_iter().filter(|d| !d.is_null()) {
            if doc["kind"] == "List" {
                docs.extend(doc["items"].as_array().cloned().unwrap_or_default());
            } else {
                docs.push(doc);
            }
        }
    }
    Ok(docs)
}

async fn target(ctx: &mut Ctx, obj: &Value) -> Result<(Resource, Option<String>, String)> {
    let kind = obj["kind"]
        .as_str()
        .ok_or_else(|| anyhow!("error validating data: kind not set"))?;
    let api_version = obj["apiVersion"]
        .as_str()
        .ok_or_else(|| anyhow!("error validating data: apiVersion not set"))?;
    let res = ctx.resource_for_kind(api_version, kind).await?;
    let ns = res.namespaced.then(|| {
        obj["metadata"]["namespace"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| ctx.namespace.clone())
    });
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((res, ns, name))
}

async fn post(ctx: &mut Ctx, obj: Value) -> Result<Value> {
    let (res, ns, _) = target(ctx, &obj).await?;
    let url = format!("{}?fieldValidation=Strict", res.url(ns.as_deref(), None));
    ctx.send(
        "POST",
        &url,
        Some("application/json"),
        None,
        serde_json::to_vec(&obj)?,
    )
    .await
}

async fn create(ctx: &mut Ctx, obj: Value) -> Result<()> {
    let (res, _, _) = target(ctx, &obj).await?;
    let created = post(ctx, obj).await?;
    println!(
        "{}/{} created",
        res.type_name(),
        created["metadata"]["name"].as_str().unwrap_or_default()
    );
    Ok(())
}

/// Client-side apply: create with the last-applied annotation, or patch with a
/// three-way merge patch (new config, plus removals of what the last config had).
async fn apply(ctx: &mut Ctx, mut obj: Value) -> Result<String> {
    let (res, ns, name) = target(ctx, &obj).await?;
    if name.is_empty() {
        bail!("error when retrieving current configuration: resource name may not be empty");
    }
    let annotation = "kubectl.kubernetes.io/last-applied-configuration";
    let config = serde_json::to_string(&obj)?;
    obj["metadata"]["annotations"][annotation] = json!(config);
    let url = res.url(ns.as_deref(), Some(&name));
    let current = match ctx.get_json(&url).await {
        Ok(c) => c,
        Err(e) if e.to_string().contains("(NotFound)") => {
            let body = serde_json::to_vec(&obj)?;
            let coll = format!("{}?fieldValidation=Strict", res.url(ns.as_deref(), None));
            ctx.send("POST", &coll, Some("application/json"), None, body)
                .await?;
            return Ok(format!("{}/{name} created", res.type_name()));
        }
        Err(e) => return Err(e),
    };
    let last: Value = current["metadata"]["annotations"][annotation]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(json!({}));
    let mut patch = obj.clone();
    add_deletions(&last, &mut patch);
    let after = ctx
        .merge_patch(&format!("{url}?fieldValidation=Strict"), &patch)
        .await?;
    let changed = current["metadata"]["resourceVersion"] != after["metadata"]["resourceVersion"];
    Ok(format!(
        "{}/{name} {}",
        res.type_name(),
        if changed { "configured" } else { "unchanged" }
    ))
}

/// Sets to null every map key the last applied configuration had and the new one drops.
fn add_deletions(last: &Value, patch: &mut Value) {
    if let (Value::Object(l), Value::Object(p)) = (last, patch) {
        for (k, lv) in l {
            match p.get_mut(k) {
                None => {
                    p.insert(k.clone(), Value::Null);
                }
                Some(pv) => add_deletions(lv, pv),
            }
        }
    }
}

fn deployment(name: &str, image: &str, replicas: i32, port: Option<i32>) -> Value {
    let container_name = image
        .rsplit('/')
        .next()
        .unwrap_or(image)
        .split([':', '@'])
        .next()
        .unwrap_or(image);
    let mut container = json!({"name": container_name, "image": image});
    if let Some(p) = port {
        container["ports"] = json!([{"containerPort": p}]);
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}}})
}

fn service(name: &str, tcp: &[String], kind: &str, node_port: Option<i32>) -> Result<Value> {
    let mut ports = Vec::new();
    for spec in tcp {
        let (port, target) = spec.split_once(':').unwrap_or((spec, spec));
        let port: i32 = port
            .parse()
            .map_err(|_| anyhow!("invalid port {port:?} in --tcp={spec}"))?;
        let target: i32 = target
            .parse()
            .map_err(|_| anyhow!("invalid target port {target:?} in --tcp={spec}"))?;
        let mut p = json!({"name": format!("{port}-{target}"), "port": port, "targetPort": target, "protocol": "TCP"});
        if let Some(np) = node_port {
            p["nodePort"] = json!(np);
        }
        ports.push(p);
    }
    Ok(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"type": kind, "selector": {"app": name}, "ports": ports}}),
    )
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

async fn delete(
    ctx: &mut Ctx,
    args: &[String],
    files: &[String],
    selector: Option<&str>,
) -> Result<()> {
    let mut targets: Vec<(Resource, Option<String>, String)> = Vec::new();
    for doc in read_documents(files)? {
        targets.push(target(ctx, &doc).await?);
    }
    if !args.is_empty() {
        let (res, names) = type_and_names(ctx, args).await?;
        let ns = res.namespaced.then(|| ctx.namespace.clone());
        if names.is_empty() {
            let Some(sel) = selector else {
                bail!("resource(s) were provided, but no name was specified")
            };
            let list = ctx
                .get_json(&format!(
                    "{}?labelSelector={}",
                    res.url(ns.as_deref(), None),
                    tinykube_api::query::encode(sel)
                ))
                .await?;
            for item in list["items"].as_array().into_iter().flatten() {
                targets.push((
                    res.clone(),
                    ns.clone(),
                    item["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ));
            }
            if targets.is_empty() {
                eprintln!("No resources found");
            }
        }
        for n in names {
            targets.push((res.clone(), ns.clone(), n));
        }
    }
    client::ensure(
        !targets.is_empty() || selector.is_some(),
        "you must provide one or more resources by argument or filename",
    )?;
    for (res, ns, name) in targets {
        ctx.send(
            "DELETE",
            &res.url(ns.as_deref(), Some(&name)),
            None,
            None,
            Vec::new(),
        )
        .await?;
        println!("{} \"{name}\" deleted", res.type_name());
    }
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
