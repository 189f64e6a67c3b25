//! The garbage collector: dependents whose owners are gone are deleted (background);
//! owners marked `foregroundDeletion` wait for their dependents; owners marked
//! `orphan` let go of theirs. Owners and dependents come from the watch caches; an
//! owner missing from the cache is confirmed gone with a GET before anything is deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::Informers;
use crate::owner::{name, namespace};

/// Any cached object, read through its metadata.
trait Meta: Send + Sync {
    fn object_meta(&self) -> &ObjectMeta;
}

impl<K: kube::Resource + Send + Sync> Meta for K {
    fn object_meta(&self) -> &ObjectMeta {
        self.meta()
    }
}

/// One object as the collector sees it: the cache's own copy, not a clone of it.
struct Node {
    kind: &'static str,
    obj: Arc<dyn Meta>,
}

impl Node {
    fn meta(&self) -> &ObjectMeta {
        self.obj.object_meta()
    }
}

fn api_resource(kind: &str) -> ApiResource {
    let gvk = match kind {
        "Deployment" => GroupVersionKind::gvk("apps", "v1", "Deployment"),
        "ReplicaSet" => GroupVersionKind::gvk("apps", "v1", "ReplicaSet"),
        "Pod" => GroupVersionKind::gvk("", "v1", "Pod"),
        "Service" => GroupVersionKind::gvk("", "v1", "Service"),
        "Endpoints" => GroupVersionKind::gvk("", "v1", "Endpoints"),
        _ => GroupVersionKind::gvk("discovery.k8s.io", "v1", "EndpointSlice"),
    };
    let mut ar = ApiResource::from_gvk(&gvk);
    if kind == "Endpoints" {
        ar.plural = "endpoints".into();
    }
    ar
}

fn api(client: &kube::Client, kind: &str, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &api_resource(kind))
}

pub async fn run(client: kube::Client, inf: Arc<Informers>, cancel: CancellationToken) {
    let triggers = futures::stream::select_all([
        inf.deployments.subscribe_as("gc").map(|_| ()).boxed(),
        inf.replicasets.subscribe_as("gc").map(|_| ()).boxed(),
        inf.pods.subscribe_as("gc").map(|_| ()).boxed(),
        inf.services.subscribe_as("gc").map(|_| ()).boxed(),
    ]);
    let mut triggers = triggers.ready_chunks(4096);
    let mut resync = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            t = triggers.next() => if t.is_none() { return },
            _ = resync.tick() => {}
        }
        // Let a burst of changes settle into one pass.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Err(e) = pass(&client, &inf).await {
            tracing::debug!(error = %e, "garbage collection pass failed");
        }
    }
}

fn snapshot(inf: &Informers) -> Vec<Node> {
    fn of<K>(kind: &'static str, informer: &crate::Informer<K>) -> impl Iterator<Item = Node>
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
        K::DynamicType: Default + std::hash::Hash + Eq + Clone + Send + Sync,
    {
        informer.store.state().into_iter().map(move |o| Node {
            kind,
            obj: o as Arc<dyn Meta>,
        })
    }
    of("Deployment", &inf.deployments)
        .chain(of("ReplicaSet", &inf.replicasets))
        .chain(of("Pod", &inf.pods))
        .chain(of("Service", &inf.services))
        .chain(of("Endpoints", &inf.endpoints))
        .chain(of("EndpointSlice", &inf.slices))
        .collect()
}

async fn owner_exists(
    client: &kube::Client,
    ns: &str,
    r: &OwnerReference,
) -> Result<bool, kube::Error> {
    match api(client, &r.kind, ns).get_opt(&r.name).await? {
        Some(o) => Ok(o.metadata.uid.as_deref() == Some(r.uid.as_str())),
        None => Ok(false),
    }
}

async fn pass(client: &kube::Client, inf: &Informers) -> Result<(), kube::Error> {
    let all = snapshot(inf);
    let live: HashMap<&str, &Node> = all
        .iter()
        .filter_map(|n| Some((n.meta().uid.as_deref()?, n)))
        .collect();
    let mut dependents: HashMap<&str, Vec<&Node>> = HashMap::new();
    for n in &all {
        for r in n.meta().owner_references.iter().flatten() {
            dependents.entry(r.uid.as_str()).or_default().push(n);
        }
    }

    // Dependents of vanished owners.
    let mut confirmed_gone: HashSet<String> = HashSet::new();
    for n in &all {
        let refs = n.meta().owner_references.as_deref().unwrap_or_default();
        if refs.is_empty() || n.meta().deletion_timestamp.is_some() {
            continue;
        }
        let mut all_gone = true;
        for r in refs {
            if live.contains_key(r.uid.as_str()) {
                all_gone = false;
                break;
            }
            if !confirmed_gone.contains(&r.uid) {
                if owner_exists(client, namespace(n.meta()), r).await? {
                    all_gone = false;
                    break;
                }
                confirmed_gone.insert(r.uid.clone());
            }
        }
        if all_gone {
            let _ = api(client, n.kind, namespace(n.meta()))
                .delete(name(n.meta()), &DeleteParams::background())
                .await;
        }
    }

    // Owners being deleted with a propagation finalizer.
    for n in &all {
        if n.meta().deletion_timestamp.is_none() {
            continue;
        }
        let finalizers = n.meta().finalizers.clone().unwrap_or_default();
        let uid = n.meta().uid.clone().unwrap_or_default();
        let deps = dependents.get(uid.as_str()).cloned().unwrap_or_default();
        let ns = namespace(n.meta());
        if finalizers.iter().any(|f| f == "orphan") {
            for d in &deps {
                let refs: Vec<&OwnerReference> = d
                    .meta()
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|r| r.uid != uid)
                    .collect();
                let patch = json!({"metadata": {"ownerReferences": refs}});
                let _ = api(client, d.kind, ns)
                    .patch(
                        name(d.meta()),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await;
            }
            remove_finalizer(client, n, "orphan").await?;
        } else if finalizers.iter().any(|f| f == "foregroundDeletion") {
            let waiting: Vec<&&Node> = deps
                .iter()
                .filter(|d| d.meta().deletion_timestamp.is_none())
                .collect();
            for d in &waiting {
                let _ = api(client, d.kind, ns)
                    .delete(name(d.meta()), &DeleteParams::foreground())
                    .await;
            }
            if deps.is_empty() {
                remove_finalizer(client, n, "foregroundDeletion").await?;
            }
        }
    }
    Ok(())
}

/// Removes finalizer `f`, as a compare-and-swap on the resourceVersion; when the cached
/// copy is stale, the object is read again and the swap retried.
async fn remove_finalizer(client: &kube::Client, n: &Node, f: &str) -> Result<(), kube::Error> {
    let api = api(client, n.kind, namespace(n.meta()));
    let mut meta = n.meta().clone();
    for _ in 0..5 {
        let left: Vec<String> = meta
            .finalizers
            .iter()
            .flatten()
            .filter(|x| *x != f)
            .cloned()
            .collect();
        let patch =
            json!({"metadata": {"finalizers": left, "resourceVersion": meta.resource_version}});
        match api
            .patch(
                name(n.meta()),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => match crate::owner::api_code(&e) {
                Some(404) => return Ok(()),
                Some(409) => match api.get_opt(name(n.meta())).await? {
                    Some(fresh) if fresh.metadata.uid == n.meta().uid => meta = fresh.metadata,
                    _ => return Ok(()),
                },
                _ => return Err(e),
            },
        }
    }
    Ok(())
}
