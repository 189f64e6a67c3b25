//! kube-rs (a client nobody here wrote) against an in-process master: typed CRUD,
//! selectors, paging, patches, conflicts, watch resume, bookmarks and 410 Gone.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;
use tinykube_tests::TestMaster;

fn pod(name: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap()
}

#[tokio::test]
async fn typed_crud_selectors_and_paging() {
    let m = TestMaster::start().await;
    let pods: Api<Pod> = Api::namespaced(m.client().await, "default");
    for i in 0..25 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("p{i:02}"), if i % 2 == 0 { "even" } else { "odd" }),
        )
        .await
        .unwrap();
    }
    let even = pods
        .list(&ListParams::default().labels("app=even"))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 13);
    let named = pods
        .list(&ListParams::default().fields("metadata.name=p03"))
        .await
        .unwrap();
    assert_eq!(named.items.len(), 1);

    // limit/continue pages through everything exactly once.
    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(10);
    loop {
        let page = pods.list(&lp).await.unwrap();
        seen.extend(page.items.iter().map(|p| p.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(seen.len(), 25);
    seen.dedup();
    assert_eq!(seen.len(), 25);

    let got = pods.get("p00").await.unwrap();
    let spec = got.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(got.status.unwrap().phase.as_deref(), Some("Pending"));

    // Every patch type.
    let merge = Patch::Merge(json!({"metadata": {"labels": {"m": "1"}}}));
    pods.patch("p00", &PatchParams::default(), &merge)
        .await
        .unwrap();
    let strategic =
        Patch::Strategic(json!({"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}));
    let p = pods
        .patch("p00", &PatchParams::default(), &strategic)
        .await
        .unwrap();
    assert_eq!(
        p.spec.unwrap().containers[0].image.as_deref(),
        Some("busybox:2")
    );
    let ops: json_patch_ops::Ops =
        serde_json::from_value(json!([{"op": "add", "path": "/metadata/labels/j", "value": "1"}]))
            .unwrap();
    let p = pods
        .patch("p00", &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
        .unwrap();
    let labels = p.metadata.labels.unwrap();
    assert_eq!((labels["m"].as_str(), labels["j"].as_str()), ("1", "1"));

    // Optimistic concurrency: replacing from a stale read is a 409.
    let stale = pods.get("p01").await.unwrap();
    let mut first = stale.clone();
    first
        .metadata
        .labels
        .get_or_insert_default()
        .insert("w".into(), "1".into());
    pods.replace("p01", &PostParams::default(), &first)
        .await
        .unwrap();
    let err = pods
        .replace("p01", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("expected a conflict, got {other}"),
    }

    let missing = pods.get("nope").await.unwrap_err();
    assert!(
        matches!(missing, kube::Error::Api(s) if s.code == 404 && s.message == "pods \"nope\" not found")
    );
    m.shutdown().await;
}

mod json_patch_ops {
    pub type Ops = json_patch::Patch;
}

#[tokio::test]
async fn deployments_scale_and_services_allocate() {
    let m = TestMaster::start().await;
    let client = m.client().await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
    }))
    .unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();
    let scale = deploys.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    deploys
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 6}})),
        )
        .await
        .unwrap();
    assert_eq!(
        deploys.get("web").await.unwrap().spec.unwrap().replicas,
        Some(6)
    );

    let services: Api<Service> = Api::namespaced(client, "default");
    let s: Service = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80}]}})).unwrap();
    let s = services.create(&PostParams::default(), &s).await.unwrap();
    let spec = s.spec.unwrap();
    assert!(spec.cluster_ip.unwrap().starts_with("10."));
    let np = spec.ports.unwrap()[0].node_port.unwrap();
    assert!((30000..=32767).contains(&np));
    m.shutdown().await;
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_without_gaps() {
    let m = TestMaster::builder()
        .bookmark_interval(Duration::from_millis(200))
        .start()
        .await;
    let pods: Api<Pod> = Api::namespaced(m.client().await, "default");
    let first = pods
        .create(&PostParams::default(), &pod("a", "x"))
        .await
        .unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    for name in ["b", "c"] {
        pods.create(&PostParams::default(), &pod(name, "x"))
            .await
            .unwrap();
    }
    pods.delete("a", &DeleteParams::default()).await.unwrap();

    let wp = WatchParams::default().timeout(5);
    let stream = pods.watch(&wp, &rv).await.unwrap();
    let events: Vec<WatchEvent<Pod>> = stream.take(3).try_collect().await.unwrap();
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(p) => ("ADDED".into(), p.metadata.name.clone().unwrap()),
            WatchEvent::Deleted(p) => ("DELETED".into(), p.metadata.name.clone().unwrap()),
            other => (format!("{other:?}"), String::new()),
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("ADDED".into(), "b".into()),
            ("ADDED".into(), "c".into()),
            ("DELETED".into(), "a".into())
        ]
    );

    // Bookmarks carry the current revision.
    let stream = pods
        .watch(&WatchParams::default().timeout(5), "0")
        .await
        .unwrap();
    let bookmark = stream
        .try_filter(|e| futures::future::ready(matches!(e, WatchEvent::Bookmark(_))))
        .boxed()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(bookmark, WatchEvent::Bookmark(b) if !b.metadata.resource_version.is_empty()));

    // A label-selected watch sees an object that stops matching as DELETED.
    let now = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let stream = pods
        .watch(&WatchParams::default().labels("app=x").timeout(5), &now)
        .await
        .unwrap();
    pods.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "y"}}})),
    )
    .await
    .unwrap();
    let ev: Vec<WatchEvent<Pod>> = stream.take(1).try_collect().await.unwrap();
    assert!(
        matches!(&ev[0], WatchEvent::Deleted(p) if p.metadata.name.as_deref() == Some("b")),
        "{ev:?}"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn compacted_resource_version_is_410_gone() {
    let m = TestMaster::builder().retain_revisions(20).start().await;
    let pods: Api<Pod> = Api::namespaced(m.client().await, "default");
    for i in 0..1100 {
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), "x"))
            .await
            .unwrap();
    }
    let err = match pods.watch(&WatchParams::default(), "5").await {
        Err(e) => e,
        Ok(s) => match s.boxed().next().await {
            Some(Err(e)) => e,
            other => panic!("expected an error, got {other:?}"),
        },
    };
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other}"),
    }
    // The watcher helper relists after a 410 and keeps going.
    let watcher = kube::runtime::watcher(pods.clone(), Default::default());
    let first = tokio::time::timeout(Duration::from_secs(10), watcher.boxed().next())
        .await
        .unwrap();
    assert!(first.unwrap().is_ok());
    m.shutdown().await;
}

#[tokio::test]
async fn pods_bind_once_and_delete_gracefully() {
    let m = TestMaster::start().await;
    let pods: Api<Pod> = Api::namespaced(m.client().await, "default");
    pods.create(&PostParams::default(), &pod("web", "x"))
        .await
        .unwrap();
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "web"},
                         "target": {"kind": "Node", "name": "worker1"}});
    let _: serde_json::Value = pods
        .create_subresource("binding", "web", &PostParams::default(), &binding)
        .await
        .unwrap();
    let bound = pods.get("web").await.unwrap();
    assert_eq!(
        bound.spec.as_ref().unwrap().node_name.as_deref(),
        Some("worker1")
    );
    let scheduled = bound.status.unwrap().conditions.unwrap();
    assert!(
        scheduled
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    );
    let again = pods
        .create_subresource::<_, serde_json::Value>(
            "binding",
            "web",
            &PostParams::default(),
            &binding,
        )
        .await;
    assert!(
        matches!(again, Err(kube::Error::Api(s)) if s.code == 409 && s.message.contains("already assigned"))
    );

    // A pod on a node is only marked; the node confirms with grace 0.
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    let marked = pods.get("web").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
    pods.delete("web", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert!(pods.get_opt("web").await.unwrap().is_none());

    // An unscheduled pod goes at once; eviction deletes too.
    pods.create(&PostParams::default(), &pod("loose", "x"))
        .await
        .unwrap();
    pods.delete("loose", &DeleteParams::default())
        .await
        .unwrap();
    assert!(pods.get_opt("loose").await.unwrap().is_none());
    pods.create(&PostParams::default(), &pod("evicted", "x"))
        .await
        .unwrap();
    pods.evict("evicted", &Default::default()).await.unwrap();
    assert!(pods.get_opt("evicted").await.unwrap().is_none());

    // Finalizers hold an object until they are removed.
    let mut held = pod("held", "x");
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    pods.create(&PostParams::default(), &held).await.unwrap();
    pods.delete("held", &DeleteParams::default()).await.unwrap();
    assert!(
        pods.get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    pods.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(pods.get_opt("held").await.unwrap().is_none());

    // deletecollection by label.
    for i in 0..3 {
        pods.create(&PostParams::default(), &pod(&format!("batch{i}"), "batch"))
            .await
            .unwrap();
    }
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("app=batch"),
    )
    .await
    .unwrap();
    assert!(
        pods.list(&ListParams::default().labels("app=batch"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    m.shutdown().await;
}
