//! A subscriber's change feed: a queue of object identities, each with the newest
//! version seen (client-go's workqueue model), so a subscriber that falls behind skips
//! intermediate versions, never an object. Named feeds are measured as client-go
//! measures a controller's workqueue (`workqueue_depth`, `workqueue_adds_total`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use kube::{Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tinykube_api::metrics::Metrics;
use tokio::sync::Notify;

/// One subscriber's queue: keys in arrival order, each with the newest version seen.
pub(crate) struct Feed<K> {
    queue: Mutex<Queue<K>>,
    notify: Notify,
    /// `workqueue_depth` and `workqueue_adds_total` of the subscriber, when named.
    meters: Option<(Gauge, Counter)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueName {
    name: String,
}

/// client-go's workqueue metrics, by subscriber: a feed is the work queue in front of
/// its controller.
#[derive(Clone, Default)]
pub struct QueueMetrics {
    depth: Family<QueueName, Gauge>,
    adds: Family<QueueName, Counter>,
}

impl QueueMetrics {
    /// Registers `workqueue_depth` and `workqueue_adds_total` in `registry`.
    pub fn new(registry: &Metrics) -> Self {
        let m = Self::default();
        registry.register(
            "workqueue_depth",
            "Current depth of workqueue",
            m.depth.clone(),
        );
        registry.register(
            "workqueue_adds",
            "Total number of adds handled by workqueue",
            m.adds.clone(),
        );
        m
    }

    pub(crate) fn meters(&self, name: &str) -> (Gauge, Counter) {
        let l = QueueName {
            name: name.to_string(),
        };
        (
            self.depth.get_or_create(&l).clone(),
            self.adds.get_or_create(&l).clone(),
        )
    }
}

struct Queue<K> {
    order: VecDeque<String>,
    latest: HashMap<String, Arc<K>>,
    closed: bool,
}

/// An object's identity in a feed: its uid, so a deleted object and a new one of the
/// same name are two entries, each delivered.
fn identity<K: Resource>(obj: &K) -> String {
    obj.meta()
        .uid
        .clone()
        .unwrap_or_else(|| format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()))
}

impl<K: Resource> Feed<K> {
    pub(crate) fn new(meters: Option<(Gauge, Counter)>) -> Self {
        Self {
            queue: Mutex::new(Queue {
                order: VecDeque::new(),
                latest: HashMap::new(),
                closed: false,
            }),
            notify: Notify::new(),
            meters,
        }
    }

    fn added(&self) {
        if let Some((depth, adds)) = &self.meters {
            depth.inc();
            adds.inc();
        }
    }

    /// Queues a change; a newer version replaces an older one not yet taken.
    pub(crate) fn push(&self, obj: Arc<K>) {
        let id = identity(obj.as_ref());
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.latest.insert(id.clone(), obj).is_none() {
            q.order.push_back(id);
            self.added();
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Queues what the cache held when the feed began, without replacing anything
    /// newer the watch queued in the meantime.
    pub(crate) fn seed(&self, objs: Vec<Arc<K>>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        for obj in objs {
            let id = identity(obj.as_ref());
            if let std::collections::hash_map::Entry::Vacant(e) = q.latest.entry(id.clone()) {
                e.insert(obj);
                q.order.push_back(id);
                self.added();
            }
        }
        drop(q);
        self.notify.notify_one();
    }

    pub(crate) fn close(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.notify.notify_one();
    }

    /// The next change, or `None` once the informer has stopped and the queue is empty.
    pub(crate) async fn next(&self) -> Option<Arc<K>> {
        loop {
            {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                while let Some(id) = q.order.pop_front() {
                    if let Some(obj) = q.latest.remove(&id) {
                        if let Some((depth, _)) = &self.meters {
                            depth.dec();
                        }
                        return Some(obj);
                    }
                }
                if q.closed {
                    return None;
                }
            }
            self.notify.notified().await;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .latest
            .len()
    }
}
