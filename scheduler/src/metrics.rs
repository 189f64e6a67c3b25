//! kube-scheduler's metrics: pending pods by queue, and each scheduling attempt's
//! result and duration.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tinykube_api::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    result: String,
    profile: String,
}

fn attempt_histogram() -> Histogram {
    // kube-scheduler's: 1 ms doubling, 15 buckets.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

#[derive(Clone)]
pub struct SchedulerMetrics {
    pending: Family<QueueLabel, Gauge>,
    attempts: Family<AttemptLabels, Counter>,
    duration: Family<AttemptLabels, Histogram, fn() -> Histogram>,
}

impl SchedulerMetrics {
    pub fn new(registry: &Metrics) -> Self {
        let m = Self {
            pending: Family::default(),
            attempts: Family::default(),
            duration: Family::new_with_constructor(attempt_histogram),
        };
        registry.register(
            "scheduler_pending_pods",
            "Number of pending pods, by the queue type",
            m.pending.clone(),
        );
        registry.register(
            "scheduler_schedule_attempts",
            "Number of attempts to schedule pods, by the result",
            m.attempts.clone(),
        );
        registry.register(
            "scheduler_scheduling_attempt_duration_seconds",
            "Scheduling attempt latency in seconds (scheduling algorithm + binding)",
            m.duration.clone(),
        );
        m
    }

    pub fn pending(&self, (active, backoff, unschedulable): (usize, usize, usize)) {
        for (queue, n) in [
            ("active", active),
            ("backoff", backoff),
            ("unschedulable", unschedulable),
        ] {
            self.pending
                .get_or_create(&QueueLabel {
                    queue: queue.into(),
                })
                .set(n as i64);
        }
    }

    pub fn attempt(&self, result: &str, seconds: f64) {
        let l = AttemptLabels {
            result: result.into(),
            profile: crate::SCHEDULER_NAME.into(),
        };
        self.attempts.get_or_create(&l).inc();
        self.duration.get_or_create(&l).observe(seconds);
    }
}
