//! The scheduling queue as kube-scheduler keeps it: pods ready for an attempt
//! (activeQ), pods waiting out their back-off (backoffQ: 1 s doubling per failed
//! attempt up to 10 s), and pods that fit nowhere (unschedulablePods), which stay put
//! until a change in the cluster could make them fit (a node added or changed in what
//! scheduling reads, a bound pod gone) or five minutes pass. So a pod that cannot run
//! costs one attempt and one event, not a retry loop.
//!
//! Pure: times are passed in, so the tests drive it without a clock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// kube-scheduler's podMaxInUnschedulablePodsDuration.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

/// What the queue remembers of a pod that failed.
#[derive(Debug, Clone)]
struct Failed {
    attempts: u32,
    last_attempt: Instant,
    /// A digest of what the pod asks for; a change to it is a reason to try again.
    fingerprint: u64,
}

#[derive(Debug, Default)]
pub struct Queue {
    active: HashSet<String>,
    /// Pods waiting out their back-off, by when it ends.
    backoff: BTreeSet<(Instant, String)>,
    unschedulable: HashMap<String, Failed>,
    /// Every failed pod's record, whichever of the three sets it is in.
    failed: HashMap<String, Failed>,
}

fn backoff_for(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(8);
    (INITIAL_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

impl Queue {
    /// A pod that wants a node was added or changed. A pod the queue holds as
    /// unschedulable goes back only when what it asks for changed (its own status
    /// updates do not count), through its back-off.
    pub fn pod_changed(&mut self, key: &str, fingerprint: u64, now: Instant) {
        match self.unschedulable.get(key) {
            Some(f) if f.fingerprint == fingerprint => {}
            Some(_) => {
                self.unschedulable.remove(key);
                self.requeue(key, now);
            }
            None => {
                if !self.in_backoff(key) {
                    self.active.insert(key.to_string());
                }
            }
        }
    }

    /// The pod no longer wants a node (bound, deleted, finished): forget it.
    pub fn forget(&mut self, key: &str) {
        self.active.remove(key);
        self.unschedulable.remove(key);
        if let Some(f) = self.failed.remove(key) {
            self.backoff
                .remove(&(f.last_attempt + backoff_for(f.attempts), key.to_string()));
        }
    }

    /// Something changed that may let unschedulable pods fit: every one of them moves
    /// to the active queue, or to the back-off queue while its back-off lasts.
    pub fn cluster_changed(&mut self, now: Instant) {
        let keys: Vec<String> = self.unschedulable.drain().map(|(k, _)| k).collect();
        for k in keys {
            self.requeue(&k, now);
        }
    }

    fn in_backoff(&self, key: &str) -> bool {
        self.failed.get(key).is_some_and(|f| {
            self.backoff
                .contains(&(f.last_attempt + backoff_for(f.attempts), key.to_string()))
        })
    }

    fn requeue(&mut self, key: &str, now: Instant) {
        match self.failed.get(key) {
            Some(f) if f.last_attempt + backoff_for(f.attempts) > now => {
                self.backoff
                    .insert((f.last_attempt + backoff_for(f.attempts), key.to_string()));
            }
            _ => {
                self.active.insert(key.to_string());
            }
        }
    }

    /// Moves pods whose back-off ended, and unschedulable pods left alone for five
    /// minutes, to the active queue.
    pub fn tick(&mut self, now: Instant) {
        while let Some((at, _)) = self.backoff.first() {
            if *at > now {
                break;
            }
            let (_, key) = self.backoff.pop_first().expect("first exists");
            self.active.insert(key);
        }
        let stale: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|(_, f)| now.duration_since(f.last_attempt) >= MAX_UNSCHEDULABLE)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.unschedulable.remove(&k);
            self.active.insert(k);
        }
    }

    /// When the earliest back-off ends, if any pod waits for one.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.backoff.first().map(|(at, _)| *at)
    }

    /// Takes every pod ready for an attempt.
    pub fn take_active(&mut self) -> Vec<String> {
        self.active.drain().collect()
    }

    /// The attempt failed: the pod waits in the unschedulable pool.
    pub fn failed(&mut self, key: &str, fingerprint: u64, now: Instant) {
        if let Some(f) = self.failed.get(key) {
            self.backoff
                .remove(&(f.last_attempt + backoff_for(f.attempts), key.to_string()));
        }
        self.active.remove(key);
        let attempts = self.failed.get(key).map_or(0, |f| f.attempts) + 1;
        let f = Failed {
            attempts,
            last_attempt: now,
            fingerprint,
        };
        self.failed.insert(key.to_string(), f.clone());
        self.unschedulable.insert(key.to_string(), f);
    }

    /// The attempt succeeded (the pod is assumed bound).
    pub fn scheduled(&mut self, key: &str) {
        self.forget(key);
    }

    /// How many pods wait, by queue: active, back-off, unschedulable.
    pub fn depths(&self) -> (usize, usize, usize) {
        (
            self.active.len(),
            self.backoff.len(),
            self.unschedulable.len(),
        )
    }

    pub fn is_unschedulable(&self, key: &str) -> bool {
        self.unschedulable.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_ten() {
        let got: Vec<u64> = (1..=6).map(|a| backoff_for(a).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn an_unschedulable_pod_waits_for_a_cluster_change_not_for_time() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.pod_changed("ns/a", 1, t0);
        assert_eq!(q.take_active(), ["ns/a"]);
        q.failed("ns/a", 1, t0);
        // Its own status update, and a minute later: still waiting.
        q.pod_changed("ns/a", 1, t0 + Duration::from_secs(1));
        q.tick(t0 + Duration::from_secs(60));
        assert!(q.take_active().is_empty());
        assert!(q.is_unschedulable("ns/a"));
        // A node is added 3 s later: its 1 s back-off is over, so it is tried at once.
        q.cluster_changed(t0 + Duration::from_secs(3));
        assert_eq!(q.take_active(), ["ns/a"]);
    }

    #[test]
    fn a_cluster_change_during_the_backoff_waits_for_its_end() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.pod_changed("ns/a", 1, t0);
        q.take_active();
        q.failed("ns/a", 1, t0);
        // A node changes at once: the pod waits out its 1 s back-off.
        q.cluster_changed(t0);
        assert!(q.take_active().is_empty());
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(q.next_wakeup(), Some(t1));
        q.tick(t1);
        assert_eq!(q.take_active(), ["ns/a"]);
        q.failed("ns/a", 1, t1); // second failure: 2 s back-off
        q.cluster_changed(t1 + Duration::from_millis(500));
        assert!(q.take_active().is_empty());
        assert_eq!(q.next_wakeup(), Some(t1 + Duration::from_secs(2)));
        q.tick(t1 + Duration::from_secs(1));
        assert!(q.take_active().is_empty());
        q.tick(t1 + Duration::from_secs(2));
        assert_eq!(q.take_active(), ["ns/a"]);
        assert_eq!(q.next_wakeup(), None);
    }

    #[test]
    fn five_minutes_unschedulable_flushes_a_pod_back() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.failed("ns/a", 1, t0);
        q.tick(t0 + Duration::from_secs(299));
        assert!(q.take_active().is_empty());
        q.tick(t0 + MAX_UNSCHEDULABLE);
        assert_eq!(q.take_active(), ["ns/a"]);
    }

    #[test]
    fn a_changed_pod_is_retried_and_a_forgotten_one_is_gone() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.failed("ns/a", 1, t0);
        q.pod_changed("ns/a", 2, t0 + Duration::from_secs(5));
        assert_eq!(q.take_active(), ["ns/a"]);
        q.failed("ns/b", 1, t0);
        q.cluster_changed(t0);
        q.forget("ns/b");
        q.tick(t0 + Duration::from_secs(20));
        assert!(q.take_active().is_empty());
        assert_eq!(q.depths(), (0, 0, 0));
    }
}
