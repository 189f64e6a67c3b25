//! core/v1 Events about objects, as `kubectl describe` and `kubectl get events` show
//! them: one recorder per component (kubelet, default-scheduler, ...), its events
//! passed through client-go's correlation (`correlator.rs`) so repeats fold into one
//! Event's count and a flood writes a bounded number.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::correlator::{Correlator, Decision, Keys};

/// `Normal` or `Warning`, the two types Kubernetes has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Records Events as one component (`source.component`), optionally on one host.
/// Clones share one correlator, so a component makes one recorder and clones it.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: String,
    host: Option<String>,
    correlator: Arc<Mutex<Correlator>>,
}

/// core/v1 `series.lastObservedTime` is a MicroTime.
fn micro_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl Recorder {
    pub fn new(client: kube::Client, component: &str, host: Option<&str>) -> Self {
        Self {
            client,
            component: component.to_string(),
            host: host.map(str::to_string),
            correlator: Arc::default(),
        }
    }

    /// What the correlator knows this event by.
    fn keys<K>(&self, obj: &K, kind: EventType, reason: &str, message: &str) -> Keys
    where
        K: Resource<DynamicType = ()>,
    {
        let spam = [
            self.component.as_str(),
            self.host.as_deref().unwrap_or_default(),
            &K::kind(&()),
            &obj.namespace().unwrap_or_default(),
            &obj.name_any(),
            &obj.uid().unwrap_or_default(),
            &K::api_version(&()),
        ]
        .join("/");
        Keys {
            aggregate: format!("{spam}/{}/{reason}", kind.as_str()),
            spam,
            message: message.to_string(),
        }
    }

    /// Records an Event about `obj` and waits for the API server to store it: a new
    /// Event, the count of an earlier one going up, or nothing when the object's
    /// events are over their budget.
    pub async fn record<K>(&self, obj: &K, kind: EventType, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let now = jiff::Timestamp::now();
        let mut ev = self.event(obj, kind, reason, message, now);
        let name = ev["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let decision = self
            .correlator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(
                &self.keys(obj, kind, reason, message),
                name,
                Instant::now(),
                now,
            );
        let ns = obj.namespace().unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let result = match decision {
            Decision::Drop => {
                tracing::debug!(reason, "event dropped: over the object's event budget");
                return;
            }
            Decision::Create { name, message } => {
                ev["metadata"]["name"] = json!(name);
                ev["message"] = json!(message);
                self.create(&api, ev).await
            }
            Decision::Update {
                name,
                message,
                count,
                first,
            } => {
                let at = tinykube_api::format::rfc3339(now);
                let patch = json!({"count": count, "lastTimestamp": at, "message": message,
                    "series": {"count": count, "lastObservedTime": micro_time(now)}});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        // Expired or deleted: written again whole, under its name.
                        ev["metadata"]["name"] = json!(name);
                        ev["message"] = json!(message);
                        ev["count"] = json!(count);
                        ev["firstTimestamp"] = json!(tinykube_api::format::rfc3339(first));
                        self.create(&api, ev).await
                    }
                    r => r.map(|_| ()),
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(reason, error = %e, "cannot record an event");
        }
    }

    async fn create(&self, api: &Api<Event>, ev: Value) -> Result<(), kube::Error> {
        let ev: Event = serde_json::from_value(ev).map_err(kube::Error::SerdeError)?;
        api.create(&PostParams::default(), &ev).await.map(|_| ())
    }

    /// Records an Event in the background: the caller never waits for it.
    pub fn record_later<K>(&self, obj: &K, kind: EventType, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        let (this, obj, reason, message) = (
            self.clone(),
            obj.clone(),
            reason.to_string(),
            message.to_string(),
        );
        tokio::spawn(async move { this.record(&obj, kind, &reason, &message).await });
    }

    /// The Event's body: named `<object>.<nanoseconds in hex>` as client-go's are.
    fn event<K>(
        &self,
        obj: &K,
        kind: EventType,
        reason: &str,
        message: &str,
        now: jiff::Timestamp,
    ) -> Value
    where
        K: Resource<DynamicType = ()>,
    {
        let ns = obj.namespace().unwrap_or_else(|| "default".into());
        let name = obj.name_any();
        let at = tinykube_api::format::rfc3339(now);
        let mut source = json!({"component": self.component});
        if let Some(h) = &self.host {
            source["host"] = json!(h);
        }
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.{:x}", now.as_nanosecond()), "namespace": ns},
            "involvedObject": {"apiVersion": K::api_version(&()), "kind": K::kind(&()), "name": name,
                               "namespace": obj.namespace(), "uid": obj.uid()},
            "reason": reason, "message": message, "type": kind.as_str(), "count": 1,
            "source": source,
            "firstTimestamp": at, "lastTimestamp": at,
            "reportingComponent": self.component, "reportingInstance": self.host.as_deref().unwrap_or(&self.component),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn recorder(host: Option<&str>) -> Recorder {
        // No request is made: only the event body is built.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        Recorder::new(kube::Client::try_from(config).unwrap(), "kubelet", host)
    }

    #[test]
    fn a_series_time_is_a_micro_time() {
        let t = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        assert_eq!(micro_time(t), "2023-11-14T22:13:20.000000Z");
    }

    #[tokio::test]
    async fn events_name_the_object_and_the_component() {
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": "web-1", "namespace": "lab", "uid": "u-1"}}),
        )
        .unwrap();
        let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let ev =
            recorder(Some("worker-1")).event(&pod, EventType::Warning, "Failed", "no image", now);
        assert_eq!(ev["involvedObject"]["kind"], "Pod");
        assert_eq!(ev["involvedObject"]["apiVersion"], "v1");
        assert_eq!(ev["involvedObject"]["uid"], "u-1");
        assert_eq!(ev["metadata"]["namespace"], "lab");
        assert!(
            ev["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("web-1.")
        );
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["source"]["component"], "kubelet");
        assert_eq!(ev["source"]["host"], "worker-1");
        let ev = recorder(None).event(&pod, EventType::Normal, "Scheduled", "ok", now);
        assert!(ev["source"].get("host").is_none());
        assert_eq!(ev["reportingInstance"], "kubelet");
        // Every field the API server's Event type has decodes.
        serde_json::from_value::<Event>(ev).unwrap();
    }
}
