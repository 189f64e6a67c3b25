//! Removing a node's containerd namespace with everything in it (containers, tasks,
//! images, snapshots, content, leases): what `tinykube down` does for each node.

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{ListSnapshotsRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    DeleteContentRequest, DeleteImageRequest, DeleteNamespaceRequest,
    DeleteRequest as DeleteLeaseRequest, ListContentRequest, ListImagesRequest,
    ListNamespacesRequest, ListRequest as ListLeasesRequest,
};
use containerd_client::tonic::Code;

use super::{Runtime, RuntimeError, SNAPSHOTTER, call};

impl Runtime {
    /// Whether this runtime's namespace exists in containerd.
    pub async fn namespace_exists(&self) -> Result<bool, RuntimeError> {
        let mut c = NamespacesClient::new(self.channel());
        let r = c
            .list(ListNamespacesRequest {
                filter: String::new(),
            })
            .await
            .map_err(call("list namespaces"))?;
        Ok(r.into_inner()
            .namespaces
            .iter()
            .any(|n| n.name == self.namespace()))
    }

    /// Removes everything in this namespace, then the namespace itself. Retried for up
    /// to 30 s: a snapshot can stay busy for a while after its task is deleted, and an
    /// image import a stopped client started goes on inside containerd until it ends.
    pub async fn purge(&self) -> Result<(), RuntimeError> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match self.purge_once().await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "purge incomplete; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn purge_once(&self) -> Result<(), RuntimeError> {
        if !self.namespace_exists().await? {
            return Ok(());
        }
        for c in self.list_containers().await? {
            self.remove_container(&c.id).await;
        }
        let mut leases = LeasesClient::new(self.channel());
        let ls = leases
            .list(self.req(ListLeasesRequest { filters: vec![] }))
            .await
            .map_err(call("list leases"))?;
        for l in ls.into_inner().leases {
            let _ = leases
                .delete(self.req(DeleteLeaseRequest {
                    id: l.id,
                    sync: false,
                }))
                .await;
        }
        let mut images = ImagesClient::new(self.channel());
        let list = images
            .list(self.req(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(call("list images"))?;
        for i in list.into_inner().images {
            let _ = images
                .delete(self.req(DeleteImageRequest {
                    name: i.name,
                    sync: false,
                    target: None,
                }))
                .await;
        }
        // Snapshots go children first: retry while some are removed.
        let mut snaps = SnapshotsClient::new(self.channel());
        let mut refused: Option<(String, String)> = None;
        loop {
            let mut stream = snaps
                .list(self.req(ListSnapshotsRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    filters: vec![],
                }))
                .await
                .map_err(call("list snapshots"))?
                .into_inner();
            let mut keys = Vec::new();
            while let Some(m) = stream.message().await.map_err(call("list snapshots"))? {
                keys.extend(m.info.into_iter().map(|i| i.name));
            }
            if keys.is_empty() {
                break;
            }
            let mut removed = 0;
            for key in keys {
                let r = snaps
                    .remove(self.req(RemoveSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: key.clone(),
                    }))
                    .await;
                match r {
                    Ok(_) => removed += 1,
                    Err(s) => refused = Some((key, s.message().to_string())),
                }
            }
            if removed == 0 {
                break;
            }
        }
        let mut content = ContentClient::new(self.channel());
        let mut stream = content
            .list(self.req(ListContentRequest { filters: vec![] }))
            .await
            .map_err(call("list content"))?
            .into_inner();
        let mut digests = Vec::new();
        while let Some(m) = stream.message().await.map_err(call("list content"))? {
            digests.extend(m.info.into_iter().map(|i| i.digest));
        }
        for digest in digests {
            let _ = content
                .delete(self.req(DeleteContentRequest { digest }))
                .await;
        }
        let mut ns = NamespacesClient::new(self.channel());
        match ns
            .delete(DeleteNamespaceRequest {
                name: self.namespace().to_string(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => {
                let mut what = format!("delete namespace {}", self.namespace());
                if let Some((key, why)) = refused {
                    what.push_str(&format!(" (snapshot {key} would not go: {why})"));
                }
                Err(call(what)(s))
            }
        }
    }
}
