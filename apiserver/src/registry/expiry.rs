//! Events expire: kube-apiserver stores each Event with a lease of `--event-ttl`
//! (one hour by default) renewed at every write, so an Event last written more than
//! that long ago is gone. Here a sweep deletes them through the registry, so watchers
//! see the deletion as they would on Kubernetes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{DeleteOptions, ListOptions, Registry};
use crate::resources;

/// kube-apiserver's `--event-ttl` default.
pub const DEFAULT_EVENT_TTL: Duration = Duration::from_secs(3600);

/// When an Event was last written, as far as its fields say: the newest of its
/// creation, last timestamp, event time and series' last observation.
pub fn last_written(ev: &Value) -> Option<jiff::Timestamp> {
    [
        &ev["metadata"]["creationTimestamp"],
        &ev["lastTimestamp"],
        &ev["eventTime"],
        &ev["series"]["lastObservedTime"],
    ]
    .iter()
    .filter_map(|v| v.as_str()?.parse::<jiff::Timestamp>().ok())
    .max()
}

/// Whether an Event has outlived `ttl` at `now`.
pub fn expired(ev: &Value, ttl: Duration, now: jiff::Timestamp) -> bool {
    last_written(ev).is_some_and(|t| {
        now.as_second() - t.as_second() >= i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)
    })
}

/// Deletes expired Events every tenth of the TTL (at most every minute) until cancelled.
pub async fn run(reg: Arc<Registry>, ttl: Duration, cancel: CancellationToken) {
    let period = (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    let events = resources::find("", "events").expect("events are registered");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let list = match reg.list(events, None, &ListOptions::default()) {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list events to expire");
                continue;
            }
        };
        let now = jiff::Timestamp::now();
        for ev in list["items"].as_array().into_iter().flatten() {
            if !expired(ev, ttl, now) {
                continue;
            }
            let ns = ev["metadata"]["namespace"].as_str();
            let name = ev["metadata"]["name"].as_str().unwrap_or_default();
            let _ = reg
                .delete(events, ns, name, &DeleteOptions::default())
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_expires_an_hour_after_its_last_write() {
        let ev = json!({"metadata": {"creationTimestamp": "2026-01-01T10:00:00Z"},
                        "lastTimestamp": "2026-01-01T10:30:00Z",
                        "series": {"lastObservedTime": "2026-01-01T10:45:00.123456Z"}});
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert_eq!(last_written(&ev), Some(at("2026-01-01T10:45:00.123456Z")));
        assert!(!expired(&ev, DEFAULT_EVENT_TTL, at("2026-01-01T11:44:59Z")));
        assert!(expired(&ev, DEFAULT_EVENT_TTL, at("2026-01-01T11:45:01Z")));
        // An event with no time at all is left alone.
        assert!(!expired(
            &json!({}),
            DEFAULT_EVENT_TTL,
            at("2030-01-01T00:00:00Z")
        ));
    }
}
