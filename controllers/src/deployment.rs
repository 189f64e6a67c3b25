//! The Deployment controller: one ReplicaSet per pod template (named and labelled by
//! the template's hash), rolling updates within maxSurge/maxUnavailable, Recreate,
//! revision history for `kubectl rollout history/undo`, and status with conditions.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::owner::{controller_of, controller_ref, name, namespace};
use crate::{Error, Informers};

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";

struct Ctx {
    client: kube::Client,
    inf: Arc<Informers>,
}

pub async fn run(client: kube::Client, inf: Arc<Informers>, cancel: CancellationToken) {
    let ctx = Arc::new(Ctx {
        client,
        inf: inf.clone(),
    });
    let owned = inf
        .replicasets
        .subscribe_as("deployment")
        .filter_map(|rs: Arc<ReplicaSet>| {
            let owner = controller_of(&rs.metadata)
                .filter(|r| r.kind == "Deployment")
                .map(|r| ObjectRef::<Deployment>::new(&r.name).within(namespace(&rs.metadata)));
            futures::future::ready(owner)
        });
    Controller::for_shared_stream(
        inf.deployments.subscribe_as("deployment"),
        inf.deployments.store.clone(),
    )
    .reconcile_on(owned)
    .graceful_shutdown_on(async move { cancel.cancelled().await })
    .run(
        reconcile,
        |_, e: &Error, _| {
            tracing::debug!(error = %e, "deployment reconcile failed; retrying");
            Action::requeue(Duration::from_millis(500))
        },
        ctx,
    )
    .for_each(|_| futures::future::ready(()))
    .await;
}

/// FNV-1a of the template, written with Kubernetes' "safe" alphabet (no vowels).
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let mut t = t.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(HASH_LABEL);
    }
    let bytes = serde_json::to_vec(&t).expect("templates serialize");
    let mut h: u32 = 0x811c9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    let mut v = h;
    while out.len() < 10 && (v > 0 || out.is_empty()) {
        out.push(ALPHABET[(v % ALPHABET.len() as u32) as usize] as char);
        v /= ALPHABET.len() as u32;
    }
    out
}

/// maxSurge/maxUnavailable: an absolute number or a percentage of `replicas`
/// (surge rounds up, unavailable rounds down, as Kubernetes does).
pub fn resolve(
    v: Option<&IntOrString>,
    replicas: i32,
    round_up: bool,
    default_percent: i32,
) -> i32 {
    match v {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let pct: i32 = s.trim_end_matches('%').parse().unwrap_or(default_percent);
            let x = i64::from(replicas) * i64::from(pct);
            (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
        }
        None => {
            let x = i64::from(replicas) * i64::from(default_percent);
            (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
        }
    }
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

async fn scale(
    api: &Api<ReplicaSet>,
    rs: &ReplicaSet,
    to: i32,
    d_replicas: i32,
    max_surge: i32,
) -> Result<(), Error> {
    if replicas(rs) == to {
        return Ok(());
    }
    let patch = json!({
        "metadata": {"annotations": {
            "deployment.kubernetes.io/desired-replicas": d_replicas.to_string(),
            "deployment.kubernetes.io/max-replicas": (d_replicas + max_surge).to_string(),
        }},
        "spec": {"replicas": to},
    });
    api.patch(
        name(&rs.metadata),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await?;
    Ok(())
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = namespace(&d.metadata).to_string();
    let d_name = name(&d.metadata).to_string();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let spec = d
        .spec
        .as_ref()
        .ok_or_else(|| Error::Invalid("deployment without spec".into()))?;
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let want = spec.replicas.unwrap_or(1);

    let mut owned: Vec<Arc<ReplicaSet>> = ctx.inf.replicasets.by_owner(&uid);
    owned.sort_by_key(|rs| revision(rs));
    let hash = template_hash(&spec.template);
    let max_revision = owned.iter().map(|rs| revision(rs)).max().unwrap_or(0);

    let new_rs = match owned
        .iter()
        .find(|rs| rs.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL)) == Some(&hash))
    {
        Some(rs) => {
            // A rollback makes an old ReplicaSet the new one again: it takes the next revision.
            if revision(rs) < max_revision {
                let patch = json!({"metadata": {"annotations": {REVISION: (max_revision + 1).to_string()}}});
                rs_api
                    .patch(
                        name(&rs.metadata),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await?;
            }
            rs.as_ref().clone()
        }
        None => {
            let mut template = spec.template.clone();
            let tmeta = template.metadata.get_or_insert_with(ObjectMeta::default);
            tmeta
                .labels
                .get_or_insert_with(Default::default)
                .insert(HASH_LABEL.into(), hash.clone());
            let mut selector = spec.selector.clone();
            selector
                .match_labels
                .get_or_insert_with(Default::default)
                .insert(HASH_LABEL.into(), hash.clone());
            let mut annotations = d.metadata.annotations.clone().unwrap_or_default();
            annotations.remove(tinykube_api::constants::LAST_APPLIED_ANNOTATION);
            annotations.insert(REVISION.into(), (max_revision + 1).to_string());
            let rs = ReplicaSet {
                metadata: ObjectMeta {
                    name: Some(format!("{d_name}-{hash}")),
                    namespace: Some(ns.clone()),
                    labels: tmeta.labels.clone(),
                    annotations: Some(annotations),
                    owner_references: Some(vec![controller_ref(d.as_ref())]),
                    ..Default::default()
                },
                spec: Some(ReplicaSetSpec {
                    replicas: Some(0),
                    min_ready_seconds: spec.min_ready_seconds,
                    selector,
                    template: Some(template),
                }),
                status: None,
            };
            match rs_api.create(&PostParams::default(), &rs).await {
                Ok(created) => created,
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    rs_api.get(&format!("{d_name}-{hash}")).await?
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let new_name = name(&new_rs.metadata).to_string();
    // The Deployment carries its current revision, which `kubectl rollout undo` reads.
    // (A rolled-back ReplicaSet was just given max_revision + 1; the cached copy is older.)
    let current_revision = if revision(&new_rs) < max_revision {
        max_revision + 1
    } else {
        revision(&new_rs)
    };
    let shown = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .cloned();
    if shown.as_deref() != Some(current_revision.to_string().as_str()) {
        let d_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"metadata": {"annotations": {REVISION: current_revision.to_string()}}});
        d_api
            .patch(&d_name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    let old: Vec<&Arc<ReplicaSet>> = owned
        .iter()
        .filter(|rs| name(&rs.metadata) != new_name)
        .collect();

    let strategy = spec.strategy.as_ref();
    let recreate = strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    let mut max_surge = resolve(ru.and_then(|r| r.max_surge.as_ref()), want, true, 25);
    let mut max_unavailable = resolve(ru.and_then(|r| r.max_unavailable.as_ref()), want, false, 25);
    if recreate {
        max_surge = 0;
        max_unavailable = want;
    } else if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }

    if recreate {
        let old_running: i32 = old
            .iter()
            .map(|rs| rs.status.as_ref().map_or(0, |s| s.replicas))
            .sum();
        for rs in &old {
            scale(&rs_api, rs, 0, want, 0).await?;
        }
        if old_running == 0 {
            scale(&rs_api, &new_rs, want, want, 0).await?;
        }
    } else {
        // Scale the new ReplicaSet up within maxSurge.
        let total: i32 = replicas(&new_rs) + old.iter().map(|rs| replicas(rs)).sum::<i32>();
        let new_replicas = replicas(&new_rs);
        if new_replicas > want {
            scale(&rs_api, &new_rs, want, want, max_surge).await?;
        } else if new_replicas < want && total < want + max_surge {
            let up = (want + max_surge - total).min(want - new_replicas);
            scale(&rs_api, &new_rs, new_replicas + up, want, max_surge).await?;
        }
        // Scale old ReplicaSets down while keeping want - maxUnavailable available.
        let old_count: i32 = old.iter().map(|rs| replicas(rs)).sum();
        if old_count > 0 {
            let all_pods = total;
            let min_available = want - max_unavailable;
            let new_unavailable = (replicas(&new_rs) - available(&new_rs)).max(0);
            let mut budget = all_pods - min_available - new_unavailable;
            let mut old_sorted = old.clone();
            old_sorted.sort_by_key(|rs| revision(rs));
            // Unhealthy old pods first, then healthy ones.
            let mut targets: Vec<i32> = old_sorted.iter().map(|rs| replicas(rs)).collect();
            for (i, rs) in old_sorted.iter().enumerate() {
                if budget <= 0 {
                    break;
                }
                let unhealthy = (targets[i] - available(rs)).max(0).min(budget);
                targets[i] -= unhealthy;
                budget -= unhealthy;
            }
            let available_now: i32 =
                available(&new_rs) + old_sorted.iter().map(|rs| available(rs)).sum::<i32>();
            let mut healthy_budget = (available_now - min_available).min(budget).max(0);
            for t in targets.iter_mut() {
                if healthy_budget <= 0 {
                    break;
                }
                let down = (*t).min(healthy_budget);
                *t -= down;
                healthy_budget -= down;
            }
            for (rs, t) in old_sorted.iter().zip(targets) {
                scale(&rs_api, rs, t, want, max_surge).await?;
            }
        }
    }

    // Old ReplicaSets past revisionHistoryLimit go once they are empty.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let empty_old: Vec<&&Arc<ReplicaSet>> = old
        .iter()
        .filter(|rs| replicas(rs) == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0))
        .collect();
    if empty_old.len() > limit {
        for rs in &empty_old[..empty_old.len() - limit] {
            let _ = rs_api
                .delete(name(&rs.metadata), &DeleteParams::background())
                .await;
        }
    }

    update_status(&ctx, &d, &new_rs, &old, want, max_unavailable).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

async fn update_status(
    ctx: &Ctx,
    d: &Deployment,
    new_rs: &ReplicaSet,
    old: &[&Arc<ReplicaSet>],
    want: i32,
    max_unavailable: i32,
) -> Result<(), Error> {
    let all: Vec<&ReplicaSet> = std::iter::once(new_rs)
        .chain(old.iter().map(|r| r.as_ref()))
        .collect();
    let st = |f: &dyn Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> i32| -> i32 {
        all.iter().filter_map(|rs| rs.status.as_ref()).map(f).sum()
    };
    let replicas_now = st(&|s| s.replicas);
    let ready = st(&|s| s.ready_replicas.unwrap_or(0));
    let avail = st(&|s| s.available_replicas.unwrap_or(0));
    let updated = new_rs.status.as_ref().map_or(0, |s| s.replicas);
    let complete = updated == want && replicas_now == want && avail == want;
    let now = tinykube_api::format::now_rfc3339();
    let prev = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let condition = |kind: &str, ok: bool, reason: &str, message: String| -> Value {
        let old = prev.iter().find(|c| c.type_ == kind);
        let status = if ok { "True" } else { "False" };
        let transition = match old {
            Some(c) if c.status == status => c
                .last_transition_time
                .as_ref()
                .map(|t| tinykube_api::format::rfc3339(t.0))
                .unwrap_or(now.clone()),
            _ => now.clone(),
        };
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastUpdateTime": now, "lastTransitionTime": transition})
    };
    let available_ok = avail >= want - max_unavailable;
    let conditions = vec![
        condition(
            "Available",
            available_ok,
            if available_ok {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            },
            if available_ok {
                "Deployment has minimum availability.".into()
            } else {
                "Deployment does not have minimum availability.".into()
            },
        ),
        condition(
            "Progressing",
            true,
            if complete {
                "NewReplicaSetAvailable"
            } else {
                "ReplicaSetUpdated"
            },
            if complete {
                format!(
                    "ReplicaSet \"{}\" has successfully progressed.",
                    name(&new_rs.metadata)
                )
            } else {
                format!("ReplicaSet \"{}\" is progressing.", name(&new_rs.metadata))
            },
        ),
    ];
    let cur = d.status.as_ref();
    let unchanged = cur.is_some_and(|s| {
        s.replicas == Some(replicas_now)
            && s.updated_replicas == Some(updated)
            && s.ready_replicas == Some(ready)
            && s.available_replicas == Some(avail)
            && s.observed_generation == d.metadata.generation
            && s.conditions.as_ref().is_some_and(|c| {
                c.iter()
                    .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()))
                    .collect::<Vec<_>>()
                    == conditions
                        .iter()
                        .map(|c| {
                            (
                                c["type"].as_str().unwrap(),
                                c["status"].as_str().unwrap(),
                                c["reason"].as_str(),
                            )
                        })
                        .collect::<Vec<_>>()
            })
    });
    if unchanged {
        return Ok(());
    }
    let status = json!({
        "replicas": replicas_now,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": avail,
        "unavailableReplicas": (want - avail).max(0),
        "observedGeneration": d.metadata.generation,
        "conditions": conditions,
    });
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace(&d.metadata));
    api.patch_status(
        name(&d.metadata),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(resolve(Some(&pct), 6, true, 25), 2);
        assert_eq!(resolve(Some(&pct), 6, false, 25), 1);
        assert_eq!(resolve(Some(&IntOrString::Int(3)), 6, false, 25), 3);
        assert_eq!(resolve(None, 10, true, 25), 3);
    }

    #[test]
    fn template_hash_ignores_its_own_label_and_follows_the_template() {
        let mut t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "a"}]}}))
        .unwrap();
        let h = template_hash(&t);
        t.metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(HASH_LABEL.into(), h.clone());
        assert_eq!(template_hash(&t), h);
        t.spec.as_mut().unwrap().containers[0].image = Some("b".into());
        assert_ne!(template_hash(&t), h);
        assert!(h.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
