//! The sled engine: one writer thread applies writes in batches and makes each batch
//! durable with a single flush (group commit), then hands the events to the watchers
//! that want them (`fanout.rs`); a watch reads the log first, and again when it falls
//! behind.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::fanout::{Entry, Fanout};
use super::{
    Event, EventType, ListPage, Store, StoreError, Stored, WatchFilter, WatchReceiver, WriteOp,
};

const OBJ: &[u8] = b"o\0";
const LOG: &[u8] = b"l\0";
const META_REV: &[u8] = b"m\0rev";
const META_COMPACTED: &[u8] = b"m\0compacted";
/// Most writes one group commit takes; more wait for the next flush.
const MAX_BATCH: usize = 2048;

#[derive(Debug, Clone)]
pub struct SledStoreOptions {
    /// How many revisions of history the event log keeps for watches to resume from.
    pub retain_revisions: u64,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
}

impl Default for SledStoreOptions {
    fn default() -> Self {
        Self {
            retain_revisions: 50_000,
            cache_bytes: 24 * 1024 * 1024,
        }
    }
}

struct Request {
    op: WriteOp,
    reply: oneshot::Sender<Result<Arc<Event>, StoreError>>,
}

pub struct SledStore {
    tree: sled::Tree,
    rev: Arc<AtomicU64>,
    compacted: Arc<AtomicU64>,
    writes: mpsc::UnboundedSender<Request>,
    fanout: Arc<Fanout>,
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(Box::new(e))
}

fn obj_key(key: &str) -> Vec<u8> {
    [OBJ, key.as_bytes()].concat()
}

fn log_key(rev: u64) -> Vec<u8> {
    [LOG, &rev.to_be_bytes()[..]].concat()
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, StoreError> {
    Ok(tree
        .get(key)
        .map_err(engine)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// Stored values are the object's revision (8 bytes, big endian) followed by its JSON.
fn decode(key: &str, raw: &[u8]) -> Result<Stored, StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Corrupt(key.to_string()));
    }
    let rev = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
    let object =
        serde_json::from_slice(&raw[8..]).map_err(|_| StoreError::Corrupt(key.to_string()))?;
    Ok(Stored { object, rev })
}

fn encode(rev: u64, object: &Value) -> Vec<u8> {
    let mut out = rev.to_be_bytes().to_vec();
    serde_json::to_writer(&mut out, object).expect("json values serialize");
    out
}

fn stamp(object: &mut Value, rev: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
}

impl SledStore {
    pub fn open(dir: &Path, options: SledStoreOptions) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(engine)?;
        let tree: sled::Tree = (*db).clone();
        let rev = Arc::new(AtomicU64::new(read_u64(&tree, META_REV)?));
        let compacted = Arc::new(AtomicU64::new(read_u64(&tree, META_COMPACTED)?));
        let (writes, rx) = mpsc::unbounded_channel();
        let fanout = Arc::new(Fanout::default());
        let writer = Writer {
            db,
            tree: tree.clone(),
            rev: rev.clone(),
            compacted: compacted.clone(),
            fanout: fanout.clone(),
            retain: options.retain_revisions.max(1),
        };
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Engine(Box::new(e)))?;
        Ok(Self {
            tree,
            rev,
            compacted,
            writes,
            fanout,
        })
    }

    /// Oldest revision a watch can still resume after.
    pub fn compacted_revision(&self) -> u64 {
        self.compacted.load(Ordering::Acquire)
    }
}

impl Store for SledStore {
    fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        match self.tree.get(obj_key(key)).map_err(engine)? {
            Some(raw) => Ok(Some(decode(key, &raw)?)),
            None => Ok(None),
        }
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        filter: Option<&dyn Fn(&Value) -> bool>,
    ) -> Result<ListPage, StoreError> {
        let rev = self.rev.load(Ordering::Acquire);
        let full_prefix = obj_key(prefix);
        let mut end = full_prefix.clone();
        end.push(0xff);
        let start = match start_after {
            Some(k) => {
                let mut s = obj_key(k);
                s.push(0);
                s
            }
            None => full_prefix.clone(),
        };
        let mut page = ListPage {
            rev,
            ..Default::default()
        };
        let mut iter = self.tree.range(start..end);
        for entry in iter.by_ref() {
            let (k, v) = entry.map_err(engine)?;
            let key = String::from_utf8_lossy(&k[OBJ.len()..]).into_owned();
            if v.len() < 8 {
                return Err(StoreError::Corrupt(key));
            }
            if let Some(filter) = filter
                && !filter(&decode(&key, &v)?.object)
            {
                continue;
            }
            page.items.push(bytes::Bytes::copy_from_slice(&v[8..]));
            if limit > 0 && page.items.len() >= limit {
                page.next_key = Some(key);
                break;
            }
        }
        if page.next_key.is_some() {
            page.remaining = iter.count() as u64;
            if page.remaining == 0 {
                page.next_key = None;
            }
        }
        Ok(page)
    }

    fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for entry in self.tree.scan_prefix(obj_key(prefix)) {
            entry.map_err(engine)?;
            n += 1;
        }
        Ok(n)
    }

    fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<Arc<Event>, StoreError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.writes.send(Request { op, reply });
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn watch_filtered(
        &self,
        prefix: &str,
        after: u64,
        filter: Option<WatchFilter>,
    ) -> Result<WatchReceiver, StoreError> {
        // Registered before the log is read, so nothing written in between is missed;
        // events seen twice are dropped by revision.
        let (entry, mut live) = self.fanout.register(prefix, filter);
        let compacted = self.compacted.load(Ordering::Acquire);
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                oldest: compacted,
            });
        }
        let (tx, rx) = mpsc::channel(256);
        let tree = self.tree.clone();
        let compacted = self.compacted.clone();
        tokio::spawn(async move {
            let mut last = after;
            if replay(&tree, &entry, &mut last, &compacted, &tx)
                .await
                .is_err()
            {
                return;
            }
            loop {
                // A watcher that went away ends its task now, not at the next event.
                tokio::select! {
                    r = live.recv() => match r {
                        Some(ev) => {
                            if ev.rev > last {
                                last = ev.rev;
                                if tx.send(Ok(ev)).await.is_err() {
                                    return;
                                }
                            }
                            continue;
                        }
                        None => {
                            let _ = tx.send(Err(StoreError::Closed)).await;
                            return;
                        }
                    },
                    _ = entry.woken.notified() => {}
                    _ = tx.closed() => return,
                }
                if entry.is_lagged() {
                    // What was queued comes first, in order: while the mark is set
                    // nothing joins it, so it ends before the first event skipped.
                    // Then the mark is cleared and the log read from there; it holds
                    // everything skipped, and whatever is queued from now on is
                    // either in what the log gives or after it.
                    while let Ok(ev) = live.try_recv() {
                        if ev.rev > last {
                            last = ev.rev;
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                    entry.clear_lagged();
                    if replay(&tree, &entry, &mut last, &compacted, &tx)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    fn current_revision(&self) -> u64 {
        self.rev.load(Ordering::Acquire)
    }
}

/// Sends logged events after `*last` that the watcher wants; Err(()) when the watch
/// must end.
async fn replay(
    tree: &sled::Tree,
    watcher: &Entry,
    last: &mut u64,
    compacted: &AtomicU64,
    tx: &mpsc::Sender<Result<Arc<Event>, StoreError>>,
) -> Result<(), ()> {
    loop {
        let oldest = compacted.load(Ordering::Acquire);
        if *last < oldest {
            let _ = tx
                .send(Err(StoreError::Compacted {
                    requested: *last,
                    oldest,
                }))
                .await;
            return Err(());
        }
        // Read a bounded chunk at a time so a long replay does not hold everything in memory.
        let mut chunk = Vec::new();
        for entry in tree.range(log_key(*last + 1)..log_key(u64::MAX)).take(512) {
            let (_, v) = entry.map_err(|_| ())?;
            match serde_json::from_slice::<Event>(&v) {
                Ok(ev) => chunk.push(ev),
                Err(_) => {
                    let _ = tx.send(Err(StoreError::Corrupt("event log".into()))).await;
                    return Err(());
                }
            }
        }
        if chunk.is_empty() {
            return Ok(());
        }
        for ev in chunk {
            *last = ev.rev;
            if watcher.wants(&ev) && tx.send(Ok(Arc::new(ev))).await.is_err() {
                return Err(());
            }
        }
    }
}

struct Writer {
    db: sled::Db,
    tree: sled::Tree,
    rev: Arc<AtomicU64>,
    compacted: Arc<AtomicU64>,
    fanout: Arc<Fanout>,
    retain: u64,
}

impl Writer {
    fn run(self, mut rx: mpsc::UnboundedReceiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let mut requests = vec![first];
            while requests.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => requests.push(r),
                    Err(_) => break,
                }
            }
            self.commit(requests);
        }
    }

    /// Applies a group of writes as one atomic batch, flushes once, then answers all.
    fn commit(&self, requests: Vec<Request>) {
        let start_rev = self.rev.load(Ordering::Acquire);
        let mut rev = start_rev;
        let mut overlay: HashMap<String, Option<Stored>> = HashMap::new();
        let mut batch = sled::Batch::default();
        let mut outcomes = Vec::with_capacity(requests.len());
        for req in requests {
            let result = self.apply(req.op, &mut rev, &mut overlay, &mut batch);
            outcomes.push((req.reply, result));
        }
        if rev != start_rev {
            batch.insert(META_REV, &rev.to_be_bytes());
            let durable = self
                .tree
                .apply_batch(batch)
                .and_then(|_| self.db.flush().map(|_| ()));
            if let Err(e) = durable {
                // Nothing of this batch is acknowledged; the revision counter is left as it
                // was, so a retried write gets a fresh revision.
                let msg = e.to_string();
                for (reply, _) in outcomes {
                    let err = std::io::Error::other(msg.clone());
                    let _ = reply.send(Err(StoreError::Engine(Box::new(err))));
                }
                return;
            }
            self.rev.store(rev, Ordering::Release);
        }
        for (reply, result) in outcomes {
            if let Ok(ev) = &result {
                self.fanout.dispatch(ev);
            }
            let _ = reply.send(result);
        }
        self.maybe_compact(rev);
    }

    fn current(
        &self,
        key: &str,
        overlay: &HashMap<String, Option<Stored>>,
    ) -> Result<Option<Stored>, StoreError> {
        if let Some(v) = overlay.get(key) {
            return Ok(v.clone());
        }
        match self.tree.get(obj_key(key)).map_err(engine)? {
            Some(raw) => Ok(Some(decode(key, &raw)?)),
            None => Ok(None),
        }
    }

    fn apply(
        &self,
        op: WriteOp,
        rev: &mut u64,
        overlay: &mut HashMap<String, Option<Stored>>,
        batch: &mut sled::Batch,
    ) -> Result<Arc<Event>, StoreError> {
        let key = op.key().to_string();
        let current = self.current(&key, overlay)?;
        let check = |expect: Option<u64>, found: u64| match expect {
            Some(e) if e != found => Err(StoreError::Conflict {
                key: key.clone(),
                expected: e,
                found,
            }),
            _ => Ok(()),
        };
        let next = *rev + 1;
        let event = match op {
            WriteOp::Create { mut object, .. } => {
                if current.is_some() {
                    return Err(StoreError::AlreadyExists(key));
                }
                stamp(&mut object, next);
                Event {
                    rev: next,
                    kind: EventType::Added,
                    key: key.clone(),
                    object,
                    prev: None,
                }
            }
            WriteOp::Update {
                mut object,
                expect_rev,
                ..
            } => {
                let cur = current.ok_or_else(|| StoreError::NotFound(key.clone()))?;
                check(expect_rev, cur.rev)?;
                stamp(&mut object, next);
                Event {
                    rev: next,
                    kind: EventType::Modified,
                    key: key.clone(),
                    object,
                    prev: Some(cur.object),
                }
            }
            WriteOp::Delete { expect_rev, .. } => {
                let cur = current.ok_or_else(|| StoreError::NotFound(key.clone()))?;
                check(expect_rev, cur.rev)?;
                let mut object = cur.object;
                stamp(&mut object, next);
                Event {
                    rev: next,
                    kind: EventType::Deleted,
                    key: key.clone(),
                    object,
                    prev: None,
                }
            }
        };
        *rev = next;
        if event.kind == EventType::Deleted {
            batch.remove(obj_key(&key));
            overlay.insert(key, None);
        } else {
            batch.insert(obj_key(&key), encode(next, &event.object));
            overlay.insert(
                key,
                Some(Stored {
                    object: event.object.clone(),
                    rev: next,
                }),
            );
        }
        batch.insert(
            log_key(next),
            serde_json::to_vec(&event).expect("events serialize"),
        );
        Ok(Arc::new(event))
    }

    /// Drops log entries older than the retention window, at most every 1,024 revisions.
    fn maybe_compact(&self, rev: u64) {
        let compacted = self.compacted.load(Ordering::Acquire);
        if rev < compacted + self.retain + 1024 {
            return;
        }
        let upto = rev - self.retain;
        let mut batch = sled::Batch::default();
        for k in self
            .tree
            .range(log_key(compacted)..log_key(upto + 1))
            .keys()
            .flatten()
        {
            batch.remove(k);
        }
        batch.insert(META_COMPACTED, &upto.to_be_bytes());
        // Publish the new floor first, so no watch starts reading entries being removed.
        self.compacted.store(upto, Ordering::Release);
        if let Err(e) = self.tree.apply_batch(batch) {
            tracing::warn!(error = %e, "compacting the event log failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}})
    }

    #[tokio::test]
    async fn revisions_and_preconditions() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), SledStoreOptions::default()).unwrap();
        let a = store
            .write(WriteOp::Create {
                key: "p/default/a".into(),
                object: pod("a"),
            })
            .await
            .unwrap();
        assert_eq!(a.rev, 1);
        assert_eq!(a.object["metadata"]["resourceVersion"], "1");
        let dup = store
            .write(WriteOp::Create {
                key: "p/default/a".into(),
                object: pod("a"),
            })
            .await;
        assert!(matches!(dup, Err(StoreError::AlreadyExists(_))));
        let stale = store
            .write(WriteOp::Update {
                key: "p/default/a".into(),
                object: pod("a"),
                expect_rev: Some(7),
            })
            .await;
        assert!(matches!(stale, Err(StoreError::Conflict { found: 1, .. })));
        let b = store
            .write(WriteOp::Update {
                key: "p/default/a".into(),
                object: pod("a"),
                expect_rev: Some(1),
            })
            .await
            .unwrap();
        assert_eq!(b.rev, 2);
        assert_eq!(store.get("p/default/a").unwrap().unwrap().rev, 2);
    }

    #[tokio::test]
    async fn state_and_revisions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), SledStoreOptions::default()).unwrap();
            for i in 0..10 {
                store
                    .write(WriteOp::Create {
                        key: format!("p/default/{i}"),
                        object: pod("x"),
                    })
                    .await
                    .unwrap();
            }
        }
        // sled holds a file lock until its threads wind down.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let store = SledStore::open(dir.path(), SledStoreOptions::default()).unwrap();
        assert_eq!(store.current_revision(), 10);
        let page = store.list("p/default/", None, 0, None).unwrap();
        assert_eq!(page.items.len(), 10);
    }

    #[tokio::test]
    async fn watch_replays_history_then_follows() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), SledStoreOptions::default()).unwrap();
        store
            .write(WriteOp::Create {
                key: "p/default/a".into(),
                object: pod("a"),
            })
            .await
            .unwrap();
        store
            .write(WriteOp::Create {
                key: "s/default/a".into(),
                object: pod("a"),
            })
            .await
            .unwrap();
        let mut rx = store.watch("p/", 0).unwrap();
        store
            .write(WriteOp::Delete {
                key: "p/default/a".into(),
                expect_rev: None,
            })
            .await
            .unwrap();
        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!((first.rev, first.kind), (1, EventType::Added));
        let second = rx.recv().await.unwrap().unwrap();
        assert_eq!((second.rev, second.kind), (3, EventType::Deleted));
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_catches_up_from_the_log_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), SledStoreOptions::default()).unwrap();
        let mut rx = store.watch("p/", 0).unwrap();
        // Far more than its queues hold, while it reads nothing.
        for i in 0..3000 {
            let key = if i % 3 == 0 {
                "s/default/x"
            } else {
                "p/default/a"
            };
            let op = if i < 2 {
                WriteOp::Create {
                    key: key.into(),
                    object: pod("a"),
                }
            } else {
                WriteOp::Update {
                    key: key.into(),
                    object: pod("a"),
                    expect_rev: None,
                }
            };
            store.write(op).await.unwrap();
        }
        let mut revs = Vec::new();
        while revs.len() < 2000 {
            let ev = rx.recv().await.unwrap().unwrap();
            assert!(ev.key.starts_with("p/"));
            revs.push(ev.rev);
        }
        let want: Vec<u64> = (1..=3000).filter(|r| (r - 1) % 3 != 0).collect();
        assert_eq!(revs, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_watcher_under_concurrent_writes_misses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), SledStoreOptions::default()).unwrap());
        let mut rx = store.watch("p/", 0).unwrap();
        let writers: Vec<_> = (0..32)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..400 {
                        store
                            .write(WriteOp::Create {
                                key: format!("p/default/{w}-{i}"),
                                object: pod("x"),
                            })
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        let mut revs = Vec::new();
        while revs.len() < 32 * 400 {
            let ev = rx.recv().await.unwrap().unwrap();
            revs.push(ev.rev);
            if revs.len() % 100 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        for w in writers {
            w.await.unwrap();
        }
        let want: Vec<u64> = (1..=32 * 400).collect();
        assert_eq!(revs, want);
    }

    #[tokio::test]
    async fn a_filtered_watch_gets_only_what_its_filter_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), SledStoreOptions::default()).unwrap();
        let filter: WatchFilter = Arc::new(|ev: &Event| ev.key.ends_with("/b"));
        let mut rx = store.watch_filtered("p/", 0, Some(filter)).unwrap();
        for name in ["a", "b", "c", "b2", "b"] {
            let _ = store
                .write(WriteOp::Create {
                    key: format!("p/default/{name}"),
                    object: pod(name),
                })
                .await;
        }
        let ev = rx.recv().await.unwrap().unwrap();
        assert_eq!((ev.key.as_str(), ev.rev), ("p/default/b", 2));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(200), rx.recv())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn watch_tasks_end_when_the_client_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), SledStoreOptions::default()).unwrap();
        let rx = store.watch("p/", 0).unwrap();
        assert_eq!(store.fanout.len(), 1);
        drop(rx);
        for _ in 0..100 {
            if store.fanout.is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the watch task outlived its client");
    }

    #[tokio::test]
    async fn compacted_history_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let options = SledStoreOptions {
            retain_revisions: 10,
            ..Default::default()
        };
        let store = SledStore::open(dir.path(), options).unwrap();
        for i in 0..1100 {
            store
                .write(WriteOp::Create {
                    key: format!("p/default/{i}"),
                    object: pod("x"),
                })
                .await
                .unwrap();
        }
        assert!(matches!(
            store.watch("p/", 1),
            Err(StoreError::Compacted { .. })
        ));
        assert!(store.watch("p/", 1095).is_ok());
    }
}
