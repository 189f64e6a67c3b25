//! One watch per resource type, shared by every controller that needs it: a reflector
//! cache (kube-runtime's `Store`) plus a broadcast of every change, deletions included,
//! to feed `Controller::for_shared_stream` and friends.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;

pub struct Informer<K: Resource + 'static>
where
    K::DynamicType: Hash + Eq + Clone,
{
    pub store: Store<K>,
    changes: broadcast::Sender<Arc<K>>,
    /// Whether the first full list is in. The store's own `wait_until_ready` wakes only
    /// one waiter, and several parts of a node wait on the same informer.
    listed: watch::Sender<bool>,
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Hash + Eq + Clone + Send + Sync,
{
    /// Starts watching `api` until `cancel` fires.
    pub fn start(api: Api<K>, config: watcher::Config, cancel: CancellationToken) -> Arc<Self> {
        let (store, mut writer) = reflector::store();
        let (changes, _) = broadcast::channel(8192);
        let tx = changes.clone();
        let (listed, _) = watch::channel(false);
        let done = listed.clone();
        tokio::spawn(async move {
            let mut events = watcher::watcher(api, config).default_backoff().boxed();
            loop {
                let ev = tokio::select! {
                    _ = cancel.cancelled() => return,
                    ev = events.next() => ev,
                };
                match ev {
                    None => return,
                    Some(Err(e)) => tracing::debug!(error = %e, "watch restarting"),
                    Some(Ok(ev)) => {
                        writer.apply_watcher_event(&ev);
                        match ev {
                            Event::Apply(o) | Event::Delete(o) | Event::InitApply(o) => {
                                let _ = tx.send(Arc::new(o));
                            }
                            Event::InitDone => {
                                done.send_replace(true);
                            }
                            Event::Init => {}
                        }
                    }
                }
            }
        });
        Arc::new(Self {
            store,
            changes,
            listed,
        })
    }

    /// Every object the cache holds now, then every later change (applied or deleted
    /// object), so a controller that starts after the cache filled still reconciles
    /// everything once, as kube-runtime's own controller does after its initial list.
    /// The broadcast is joined before the cache is read, so no change falls between
    /// the two (some objects may come twice; reconciles are idempotent). A subscriber
    /// that falls behind skips what it missed; controllers also resync periodically.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let later = self.changes.subscribe();
        let now = futures::stream::iter(self.store.state());
        now.chain(BroadcastStream::new(later).filter_map(|r| futures::future::ready(r.ok())))
    }

    /// Waits for the first full list; any number of tasks may wait at once.
    pub async fn ready(&self) {
        let mut rx = self.listed.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }
}
