//! Storage: the `Store` trait the API server is written against, and its sled engine.
//!
//! resourceVersion is one global revision counter. Every write is one atomic batch that
//! updates the object and appends to an event log; watches resume from that log.

pub mod fanout;
pub mod metered;
mod sled_store;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

pub use fanout::WatchFilter;
pub use sled_store::{SledStore, SledStoreOptions};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object {0} already exists")]
    AlreadyExists(String),
    #[error("object {key} was modified: expected revision {expected}, found {found}")]
    Conflict {
        key: String,
        expected: u64,
        found: u64,
    },
    #[error("revision {requested} has been compacted (oldest available is {oldest})")]
    Compacted { requested: u64, oldest: u64 },
    #[error("storage engine failed")]
    Engine(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored data is corrupt at {0}")]
    Corrupt(String),
    #[error("the store is shutting down")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as recorded in the event log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub rev: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub key: String,
    /// The object after the change (for a delete: its last state, stamped with `rev`).
    pub object: Value,
    /// The object before the change, for a modification; watches with selectors need it
    /// to turn "stopped matching" into DELETED, as Kubernetes' watch cache does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Value>,
}

/// One write. `expect_rev` is an optimistic-concurrency precondition.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Create {
        key: String,
        object: Value,
    },
    Update {
        key: String,
        object: Value,
        expect_rev: Option<u64>,
    },
    Delete {
        key: String,
        expect_rev: Option<u64>,
    },
}

impl WriteOp {
    pub fn key(&self) -> &str {
        match self {
            Self::Create { key, .. } | Self::Update { key, .. } | Self::Delete { key, .. } => key,
        }
    }
}

/// A stored object and the revision of its last write.
#[derive(Debug, Clone)]
pub struct Stored {
    pub object: Value,
    pub rev: u64,
}

/// A page of a list: objects (their stored JSON, unparsed) in key order, the store
/// revision it was read at, and the key to continue after when the page was cut short.
#[derive(Debug, Default)]
pub struct ListPage {
    pub items: Vec<bytes::Bytes>,
    pub rev: u64,
    pub next_key: Option<String>,
    pub remaining: u64,
}

pub type WatchReceiver = mpsc::Receiver<Result<Arc<Event>, StoreError>>;

pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Stored>, StoreError>;

    /// Objects whose keys start with `prefix`, after `start_after`, at most `limit`
    /// (0 = no limit), keeping only those `filter` accepts. Without a filter nothing is
    /// parsed: lists are served from the stored bytes.
    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        filter: Option<&dyn Fn(&Value) -> bool>,
    ) -> Result<ListPage, StoreError>;

    /// How many objects have keys starting with `prefix`.
    fn count(&self, prefix: &str) -> Result<usize, StoreError>;

    /// Applies one write durably; resolves to the stored object (with its new
    /// `metadata.resourceVersion`) once it is on disk.
    fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<Arc<Event>, StoreError>>;

    /// Events for keys under `prefix` with revisions greater than `after`, in order.
    fn watch(&self, prefix: &str, after: u64) -> Result<WatchReceiver, StoreError> {
        self.watch_filtered(prefix, after, None)
    }

    /// The same, keeping only the events `filter` accepts: the store skips the others
    /// before they reach the watcher's queue.
    fn watch_filtered(
        &self,
        prefix: &str,
        after: u64,
        filter: Option<WatchFilter>,
    ) -> Result<WatchReceiver, StoreError>;

    fn current_revision(&self) -> u64;
}
