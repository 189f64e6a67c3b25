//! client-go's EventCorrelator, so a flood of events writes a bounded number of them:
//! a token bucket per source and object (burst 25, then one per five minutes) drops
//! the excess; more than ten events alike but for their message within ten minutes
//! are combined into one; and an event seen before is written as its earlier Event's
//! count and last timestamp going up, not as a new Event.
//!
//! Pure: the caller passes the time, so the tests need no clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// client-go's defaultSpamBurst and defaultSpamQPS (one per 300 s).
pub const SPAM_BURST: f64 = 25.0;
pub const SPAM_REFILL: Duration = Duration::from_secs(300);
/// client-go's defaultAggregateMaxEvents and defaultAggregateIntervalInSeconds.
pub const AGGREGATE_MAX: usize = 10;
pub const AGGREGATE_INTERVAL: Duration = Duration::from_secs(600);
/// client-go keeps this many keys in each of its LRU caches.
const CACHE_SIZE: usize = 4096;
/// The prefix client-go puts on a combined event's message.
pub const COMBINED: &str = "(combined from similar events): ";

/// What identifies an event at each stage.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Source and involved object: the token bucket's key.
    pub spam: String,
    /// The above plus type and reason: events alike but for their message.
    pub aggregate: String,
    pub message: String,
}

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Over the object's budget: write nothing.
    Drop,
    /// A new Event with this name and message.
    Create { name: String, message: String },
    /// The Event `name` again: its count becomes `count`.
    Update {
        name: String,
        message: String,
        count: i32,
        first: jiff::Timestamp,
    },
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Similar {
    messages: std::collections::HashSet<String>,
    at: Instant,
}

struct Seen {
    name: String,
    count: i32,
    first: jiff::Timestamp,
    at: Instant,
}

#[derive(Default)]
pub struct Correlator {
    buckets: HashMap<String, Bucket>,
    similar: HashMap<String, Similar>,
    seen: HashMap<String, Seen>,
}

/// Keeps a cache near its size by dropping the least recently used half.
fn bound<V>(map: &mut HashMap<String, V>, at: impl Fn(&V) -> Instant) {
    if map.len() <= CACHE_SIZE {
        return;
    }
    let mut times: Vec<Instant> = map.values().map(&at).collect();
    times.sort();
    let cut = times[times.len() / 2];
    map.retain(|_, v| at(v) >= cut);
}

impl Correlator {
    /// Decides what an event becomes; `name` is the name a new Event would get.
    pub fn observe(
        &mut self,
        keys: &Keys,
        name: String,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Decision {
        // The spam filter first, as client-go's EventSourceObjectSpamFilter.
        let refill = 1.0 / SPAM_REFILL.as_secs_f64();
        let b = self.buckets.entry(keys.spam.clone()).or_insert(Bucket {
            tokens: SPAM_BURST,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * refill).min(SPAM_BURST);
        b.at = now;
        if b.tokens < 1.0 {
            return Decision::Drop;
        }
        b.tokens -= 1.0;
        bound(&mut self.buckets, |b| b.at);

        // Then the aggregator: the eleventh distinct message in ten minutes and after
        // it are one combined event.
        let s = self
            .similar
            .entry(keys.aggregate.clone())
            .or_insert(Similar {
                messages: Default::default(),
                at: now,
            });
        if now.duration_since(s.at) > AGGREGATE_INTERVAL {
            s.messages.clear();
        }
        s.at = now;
        let (dedup, message) =
            if s.messages.contains(&keys.message) || s.messages.len() < AGGREGATE_MAX {
                s.messages.insert(keys.message.clone());
                (
                    format!("{}\n{}", keys.aggregate, keys.message),
                    keys.message.clone(),
                )
            } else {
                (
                    keys.aggregate.clone(),
                    format!("{COMBINED}{}", keys.message),
                )
            };
        bound(&mut self.similar, |s| s.at);

        // Last the logger: an event seen before goes up in count.
        let decision = match self.seen.get_mut(&dedup) {
            Some(seen) => {
                seen.count += 1;
                seen.at = now;
                Decision::Update {
                    name: seen.name.clone(),
                    message,
                    count: seen.count,
                    first: seen.first,
                }
            }
            None => {
                self.seen.insert(
                    dedup,
                    Seen {
                        name: name.clone(),
                        count: 1,
                        first: wall,
                        at: now,
                    },
                );
                Decision::Create { name, message }
            }
        };
        bound(&mut self.seen, |s| s.at);
        decision
    }

    /// The Event `name` is gone (expired or deleted): the next one alike is new.
    pub fn forget(&mut self, name: &str) {
        self.seen.retain(|_, s| s.name != name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(object: &str, message: &str) -> Keys {
        Keys {
            spam: format!("scheduler/{object}"),
            aggregate: format!("scheduler/{object}/Warning/FailedScheduling"),
            message: message.into(),
        }
    }

    fn wall() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000).unwrap()
    }

    #[test]
    fn a_repeated_event_is_one_event_with_a_count() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let k = keys("pod-a", "0/3 nodes are available");
        assert!(matches!(
            c.observe(&k, "a.1".into(), t, wall()),
            Decision::Create { .. }
        ));
        let d = c.observe(&k, "a.2".into(), t + Duration::from_secs(1), wall());
        assert_eq!(
            d,
            Decision::Update {
                name: "a.1".into(),
                message: k.message.clone(),
                count: 2,
                first: wall()
            }
        );
        c.forget("a.1");
        assert!(matches!(
            c.observe(&k, "a.3".into(), t, wall()),
            Decision::Create { .. }
        ));
    }

    #[test]
    fn a_flood_for_one_object_stops_at_the_burst_and_refills_slowly() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let written = (0..1000)
            .filter(|i| {
                let k = keys("pod-a", &format!("message {}", i % 3));
                c.observe(&k, format!("a.{i}"), t, wall()) != Decision::Drop
            })
            .count();
        assert_eq!(written, 25);
        // Five minutes give one more.
        let k = keys("pod-a", "later");
        let later = t + SPAM_REFILL;
        assert_ne!(c.observe(&k, "a.x".into(), later, wall()), Decision::Drop);
        assert_eq!(c.observe(&k, "a.y".into(), later, wall()), Decision::Drop);
        // Another object has its own budget.
        assert_ne!(
            c.observe(&keys("pod-b", "m"), "b.1".into(), t, wall()),
            Decision::Drop
        );
    }

    #[test]
    fn more_than_ten_different_messages_are_combined() {
        let mut c = Correlator::default();
        let t = Instant::now();
        for i in 0..10 {
            let d = c.observe(
                &keys("pod-a", &format!("m{i}")),
                format!("a.{i}"),
                t,
                wall(),
            );
            assert!(
                matches!(d, Decision::Create { ref message, .. } if *message == format!("m{i}"))
            );
        }
        let d = c.observe(&keys("pod-a", "m10"), "a.10".into(), t, wall());
        assert_eq!(
            d,
            Decision::Create {
                name: "a.10".into(),
                message: format!("{COMBINED}m10")
            }
        );
        let d = c.observe(&keys("pod-a", "m11"), "a.11".into(), t, wall());
        assert!(matches!(d, Decision::Update { ref name, count: 2, .. } if name == "a.10"));
        // A message seen before is still its own event.
        let d = c.observe(&keys("pod-a", "m3"), "a.12".into(), t, wall());
        assert!(matches!(d, Decision::Update { ref name, .. } if name == "a.3"));
    }

    #[test]
    fn the_caches_stay_bounded() {
        let mut c = Correlator::default();
        let t = Instant::now();
        for i in 0..20_000u64 {
            let k = keys(&format!("pod-{i}"), "m");
            c.observe(&k, format!("e{i}"), t + Duration::from_millis(i), wall());
        }
        assert!(c.seen.len() <= CACHE_SIZE + 1);
        assert!(c.buckets.len() <= CACHE_SIZE + 1);
        assert!(c.similar.len() <= CACHE_SIZE + 1);
    }
}
