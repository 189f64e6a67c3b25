//! Committed events to their watchers, as kube-apiserver's watch cache dispatches
//! them: the writer hands each event once to the watchers whose prefix and selector
//! it concerns (a kubelet's `spec.nodeName=<node>` watch gets its node's pods only), so
//! a write costs one check per watcher, not one wake-up of every watcher's task, and an
//! event stays in memory only in the queues of watchers that want it. A watcher whose
//! queue is full is marked lagged and catches up from the event log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use super::Event;

/// Decides whether a watcher wants an event (its selectors, before or after the change).
pub type WatchFilter = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// How many events a watcher's queue holds before it falls back to the log.
const QUEUE: usize = 1024;

/// One watcher as the fan-out sees it.
pub struct Entry {
    prefix: String,
    filter: Option<WatchFilter>,
    queue: mpsc::Sender<Arc<Event>>,
    lagged: AtomicBool,
    /// Wakes the watcher's task when it was marked lagged.
    pub woken: Notify,
}

impl Entry {
    pub fn wants(&self, ev: &Event) -> bool {
        ev.key.starts_with(&self.prefix) && self.filter.as_ref().is_none_or(|f| f(ev))
    }

    /// Whether events were dropped for it since the mark was last cleared.
    pub fn is_lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }

    /// Clears the mark once what was queued before the first dropped event is taken.
    pub fn clear_lagged(&self) {
        self.lagged.store(false, Ordering::Release);
    }
}

#[derive(Default)]
pub struct Fanout {
    entries: Mutex<Vec<Arc<Entry>>>,
}

impl Fanout {
    /// Adds a watcher; its events arrive on the receiver.
    pub fn register(
        &self,
        prefix: &str,
        filter: Option<WatchFilter>,
    ) -> (Arc<Entry>, mpsc::Receiver<Arc<Event>>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let entry = Arc::new(Entry {
            prefix: prefix.to_string(),
            filter,
            queue,
            lagged: AtomicBool::new(false),
            woken: Notify::new(),
        });
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry.clone());
        (entry, rx)
    }

    /// Hands a committed event to every watcher that wants it; watchers that went away
    /// are forgotten.
    pub fn dispatch(&self, ev: &Arc<Event>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| !e.queue.is_closed());
        for e in entries.iter() {
            // A lagged watcher reads the log next; nothing is queued behind it.
            if e.lagged.load(Ordering::Acquire) || !e.wants(ev) {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = e.queue.try_send(ev.clone()) {
                e.lagged.store(true, Ordering::Release);
                e.woken.notify_one();
            }
        }
    }

    /// How many watchers are registered (those whose task ended are counted until the
    /// next dispatch).
    pub fn len(&self) -> usize {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| !e.queue.is_closed());
        entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
