//! The service proxy's counters on the node's `/metrics`, under kube-proxy's names:
//! sync durations (all, full and partial writes), rules written, restore failures.

use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::Written;

/// Upper bounds of the duration buckets, in seconds (kube-proxy's: 1 ms doubling).
const BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, s: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", self.buckets[i]);
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            self.count, self.sum, self.count
        );
    }
}

#[derive(Default)]
struct State {
    all: Histogram,
    full: Histogram,
    partial: Histogram,
    failures: u64,
    nat_rules: usize,
    filter_rules: usize,
    last_bytes: usize,
    last_sync: f64,
}

#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
}

impl Metrics {
    /// A successful write: how long it took, what it wrote, and the (nat, filter) rules
    /// in force.
    pub fn synced(&self, took: Duration, w: &Written, (nat, filter): (usize, usize)) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let secs = took.as_secs_f64();
        s.all.observe(secs);
        if w.full {
            s.full.observe(secs);
        } else {
            s.partial.observe(secs);
        }
        s.nat_rules = nat;
        s.filter_rules = filter;
        s.last_bytes = w.bytes;
        s.last_sync = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
    }

    pub fn failed(&self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failures += 1;
    }

    pub fn prometheus(&self) -> String {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        s.all.write(
            &mut out,
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
        );
        s.full.write(
            &mut out,
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
        );
        s.partial.write(
            &mut out,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
        );
        let _ = writeln!(
            out,
            "# HELP kubeproxy_sync_proxy_rules_iptables_total Total number of iptables rules owned by kube-proxy\n# TYPE kubeproxy_sync_proxy_rules_iptables_total gauge\nkubeproxy_sync_proxy_rules_iptables_total{{table=\"nat\"}} {}\nkubeproxy_sync_proxy_rules_iptables_total{{table=\"filter\"}} {}",
            s.nat_rules, s.filter_rules
        );
        let _ = writeln!(
            out,
            "# HELP kubeproxy_sync_proxy_rules_iptables_restore_failures_total Cumulative proxy iptables restore failures\n# TYPE kubeproxy_sync_proxy_rules_iptables_restore_failures_total counter\nkubeproxy_sync_proxy_rules_iptables_restore_failures_total {}",
            s.failures
        );
        let _ = writeln!(
            out,
            "# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds The last time proxy rules were successfully synced\n# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge\nkubeproxy_sync_proxy_rules_last_timestamp_seconds {}",
            s.last_sync
        );
        let _ = writeln!(
            out,
            "# HELP tinykube_proxy_restore_bytes Bytes given to iptables-restore by the last write.\n# TYPE tinykube_proxy_restore_bytes gauge\ntinykube_proxy_restore_bytes {}",
            s.last_bytes
        );
        out
    }
}
