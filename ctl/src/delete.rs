//! `delete` by type and name, by file, or by selector.

use anyhow::{Result, bail};

use crate::apply::{read_documents, target};
use crate::client;
use crate::client::{Ctx, Resource};
use crate::get::type_and_names;

pub(crate) async fn delete(
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
