//! `rollout status|history|undo` of a deployment, with kubectl's messages.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};

use crate::client::Ctx;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
