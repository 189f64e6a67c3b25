//! `get` (tables, -o yaml|json|name|wide, -w) and `describe`.

use anyhow::{Context, Result, anyhow, bail};
use futures::AsyncBufReadExt;
use serde_json::{Value, json};

use crate::client::{Ctx, Resource};
use crate::{TABLE_ACCEPT, client, print};

/// `TYPE NAME...` or `TYPE/NAME...`.
pub(crate) async fn type_and_names(
    ctx: &mut Ctx,
    args: &[String],
) -> Result<(Resource, Vec<String>)> {
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

pub(crate) async fn get(
    ctx: &mut Ctx,
    args: &[String],
    output: Option<&str>,
    selector: Option<&str>,
    all: bool,
    // Some(events) to watch; events: with the event type in a first column.
    watch: Option<bool>,
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
            let events = watch == Some(true);
            if rows == 0 && watch.is_none() {
                match &ns {
                    Some(n) => eprintln!("No resources found in {n} namespace."),
                    None => eprintln!("No resources found"),
                }
            } else {
                let lines = print::table(&body, wide, all && res.namespaced, true);
                for (i, line) in lines.iter().enumerate() {
                    match (events, i) {
                        (false, _) => println!("{line}"),
                        (true, 0) => println!("{:<9}{line}", "EVENT"),
                        (true, _) => println!("{:<9}{line}", "ADDED"),
                    }
                }
            }
            if watch.is_some() {
                let rv = body["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let w = Watch { wide, all, events };
                return watch_table(ctx, &res, ns.as_deref(), &query, &rv, w).await;
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
        Some(other) if other.starts_with("custom-columns=") => {
            let spec = other.trim_start_matches("custom-columns=");
            for line in print::custom_columns(spec, &objects)? {
                println!("{line}");
            }
        }
        Some(other) if other.starts_with("jsonpath=") => {
            let template = other.trim_start_matches("jsonpath=");
            let v = if single {
                objects.remove(0)
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": objects})
            };
            print!("{}", print::jsonpath(template, &v)?);
        }
        Some(other) => bail!(
            "unable to match a printer suitable for the output format \"{other}\", allowed formats are: custom-columns,json,jsonpath,name,wide,yaml"
        ),
        None => unreachable!("tables are printed above"),
    }
    Ok(())
}

/// How a watch prints: wide columns, the namespace column, the event type.
#[derive(Clone, Copy)]
pub(crate) struct Watch {
    pub wide: bool,
    pub all: bool,
    pub events: bool,
}

pub(crate) async fn watch_table(
    ctx: &Ctx,
    res: &Resource,
    ns: Option<&str>,
    query: &[String],
    rv: &str,
    w: Watch,
) -> Result<()> {
    let Watch { wide, all, events } = w;
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
            if events {
                println!("{:<9}{l}", ev["type"].as_str().unwrap_or_default());
            } else {
                println!("{l}");
            }
        }
    }
    Ok(())
}

pub(crate) async fn describe(ctx: &mut Ctx, args: &[String]) -> Result<()> {
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
