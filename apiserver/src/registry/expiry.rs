//! Events expire: kube-apiserver stores each Event with a lease of `--event-ttl`
//! (one hour by default) renewed at every write, so an Event last written more than
//! that long ago is gone. Here a sweep deletes them through the registry, so watchers
//! see the deletion as they would on Kubernetes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{DeleteOptions, Registry};
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

/// The fields of an Event the sweep reads; nothing else of it is parsed.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Times {
    metadata: Meta,
    last_timestamp: Option<String>,
    event_time: Option<String>,
    series: Option<Series>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Meta {
    name: String,
    namespace: Option<String>,
    creation_timestamp: Option<String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Series {
    last_observed_time: Option<String>,
}

impl Times {
    fn last_written(&self) -> Option<jiff::Timestamp> {
        [
            &self.metadata.creation_timestamp,
            &self.last_timestamp,
            &self.event_time,
            &self
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.clone()),
        ]
        .into_iter()
        .filter_map(|t| t.as_deref()?.parse::<jiff::Timestamp>().ok())
        .max()
    }
}

/// Events read per page of the sweep, so it never holds them all at once.
const PAGE: usize = 500;

/// Deletes expired Events every tenth of the TTL (at most every minute) until cancelled.
pub async fn run(reg: Arc<Registry>, ttl: Duration, cancel: CancellationToken) {
    let period = (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    let events = resources::find("", "events").expect("events are registered");
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = jiff::Timestamp::now().as_second();
        let mut expired = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = match reg
                .store
                .list(&events.key_prefix(), after.as_deref(), PAGE, None)
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list events to expire");
                    break;
                }
            };
            for raw in &page.items {
                let Ok(t) = serde_json::from_slice::<Times>(raw) else {
                    continue;
                };
                if t.last_written()
                    .is_some_and(|w| now - w.as_second() >= ttl_secs)
                {
                    expired.push((t.metadata.namespace, t.metadata.name));
                }
            }
            match page.next_key {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        for (ns, name) in expired {
            let _ = reg
                .delete(events, ns.as_deref(), &name, &DeleteOptions::default())
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
        let times: Times = serde_json::from_value(ev.clone()).unwrap();
        assert_eq!(times.last_written(), last_written(&ev));
        // An event with no time at all is left alone.
        assert!(!expired(
            &json!({}),
            DEFAULT_EVENT_TTL,
            at("2030-01-01T00:00:00Z")
        ));
    }
}
