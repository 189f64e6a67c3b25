//! One watch per resource type, shared by every component that reads that kind: a
//! reflector cache (kube-runtime's `Store`) of stripped objects, indexes by namespace,
//! controlling owner and one field of the caller's choice (a pod's node), and change
//! feeds that never lose a change.
//!
//! A change feed is a queue of object keys with the newest version of each, as
//! client-go's workqueue is: a subscriber that falls behind finds the keys it has not
//! taken yet coalesced to their latest state, so however slow it is, it sees the final
//! state of every object (a deletion as the object's last state), and the watch never
//! waits for it. That is what a level-triggered controller needs; a broadcast channel
//! would drop what a slow subscriber had not read.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex, RwLock, Weak};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::feed::Feed;
pub use crate::feed::QueueMetrics;

/// The annotation `kubectl apply` keeps the whole applied object in; no component reads it.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A field an informer indexes its objects by besides namespace and owner.
pub type IndexFn<K> = fn(&K) -> Option<String>;

pub struct Informer<K: Resource + 'static>
where
    K::DynamicType: Hash + Eq + Clone,
{
    pub store: Store<K>,
    shared: Arc<Shared<K>>,
    /// Whether the first full list is in. The store's own `wait_until_ready` wakes only
    /// one waiter, and several parts of a node wait on the same informer.
    listed: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// What the watch task and the readers share besides the store.
struct Shared<K: Resource + 'static>
where
    K::DynamicType: Hash + Eq + Clone,
{
    subscribers: Mutex<Subscribers<K>>,
    indexes: RwLock<Indexes<K>>,
    index_fn: Option<IndexFn<K>>,
    queue_metrics: Option<QueueMetrics>,
}

/// The live feeds, and whether the watch has ended (a later feed starts closed).
struct Subscribers<K> {
    feeds: Vec<Weak<Feed<K>>>,
    closed: bool,
}

impl<K> Subscribers<K> {
    fn new() -> Self {
        Self {
            feeds: Vec::new(),
            closed: false,
        }
    }
}

/// Keys by namespace, by the uid of their controlling owner, and by the custom field.
struct Indexes<K: Resource + 'static>
where
    K::DynamicType: Hash + Eq + Clone,
{
    namespace: HashMap<String, HashSet<ObjectRef<K>>>,
    owner: HashMap<String, HashSet<ObjectRef<K>>>,
    field: HashMap<String, HashSet<ObjectRef<K>>>,
}

impl<K: Resource + 'static> Default for Indexes<K>
where
    K::DynamicType: Hash + Eq + Clone,
{
    fn default() -> Self {
        Self {
            namespace: HashMap::new(),
            owner: HashMap::new(),
            field: HashMap::new(),
        }
    }
}

/// The values an object is indexed under.
struct IndexValues {
    namespace: Option<String>,
    owner: Option<String>,
    field: Option<String>,
}

fn index_values<K: Resource>(obj: &K, index_fn: Option<IndexFn<K>>) -> IndexValues {
    let meta = obj.meta();
    IndexValues {
        namespace: meta.namespace.clone(),
        owner: meta
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .map(|r| r.uid.clone()),
        field: index_fn.and_then(|f| f(obj)),
    }
}

impl<K: Resource + 'static> Indexes<K>
where
    K::DynamicType: Hash + Eq + Clone,
{
    fn add(&mut self, key: &ObjectRef<K>, v: IndexValues) {
        for (map, value) in [
            (&mut self.namespace, v.namespace),
            (&mut self.owner, v.owner),
            (&mut self.field, v.field),
        ] {
            if let Some(value) = value {
                map.entry(value).or_default().insert(key.clone());
            }
        }
    }

    fn remove(&mut self, key: &ObjectRef<K>, v: IndexValues) {
        for (map, value) in [
            (&mut self.namespace, v.namespace),
            (&mut self.owner, v.owner),
            (&mut self.field, v.field),
        ] {
            if let Some(value) = value
                && let Some(set) = map.get_mut(&value)
            {
                set.remove(key);
                if set.is_empty() {
                    map.remove(&value);
                }
            }
        }
    }
}

impl<K: Resource + 'static> Shared<K>
where
    K::DynamicType: Hash + Eq + Clone,
{
    fn publish(&self, obj: &Arc<K>) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.feeds.retain(|w| match w.upgrade() {
            Some(feed) => {
                feed.push(obj.clone());
                true
            }
            None => false,
        });
    }

    fn close(&self) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.closed = true;
        for feed in subs.feeds.iter().filter_map(Weak::upgrade) {
            feed.close();
        }
    }
}

/// What no component reads and the API server keeps on every object: managed fields
/// and `kubectl apply`'s copy of the whole object. Dropping them at the door keeps
/// every cache near the size of what the controllers use.
pub fn strip<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Hash + Eq + Clone + Send + Sync,
{
    /// Starts watching `api` until `cancel` fires.
    pub fn start(api: Api<K>, config: watcher::Config, cancel: CancellationToken) -> Arc<Self> {
        Self::start_with(api, config, None, None, None, cancel)
    }

    /// Starts watching `api`, indexing by `index_fn`, keeping of each object only what
    /// `project` leaves of it (after [`strip`]), and measuring named subscribers'
    /// queues in `queue_metrics`.
    pub fn start_with(
        api: Api<K>,
        config: watcher::Config,
        index_fn: Option<IndexFn<K>>,
        project: Option<fn(&mut K)>,
        queue_metrics: Option<QueueMetrics>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let (store, writer) = reflector::store();
        let shared = Arc::new(Shared {
            subscribers: Mutex::new(Subscribers::new()),
            indexes: RwLock::new(Indexes::default()),
            index_fn,
            queue_metrics,
        });
        let (listed, _) = watch::channel(false);
        let events = watcher::watcher(api, config)
            .default_backoff()
            .modify(move |o| {
                strip(o);
                if let Some(p) = project {
                    p(o);
                }
            })
            .boxed();
        let task = tokio::spawn(watch_loop(
            events,
            writer,
            store.clone(),
            shared.clone(),
            listed.clone(),
            cancel,
        ));
        Arc::new(Self {
            store,
            shared,
            listed,
            task: Mutex::new(Some(task)),
        })
    }

    /// Every object the cache holds now, then every later change (applied or deleted
    /// object), so a controller that starts after the cache filled still reconciles
    /// everything once, as kube-runtime's own controller does after its initial list.
    /// Changes not yet taken are coalesced per object to its newest version: nothing
    /// is lost however far behind the subscriber falls. The stream ends when the
    /// informer stops.
    pub fn subscribe(&self) -> BoxStream<'static, Arc<K>> {
        self.subscribe_feed(None)
    }

    /// [`Self::subscribe`] for a named subscriber (a controller), whose queue is
    /// measured as client-go measures a controller's workqueue.
    pub fn subscribe_as(&self, name: &str) -> BoxStream<'static, Arc<K>> {
        self.subscribe_feed(Some(name))
    }

    fn subscribe_feed(&self, name: Option<&str>) -> BoxStream<'static, Arc<K>> {
        let meters = name.and_then(|n| Some(self.shared.queue_metrics.as_ref()?.meters(n)));
        let feed = Arc::new(Feed::new(meters));
        let closed = {
            let mut subs = self
                .shared
                .subscribers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            subs.feeds.push(Arc::downgrade(&feed));
            subs.closed
        };
        // Joined before the cache is read, so no change falls between the two.
        feed.seed(self.store.state());
        if closed {
            feed.close();
        }
        futures::stream::unfold(feed, |feed| async move {
            feed.next().await.map(|obj| (obj, feed))
        })
        .boxed()
    }

    /// How many changes the subscribers have not taken yet, summed (a queue depth).
    pub fn pending(&self) -> usize {
        let subs = self
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        subs.feeds
            .iter()
            .filter_map(Weak::upgrade)
            .map(|f| f.len())
            .sum()
    }

    /// Waits for the first full list; any number of tasks may wait at once.
    pub async fn ready(&self) {
        let mut rx = self.listed.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    /// Waits for the watch task to end (after the cancellation token fired).
    pub async fn stopped(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn lookup(&self, keys: Option<&HashSet<ObjectRef<K>>>) -> Vec<Arc<K>> {
        keys.into_iter()
            .flatten()
            .filter_map(|k| self.store.get(k))
            .collect()
    }

    /// The objects in one namespace.
    pub fn by_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let ix = self
            .shared
            .indexes
            .read()
            .unwrap_or_else(|e| e.into_inner());
        self.lookup(ix.namespace.get(namespace))
    }

    /// The objects whose controlling owner has this uid.
    pub fn by_owner(&self, uid: &str) -> Vec<Arc<K>> {
        let ix = self
            .shared
            .indexes
            .read()
            .unwrap_or_else(|e| e.into_inner());
        self.lookup(ix.owner.get(uid))
    }

    /// The objects whose indexed field (given at start) has this value.
    pub fn by_field(&self, value: &str) -> Vec<Arc<K>> {
        let ix = self
            .shared
            .indexes
            .read()
            .unwrap_or_else(|e| e.into_inner());
        self.lookup(ix.field.get(value))
    }
}

/// Applies the watch to the store, the indexes and the feeds until cancelled.
async fn watch_loop<K, S>(
    mut events: S,
    mut writer: reflector::store::Writer<K>,
    store: Store<K>,
    shared: Arc<Shared<K>>,
    listed: watch::Sender<bool>,
    cancel: CancellationToken,
) where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Hash + Eq + Clone + Send + Sync,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => break,
            ev = events.next() => ev,
        };
        match ev {
            None => break,
            Some(Err(e)) => tracing::debug!(error = %e, "watch restarting"),
            Some(Ok(ev)) => apply(&ev, &mut writer, &store, &shared, &listed),
        }
    }
    shared.close();
}

fn apply<K>(
    ev: &Event<K>,
    writer: &mut reflector::store::Writer<K>,
    store: &Store<K>,
    shared: &Shared<K>,
    listed: &watch::Sender<bool>,
) where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Hash + Eq + Clone + Send + Sync,
{
    match ev {
        Event::Apply(o) | Event::Delete(o) => {
            let key = ObjectRef::from_obj(o);
            let old = store.get(&key);
            writer.apply_watcher_event(ev);
            {
                let mut ix = shared.indexes.write().unwrap_or_else(|e| e.into_inner());
                if let Some(old) = &old {
                    ix.remove(&key, index_values(old.as_ref(), shared.index_fn));
                }
                if matches!(ev, Event::Apply(_)) {
                    ix.add(&key, index_values(o, shared.index_fn));
                }
            }
            // The feeds share the store's copy; a deletion's last state is its own.
            match store.get(&key).filter(|_| matches!(ev, Event::Apply(_))) {
                Some(now) => shared.publish(&now),
                None => shared.publish(&Arc::new(o.clone())),
            }
        }
        Event::Init => writer.apply_watcher_event(ev),
        // The store swaps in the new list at InitDone; feeds get each listed object
        // then, with the new state in place.
        Event::InitApply(_) => writer.apply_watcher_event(ev),
        Event::InitDone => {
            let before = store.state();
            writer.apply_watcher_event(ev);
            let now = store.state();
            let mut ix = Indexes::default();
            let mut present = HashSet::with_capacity(now.len());
            for o in &now {
                let key = ObjectRef::from_obj(o.as_ref());
                ix.add(&key, index_values(o.as_ref(), shared.index_fn));
                present.insert(key);
            }
            *shared.indexes.write().unwrap_or_else(|e| e.into_inner()) = ix;
            for o in &now {
                shared.publish(o);
            }
            // Objects deleted while the watch was down are delivered as deleted.
            for o in before {
                if !present.contains(&ObjectRef::from_obj(o.as_ref())) {
                    shared.publish(&o);
                }
            }
            listed.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn pod(name: &str, uid: &str, rv: u64, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "lab", "uid": uid, "resourceVersion": rv.to_string(),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                              "uid": "rs-1", "controller": true}]},
            "spec": {"containers": [], "nodeName": node}
        }))
        .unwrap()
    }

    fn node_of(p: &Pod) -> Option<String> {
        p.spec.as_ref().and_then(|s| s.node_name.clone())
    }

    struct Fixture {
        writer: reflector::store::Writer<Pod>,
        store: Store<Pod>,
        shared: Arc<Shared<Pod>>,
        listed: watch::Sender<bool>,
    }

    impl Fixture {
        fn new() -> Self {
            let (store, writer) = reflector::store();
            let shared = Arc::new(Shared {
                subscribers: Mutex::new(Subscribers::new()),
                indexes: RwLock::new(Indexes::default()),
                index_fn: Some(node_of as IndexFn<Pod>),
                queue_metrics: None,
            });
            let (listed, _) = watch::channel(false);
            Self {
                writer,
                store,
                shared,
                listed,
            }
        }
        fn apply(&mut self, ev: Event<Pod>) {
            apply(
                &ev,
                &mut self.writer,
                &self.store,
                &self.shared,
                &self.listed,
            );
        }
        fn feed(&self) -> Arc<Feed<Pod>> {
            let feed = Arc::new(Feed::new(None));
            self.shared
                .subscribers
                .lock()
                .unwrap()
                .feeds
                .push(Arc::downgrade(&feed));
            feed.seed(self.store.state());
            feed
        }
    }

    #[tokio::test]
    async fn a_stalled_subscriber_sees_the_final_state_of_every_object_after_a_burst() {
        let mut f = Fixture::new();
        f.apply(Event::Init);
        f.apply(Event::InitDone);
        let slow = f.feed();
        // 100,000 changes over 1,000 pods, ten of them deleted at the end, while the
        // subscriber takes nothing.
        let mut rv = 0;
        for round in 0..100 {
            for i in 0..1000 {
                rv += 1;
                let node = format!("node-{}", (i + round) % 7);
                f.apply(Event::Apply(pod(
                    &format!("p{i}"),
                    &format!("u{i}"),
                    rv,
                    Some(&node),
                )));
            }
        }
        for i in 0..10 {
            rv += 1;
            f.apply(Event::Delete(pod(
                &format!("p{i}"),
                &format!("u{i}"),
                rv,
                None,
            )));
        }
        assert!(rv >= 100_000);
        // The queue holds one entry per object, not one per change.
        assert_eq!(slow.len(), 1000);
        f.shared.close();
        let mut seen = HashMap::new();
        while let Some(p) = slow.next().await {
            seen.insert(p.metadata.name.clone().unwrap(), p);
        }
        assert_eq!(seen.len(), 1000, "every object is delivered");
        for (name, p) in &seen {
            let cached = f
                .store
                .get(&ObjectRef::new(name).within("lab"))
                .map(|c| c.metadata.resource_version.clone());
            match cached {
                // The subscriber's last view is the cache's.
                Some(rv) => assert_eq!(p.metadata.resource_version, rv, "{name}"),
                // Deleted: delivered as the deletion, not as an older version.
                None => assert!(p.spec.as_ref().unwrap().node_name.is_none(), "{name}"),
            }
        }
        assert_eq!(f.store.state().len(), 990);
    }

    #[tokio::test]
    async fn a_deleted_object_and_its_successor_of_the_same_name_are_both_delivered() {
        let mut f = Fixture::new();
        f.apply(Event::Init);
        f.apply(Event::InitDone);
        let feed = f.feed();
        f.apply(Event::Apply(pod("web", "old", 1, None)));
        f.apply(Event::Delete(pod("web", "old", 2, None)));
        f.apply(Event::Apply(pod("web", "new", 3, None)));
        f.shared.close();
        let mut uids = Vec::new();
        while let Some(p) = feed.next().await {
            uids.push(p.metadata.uid.clone().unwrap());
        }
        assert_eq!(uids, ["old", "new"]);
    }

    #[tokio::test]
    async fn a_relist_delivers_what_was_deleted_while_the_watch_was_down() {
        let mut f = Fixture::new();
        f.apply(Event::Init);
        f.apply(Event::InitApply(pod("a", "ua", 1, None)));
        f.apply(Event::InitApply(pod("b", "ub", 2, None)));
        f.apply(Event::InitDone);
        let feed = f.feed();
        while feed.len() > 0 {
            feed.next().await;
        }
        f.apply(Event::Init);
        f.apply(Event::InitApply(pod("a", "ua", 1, None)));
        f.apply(Event::InitDone);
        f.shared.close();
        let mut names = Vec::new();
        while let Some(p) = feed.next().await {
            names.push(p.metadata.name.clone().unwrap());
        }
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(f.store.state().len(), 1);
    }

    #[tokio::test]
    async fn indexes_follow_moves_and_deletions() {
        let mut f = Fixture::new();
        f.apply(Event::Init);
        f.apply(Event::InitApply(pod("a", "ua", 1, Some("n1"))));
        f.apply(Event::InitDone);
        f.apply(Event::Apply(pod("b", "ub", 2, Some("n1"))));
        f.apply(Event::Apply(pod("a", "ua", 3, Some("n2"))));
        let names = |v: Vec<Arc<Pod>>| {
            let mut n: Vec<String> = v.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
            n.sort();
            n
        };
        let ix = |f: &Fixture, which: &str, v: &str| {
            let ix = f.shared.indexes.read().unwrap();
            let keys = match which {
                "field" => ix.field.get(v),
                "owner" => ix.owner.get(v),
                _ => ix.namespace.get(v),
            };
            keys.into_iter()
                .flatten()
                .filter_map(|k| f.store.get(k))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(ix(&f, "field", "n1")), ["b"]);
        assert_eq!(names(ix(&f, "field", "n2")), ["a"]);
        assert_eq!(names(ix(&f, "owner", "rs-1")), ["a", "b"]);
        f.apply(Event::Delete(pod("b", "ub", 4, Some("n1"))));
        assert!(ix(&f, "field", "n1").is_empty());
        assert!(!f.shared.indexes.read().unwrap().field.contains_key("n1"));
        assert_eq!(names(ix(&f, "namespace", "lab")), ["a"]);
    }

    #[test]
    fn stripping_drops_managed_fields_and_the_applied_copy_only() {
        let mut p: Pod = serde_json::from_value(json!({"metadata": {"name": "a",
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            "annotations": {LAST_APPLIED: "{}", "keep": "me"}}}))
        .unwrap();
        strip(&mut p);
        assert!(p.metadata.managed_fields.is_none());
        let a = p.metadata.annotations.unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a["keep"], "me");
    }
}
