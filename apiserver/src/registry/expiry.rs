//! Events expire: kube-apiserver stores each Event with a lease of `--event-ttl`
//! (one hour by default) renewed at every write, so an Event last written more than
//! that long ago is gone. Here a sweep deletes them through the registry, so watchers
//! see the deletion as they would on Kubernetes.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{DeleteOptions, Registry};
use crate::resources;

/// kube-apiserver's `--event-ttl` default.
pub const DEFAULT_EVENT_TTL: Duration = Duration::from_secs(3600);

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
    /// When the Event was last written, as far as its fields say: the newest of its
    /// creation, last timestamp, event time and series' last observation.
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

    /// Whether it has outlived `ttl` at `now`; an Event with no time at all stays.
    fn expired(&self, ttl: Duration, now: jiff::Timestamp) -> bool {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        self.last_written()
            .is_some_and(|t| now.as_second() - t.as_second() >= ttl)
    }
}

/// Events read per page of the sweep, so it never holds them all at once.
const PAGE: usize = 500;

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
        let now = jiff::Timestamp::now();
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
                if t.expired(ttl, now) {
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
        let ev: Times = serde_json::from_value(json!({
            "metadata": {"name": "e", "creationTimestamp": "2026-01-01T10:00:00Z"},
            "lastTimestamp": "2026-01-01T10:30:00Z",
            "series": {"lastObservedTime": "2026-01-01T10:45:00.123456Z"}}))
        .unwrap();
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert_eq!(ev.last_written(), Some(at("2026-01-01T10:45:00.123456Z")));
        assert!(!ev.expired(DEFAULT_EVENT_TTL, at("2026-01-01T11:44:59Z")));
        assert!(ev.expired(DEFAULT_EVENT_TTL, at("2026-01-01T11:45:01Z")));
        // An event with no time at all is left alone.
        let timeless: Times = serde_json::from_value(json!({})).unwrap();
        assert!(!timeless.expired(DEFAULT_EVENT_TTL, at("2030-01-01T00:00:00Z")));
    }
}
