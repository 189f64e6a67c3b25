//! The namespace controller's work, done by the API server itself: a terminating
//! namespace's objects are deleted, then the namespace.

/// The ConfigMap with the cluster CA every namespace gets (kube's root-ca-cert-publisher).
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

use std::sync::Arc;

use super::{DeleteOptions, ListOptions, Registry, name_of};
use crate::resources;
use crate::store::WriteOp;

/// The namespace controller's work: delete everything in a terminating namespace, then
/// the namespace itself.
pub async fn run_namespace_cleanup(
    reg: Arc<Registry>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    while let Some(ns) = rx.recv().await {
        let reg = reg.clone();
        tokio::spawn(async move {
            for _ in 0..3600 {
                let mut remaining = 0;
                for res in resources::RESOURCES.iter().filter(|r| r.namespaced) {
                    let Ok(list) = reg.list(res, Some(&ns), &ListOptions::default()) else {
                        continue;
                    };
                    for item in list["items"].as_array().into_iter().flatten() {
                        remaining += 1;
                        let _ = reg
                            .delete(res, Some(&ns), name_of(item), &DeleteOptions::default())
                            .await;
                    }
                }
                if remaining == 0 {
                    let nsres = resources::namespaces();
                    if let Ok(cur) = reg.get(nsres, None, &ns) {
                        let op = WriteOp::Delete {
                            key: nsres.key(None, &ns),
                            expect_rev: Some(cur.rev),
                        };
                        let _ = reg.store.write(op).await;
                    }
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }
}

/// Namespaces left terminating by an earlier run are cleaned up again.
pub fn resume_cleanup(reg: &Registry) {
    let nsres = resources::namespaces();
    if let Ok(list) = reg.list(nsres, None, &ListOptions::default()) {
        for ns in list["items"].as_array().into_iter().flatten() {
            if ns["metadata"].get("deletionTimestamp").is_some()
                && let Some(name) = ns["metadata"]["name"].as_str()
            {
                let _ = reg.namespace_cleanup.send(name.to_string());
            }
        }
    }
}
