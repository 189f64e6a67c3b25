//! `apply`, `create` and the objects `create deployment|service` and `expose` make.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::client::{Ctx, Resource};

/// Reads YAML or JSON documents from files, directories (their .yaml/.yml/.json files) or `-`.
pub(crate) fn read_documents(sources: &[String]) -> Result<Vec<Value>> {
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

pub(crate) async fn target(
    ctx: &mut Ctx,
    obj: &Value,
) -> Result<(Resource, Option<String>, String)> {
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

pub(crate) async fn post(ctx: &mut Ctx, obj: Value) -> Result<Value> {
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

pub(crate) async fn create(ctx: &mut Ctx, obj: Value) -> Result<()> {
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
pub(crate) async fn apply(ctx: &mut Ctx, mut obj: Value) -> Result<String> {
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
pub(crate) fn add_deletions(last: &Value, patch: &mut Value) {
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

pub(crate) fn deployment(name: &str, image: &str, replicas: i32, port: Option<i32>) -> Value {
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

pub(crate) fn service(
    name: &str,
    tcp: &[String],
    kind: &str,
    node_port: Option<i32>,
) -> Result<Value> {
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
