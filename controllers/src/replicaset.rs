//! The ReplicaSet controller: keeps `spec.replicas` pods running, adopting matching
//! orphans and releasing pods whose labels no longer match, and reports status.
//!
//! Like Kubernetes' controller it remembers what it created and deleted until the watch
//! cache shows it ("expectations"), so a lagging cache never causes double creates.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use tinykube_api::selector::Selector;
use tokio_util::sync::CancellationToken;

use crate::owner::{controller_of, controller_ref, name, namespace, pod_is_active, pod_is_ready};
use crate::{Error, Informers};

/// How long an expectation is trusted before the cache is believed instead.
const EXPECTATION_TTL: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Expected {
    created: HashMap<String, Instant>,
    deleted: HashMap<String, Instant>,
}

struct Ctx {
    client: kube::Client,
    inf: Arc<Informers>,
    expectations: Mutex<HashMap<String, Expected>>,
}

pub async fn run(client: kube::Client, inf: Arc<Informers>, cancel: CancellationToken) {
    let ctx = Arc::new(Ctx {
        client,
        inf: inf.clone(),
        expectations: Mutex::default(),
    });
    let pods = inf
        .pods
        .subscribe_as("replicaset")
        .filter_map(|p: Arc<Pod>| {
            let owner = controller_of(&p.metadata)
                .filter(|r| r.kind == "ReplicaSet")
                .map(|r| ObjectRef::<ReplicaSet>::new(&r.name).within(namespace(&p.metadata)));
            futures::future::ready(owner)
        });
    Controller::for_shared_stream(
        inf.replicasets.subscribe_as("replicaset"),
        inf.replicasets.store.clone(),
    )
    .reconcile_on(pods)
    .graceful_shutdown_on(async move { cancel.cancelled().await })
    .run(reconcile, error_policy, ctx)
    .for_each(|_| futures::future::ready(()))
    .await;
}

fn error_policy(_rs: Arc<ReplicaSet>, e: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::debug!(error = %e, "replicaset reconcile failed; retrying");
    Action::requeue(Duration::from_millis(500))
}

/// Deletion order, most expendable first: unscheduled, pending, not ready, then newest.
fn deletion_rank(p: &Pod) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    (
        u8::from(scheduled),
        u8::from(running),
        u8::from(pod_is_ready(p)),
        std::cmp::Reverse(created),
    )
}

fn available(p: &Pod, min_ready_seconds: i32) -> bool {
    if !pod_is_ready(p) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    let since = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    since.is_some_and(|t| {
        jiff::Timestamp::now().as_second() - t.as_second() >= i64::from(min_ready_seconds)
    })
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = namespace(&rs.metadata).to_string();
    let rs_name = name(&rs.metadata).to_string();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let spec = rs
        .spec
        .as_ref()
        .ok_or_else(|| Error::Invalid("replicaset without spec".into()))?;
    let selector = Selector::from_label_selector(Some(&spec.selector))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let empty = Default::default();

    let mut owned: Vec<Arc<Pod>> = Vec::new();
    for p in ctx.inf.pods.by_namespace(&ns) {
        let labels = p.metadata.labels.as_ref().unwrap_or(&empty);
        let matches = selector.matches(labels);
        match controller_of(&p.metadata) {
            Some(r) if r.uid == uid => {
                if matches {
                    owned.push(p);
                } else {
                    // Released: its labels no longer match.
                    let refs: Vec<_> = p
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .filter(|r| r.uid != uid)
                        .cloned()
                        .collect();
                    let patch =
                        json!({"metadata": {"ownerReferences": refs, "uid": p.metadata.uid}});
                    pods_api
                        .patch(
                            name(&p.metadata),
                            &PatchParams::default(),
                            &Patch::Merge(patch),
                        )
                        .await?;
                }
            }
            None if matches && pod_is_active(&p) => {
                // Adopted: a matching orphan.
                let mut refs = p.metadata.owner_references.clone().unwrap_or_default();
                refs.push(controller_ref(rs.as_ref()));
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": p.metadata.uid}});
                if pods_api
                    .patch(
                        name(&p.metadata),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await
                    .is_ok()
                {
                    owned.push(p);
                }
            }
            _ => {}
        }
    }
    let key = format!("{ns}/{rs_name}");
    let seen: HashSet<&str> = owned.iter().map(|p| name(&p.metadata)).collect();
    let (pending_creates, pending_deletes) = {
        let mut all = ctx.expectations.lock().expect("expectations lock");
        let e = all.entry(key.clone()).or_default();
        e.created
            .retain(|n, at| !seen.contains(n.as_str()) && at.elapsed() < EXPECTATION_TTL);
        let still_there: HashSet<&str> = owned
            .iter()
            .filter(|p| pod_is_active(p))
            .map(|p| name(&p.metadata))
            .collect();
        e.deleted
            .retain(|n, at| still_there.contains(n.as_str()) && at.elapsed() < EXPECTATION_TTL);
        (
            e.created.len(),
            e.deleted.keys().cloned().collect::<HashSet<_>>(),
        )
    };
    let active: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| pod_is_active(p) && !pending_deletes.contains(name(&p.metadata)))
        .collect();
    let want = i64::from(spec.replicas.unwrap_or(1));
    let have = active.len() as i64 + pending_creates as i64;
    let diff = want - have;

    if diff > 0 {
        let template = spec.template.clone().unwrap_or_default();
        let tmeta = template.metadata.unwrap_or_default();
        let pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some(format!("{rs_name}-")),
                namespace: Some(ns.clone()),
                labels: tmeta.labels,
                annotations: tmeta.annotations,
                owner_references: Some(vec![controller_ref(rs.as_ref())]),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        let results: Vec<_> = futures::stream::iter(0..diff)
            .map(|_| {
                let api = pods_api.clone();
                let pod = pod.clone();
                async move { api.create(&PostParams::default(), &pod).await }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let mut all = ctx.expectations.lock().expect("expectations lock");
        let e = all.entry(key.clone()).or_default();
        let mut failure = None;
        for r in results {
            match r {
                Ok(p) => {
                    e.created
                        .insert(name(&p.metadata).to_string(), Instant::now());
                }
                Err(err) => failure = Some(err),
            }
        }
        if let Some(err) = failure {
            return Err(err.into());
        }
    } else if diff < 0 {
        let mut victims: Vec<&Arc<Pod>> = active.clone();
        victims.sort_by_key(|p| deletion_rank(p));
        let victims: Vec<String> = victims
            .iter()
            .take((-diff) as usize)
            .map(|p| name(&p.metadata).to_string())
            .collect();
        {
            let mut all = ctx.expectations.lock().expect("expectations lock");
            let e = all.entry(key.clone()).or_default();
            for v in &victims {
                e.deleted.insert(v.clone(), Instant::now());
            }
        }
        let results: Vec<_> = futures::stream::iter(victims)
            .map(|n| {
                let api = pods_api.clone();
                async move { api.delete(&n, &DeleteParams::default()).await }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        for r in results {
            crate::owner::tolerate(r, &[404])?;
        }
    }

    // Status, from what the cache shows (terminating pods do not count).
    let counted: Vec<&Arc<Pod>> = owned.iter().filter(|p| pod_is_active(p)).collect();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let ready = counted.iter().filter(|p| pod_is_ready(p)).count() as i32;
    let avail = counted.iter().filter(|p| available(p, min_ready)).count() as i32;
    let status = json!({
        "replicas": counted.len(),
        "fullyLabeledReplicas": counted.len(),
        "readyReplicas": ready,
        "availableReplicas": avail,
        "observedGeneration": rs.metadata.generation,
    });
    let cur = rs.status.as_ref();
    let unchanged = cur.is_some_and(|s| {
        s.replicas == counted.len() as i32
            && s.ready_replicas.unwrap_or(0) == ready
            && s.available_replicas.unwrap_or(0) == avail
            && s.observed_generation == rs.metadata.generation
    });
    if !unchanged {
        let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        rs_api
            .patch_status(
                &rs_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: Option<&str>, phase: &str, ready: bool, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "creationTimestamp": created},
            "spec": {"containers": [], "nodeName": node},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    #[test]
    fn least_valuable_pods_go_first() {
        let unscheduled = pod(None, "Pending", false, "2024-01-01T00:00:00Z");
        let pending = pod(Some("n"), "Pending", false, "2024-01-01T00:00:00Z");
        let unready = pod(Some("n"), "Running", false, "2024-01-01T00:00:00Z");
        let old_ready = pod(Some("n"), "Running", true, "2024-01-01T00:00:00Z");
        let new_ready = pod(Some("n"), "Running", true, "2024-06-01T00:00:00Z");
        let mut all = [&old_ready, &new_ready, &unready, &pending, &unscheduled];
        all.sort_by_key(|p| deletion_rank(p));
        assert_eq!(
            all.map(|p| std::ptr::eq(p, &new_ready)),
            [false, false, false, true, false],
            "newest ready pod goes before the oldest"
        );
        assert!(std::ptr::eq(all[0], &unscheduled));
        assert!(std::ptr::eq(all[1], &pending));
        assert!(std::ptr::eq(all[2], &unready));
    }
}
