//! A store that times every operation into `etcd_request_duration_seconds` (kube-
//! apiserver's name for its storage's latency), by operation and resource.

use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Event, ListPage, Store, StoreError, Stored, WatchFilter, WatchReceiver, WriteOp};
use crate::metrics::ApiMetrics;

pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: ApiMetrics,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: ApiMetrics) -> Self {
        Self { inner, metrics }
    }
}

/// The resource a key belongs to: `core/pods/ns/name` -> `pods`.
pub fn resource_of(key: &str) -> &str {
    key.split('/').nth(1).unwrap_or_default()
}

impl Store for MeteredStore {
    fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        let t = Instant::now();
        let r = self.inner.get(key);
        self.metrics.storage("get", resource_of(key), t);
        r
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        filter: Option<&dyn Fn(&Value) -> bool>,
    ) -> Result<ListPage, StoreError> {
        let t = Instant::now();
        let r = self.inner.list(prefix, start_after, limit, filter);
        self.metrics.storage("list", resource_of(prefix), t);
        r
    }

    fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        self.inner.count(prefix)
    }

    fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<Arc<Event>, StoreError>> {
        let operation = match &op {
            WriteOp::Create { .. } => "create",
            WriteOp::Update { .. } => "update",
            WriteOp::Delete { .. } => "delete",
        };
        let resource = resource_of(op.key()).to_string();
        let (metrics, t) = (self.metrics.clone(), Instant::now());
        let write = self.inner.write(op);
        Box::pin(async move {
            let r = write.await;
            metrics.storage(operation, &resource, t);
            r
        })
    }

    fn watch_filtered(
        &self,
        prefix: &str,
        after: u64,
        filter: Option<WatchFilter>,
    ) -> Result<WatchReceiver, StoreError> {
        self.inner.watch_filtered(prefix, after, filter)
    }

    fn current_revision(&self) -> u64 {
        self.inner.current_revision()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_name_their_resource() {
        assert_eq!(super::resource_of("core/pods/default/web"), "pods");
        assert_eq!(super::resource_of("apps/deployments/"), "deployments");
    }
}
