//! The master's metrics registry: one Prometheus registry per process that the API
//! server, the controllers and the scheduler register their metrics in, served on the
//! API server's `/metrics` (kube-apiserver's, kube-controller-manager's and
//! kube-scheduler's names in one place, since they run in one process here).

use std::sync::{Arc, RwLock};

use prometheus_client::registry::{Metric, Registry};

pub use prometheus_client;

/// A handle to the process's registry; clones share it.
#[derive(Clone, Default, Debug)]
pub struct Metrics(Arc<RwLock<Registry>>);

impl Metrics {
    /// Registers `metric` as `name` (a counter's `_total` is added by the encoder).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, metric);
    }

    /// Everything registered, in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.0.read().unwrap_or_else(|e| e.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// kube-apiserver's latency buckets (apiserver_request_duration_seconds), in seconds.
pub const REQUEST_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// etcd_request_duration_seconds' buckets in kube-apiserver, in seconds.
pub const STORAGE_BUCKETS: [f64; 20] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0,
];

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn registered_metrics_are_encoded_as_text() {
        let m = Metrics::default();
        let c = Counter::<u64>::default();
        m.clone()
            .register("workqueue_adds", "Total number of adds", c.clone());
        c.inc();
        let text = m.encode();
        assert!(text.contains("# TYPE workqueue_adds counter"), "{text}");
        assert!(text.contains("workqueue_adds_total 1"), "{text}");
    }
}
