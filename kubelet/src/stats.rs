//! Resource usage from cgroups (v1 or v2) and network counters: the kubelet's
//! `/stats/summary` (kubelet stats API v1alpha1, which metrics-server and `kubectl top`
//! read through the API server), computed only when asked.
//!
//! CPU comes as a cumulative counter; the rate (`usageNanoCores`) is the change since
//! the last time someone asked, as cAdvisor reports it between housekeeping passes. With
//! no recent earlier reading, two are taken a short moment apart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::pods::PodView;

const ROOT: &str = "/sys/fs/cgroup";

/// How a cgroup path is laid out on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hierarchy {
    /// One directory per controller (`/sys/fs/cgroup/memory/...`).
    V1,
    /// One unified tree (`/sys/fs/cgroup/...` with `cgroup.controllers`).
    V2,
}

impl Hierarchy {
    pub fn detect() -> Self {
        if Path::new(ROOT).join("cgroup.controllers").exists() {
            Self::V2
        } else {
            Self::V1
        }
    }

    /// The directory of `cgroup` for `controller` (`memory`, `cpu`, `cpuacct`).
    pub fn dir(self, controller: &str, cgroup: &str) -> PathBuf {
        let rel = cgroup.trim_start_matches('/');
        match self {
            Self::V2 => Path::new(ROOT).join(rel),
            Self::V1 => {
                // Some hosts mount cpu and cpuacct together.
                let joint = Path::new(ROOT).join("cpu,cpuacct");
                let base = if (controller == "cpu" || controller == "cpuacct")
                    && !Path::new(ROOT).join(controller).exists()
                    && joint.exists()
                {
                    joint
                } else {
                    Path::new(ROOT).join(controller)
                };
                base.join(rel)
            }
        }
    }
}

/// One reading of a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// CPU time used since the cgroup was made, in nanoseconds.
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    /// Usage less inactive file pages: what the kubelet evicts on and `kubectl top` shows.
    pub working_set_bytes: u64,
    pub rss_bytes: u64,
}

/// The limits a cgroup enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CFS quota and period in microseconds.
    pub cpu_quota_us: Option<u64>,
    pub cpu_period_us: Option<u64>,
    /// cgroup v1 `cpu.shares` (v2: `cpu.weight`, converted back as the kubelet maps them).
    pub cpu_shares: Option<u64>,
}

fn read(p: PathBuf) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn number(p: PathBuf) -> Option<u64> {
    read(p)?.trim().parse().ok()
}

/// A `key value` line of a stat file.
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads a cgroup; None when it does not exist (a container that is gone).
pub fn usage(h: Hierarchy, cgroup: &str) -> Option<Usage> {
    match h {
        Hierarchy::V1 => {
            let mem = h.dir("memory", cgroup);
            let memory_bytes = number(mem.join("memory.usage_in_bytes"))?;
            let stat = read(mem.join("memory.stat")).unwrap_or_default();
            let inactive = stat_field(&stat, "total_inactive_file").unwrap_or(0);
            Some(Usage {
                cpu_ns: number(h.dir("cpuacct", cgroup).join("cpuacct.usage")).unwrap_or(0),
                memory_bytes,
                working_set_bytes: memory_bytes.saturating_sub(inactive),
                rss_bytes: stat_field(&stat, "total_rss").unwrap_or(0),
            })
        }
        Hierarchy::V2 => {
            let dir = h.dir("", cgroup);
            let memory_bytes = number(dir.join("memory.current"))?;
            let stat = read(dir.join("memory.stat")).unwrap_or_default();
            let cpu = read(dir.join("cpu.stat")).unwrap_or_default();
            Some(Usage {
                cpu_ns: stat_field(&cpu, "usage_usec").unwrap_or(0) * 1000,
                memory_bytes,
                working_set_bytes: memory_bytes
                    .saturating_sub(stat_field(&stat, "inactive_file").unwrap_or(0)),
                rss_bytes: stat_field(&stat, "anon").unwrap_or(0),
            })
        }
    }
}

/// The machine's own usage, for the node: the root cgroup's CPU and memory.
pub fn machine_usage(h: Hierarchy) -> Usage {
    let cpu_ns = match h {
        Hierarchy::V1 => number(h.dir("cpuacct", "").join("cpuacct.usage")).unwrap_or(0),
        // The v2 root has no cpu.stat of its own: /proc/stat's busy jiffies stand in.
        Hierarchy::V2 => read(PathBuf::from("/proc/stat"))
            .and_then(|s| busy_ns(&s))
            .unwrap_or(0),
    };
    let meminfo = read(PathBuf::from("/proc/meminfo")).unwrap_or_default();
    let kib = |k: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(k)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    let total = kib("MemTotal").unwrap_or(0) * 1024;
    let free = kib("MemFree").unwrap_or(0) * 1024;
    let inactive_file = kib("Inactive(file)").unwrap_or(0) * 1024;
    let used = total.saturating_sub(free);
    Usage {
        cpu_ns,
        memory_bytes: used,
        working_set_bytes: used.saturating_sub(inactive_file),
        rss_bytes: kib("AnonPages").unwrap_or(0) * 1024,
    }
}

/// The busy CPU time in `/proc/stat`'s first line (all but idle and iowait), in ns.
fn busy_ns(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let busy: u64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    Some(busy * 10_000_000)
}

/// The limits in force on a cgroup.
pub fn limits(h: Hierarchy, cgroup: &str) -> Limits {
    // Values at or past 2^62 mean "no limit" on v1 (the page-rounded i64 max).
    let bounded = |v: Option<u64>| v.filter(|v| *v < (1u64 << 62));
    match h {
        Hierarchy::V1 => {
            let cpu = h.dir("cpu", cgroup);
            let quota: Option<i64> =
                read(cpu.join("cpu.cfs_quota_us")).and_then(|s| s.trim().parse().ok());
            Limits {
                memory_bytes: bounded(number(
                    h.dir("memory", cgroup).join("memory.limit_in_bytes"),
                )),
                cpu_quota_us: quota.filter(|q| *q > 0).map(|q| q as u64),
                cpu_period_us: number(cpu.join("cpu.cfs_period_us")),
                cpu_shares: number(cpu.join("cpu.shares")),
            }
        }
        Hierarchy::V2 => {
            let dir = h.dir("", cgroup);
            let max = read(dir.join("cpu.max")).unwrap_or_default();
            let mut it = max.split_whitespace();
            let quota = it.next().and_then(|q| q.parse().ok());
            Limits {
                memory_bytes: read(dir.join("memory.max")).and_then(|s| s.trim().parse().ok()),
                cpu_quota_us: quota,
                cpu_period_us: it.next().and_then(|p| p.parse().ok()),
                // The kubelet's weight = 1 + (shares - 2) * 9999 / 262142, inverted.
                cpu_shares: number(dir.join("cpu.weight"))
                    .map(|w| 2 + (w.saturating_sub(1)) * 262_142 / 9999),
            }
        }
    }
}

/// Remembers the last CPU reading of each cgroup, so a rate can be given.
#[derive(Default)]
pub struct Rates(Mutex<HashMap<String, Reading>>);

/// When a counter was read, its value, and the rate computed then (if any).
type Reading = (Instant, u64, Option<u64>);

/// Readings older than this are not used for a rate.
const STALE: Duration = Duration::from_secs(120);
/// Readings closer than this reuse the rate computed last.
const MIN_WINDOW: Duration = Duration::from_millis(500);

impl Rates {
    /// The CPU rate of `key` in nanocores given its counter `now_ns` read at `at`, or
    /// None without a usable earlier reading.
    pub fn rate(&self, key: &str, at: Instant, now_ns: u64) -> Option<u64> {
        let mut m = self.0.lock().expect("rates lock");
        let prev = m.get(key).copied();
        match prev {
            Some((t, _, Some(last_rate))) if at.duration_since(t) < MIN_WINDOW => Some(last_rate),
            Some((t, ns, _)) if at > t && at.duration_since(t) < STALE => {
                let dt = at.duration_since(t).as_nanos();
                let rate = (u128::from(now_ns.saturating_sub(ns)) * 1_000_000_000 / dt) as u64;
                m.insert(key.to_string(), (at, now_ns, Some(rate)));
                Some(rate)
            }
            _ => {
                m.insert(key.to_string(), (at, now_ns, None));
                None
            }
        }
    }

    /// Forgets cgroups not in `keep`.
    pub fn retain(&self, keep: &std::collections::HashSet<String>) {
        self.0
            .lock()
            .expect("rates lock")
            .retain(|k, _| keep.contains(k));
    }
}

fn rfc3339(t: std::time::SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn cpu_json(time: &str, u: &Usage, rate: Option<u64>) -> Value {
    let mut v = json!({"time": time, "usageCoreNanoSeconds": u.cpu_ns});
    if let Some(r) = rate {
        v["usageNanoCores"] = json!(r);
    }
    v
}

fn memory_json(time: &str, u: &Usage, limit: Option<u64>) -> Value {
    let mut v = json!({"time": time, "usageBytes": u.memory_bytes,
                       "workingSetBytes": u.working_set_bytes, "rssBytes": u.rss_bytes,
                       "pageFaults": 0, "majorPageFaults": 0});
    if let Some(l) = limit {
        v["availableBytes"] = json!(l.saturating_sub(u.working_set_bytes));
    }
    v
}

fn network_json(time: &str, name: &str, c: [u64; 4]) -> Value {
    let iface =
        json!({"name": name, "rxBytes": c[1], "rxErrors": 0, "txBytes": c[3], "txErrors": 0});
    let mut v = iface.clone();
    v["time"] = json!(time);
    v["interfaces"] = json!([iface]);
    v
}

/// Where each cgroup is, so the summary can be put together with no I/O of its own.
pub struct Source<'a> {
    pub hierarchy: Hierarchy,
    pub node: &'a str,
    pub pods: &'a [PodView],
    pub pod_cgroup: &'a dyn Fn(&str) -> String,
    pub container_cgroup: &'a dyn Fn(&str, &str) -> String,
}

/// The kubelet's `/stats/summary`: the node, then each pod with its containers.
pub fn summary(src: &Source<'_>, rates: &Rates) -> Value {
    let first = collect(src, rates);
    if first.missing_rates {
        // Nothing recent to compare with: a second reading a moment later gives rates.
        std::thread::sleep(Duration::from_millis(250));
        return collect(src, rates).value;
    }
    first.value
}

struct Collected {
    value: Value,
    missing_rates: bool,
}

fn collect(src: &Source<'_>, rates: &Rates) -> Collected {
    let h = src.hierarchy;
    let now = std::time::SystemTime::now();
    let at = Instant::now();
    let time = rfc3339(now);
    let mut missing = false;
    let mut keys = std::collections::HashSet::new();
    let mut rate = |key: String, ns: u64| {
        let r = rates.rate(&key, at, ns);
        missing |= r.is_none();
        keys.insert(key);
        r
    };
    let machine = machine_usage(h);
    let node_rate = rate(String::new(), machine.cpu_ns);
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|k| k * 1024);
    let net = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let node_ifaces: Vec<Value> = net
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .filter(|n| n != "lo")
        .filter_map(|n| {
            tinykube_net::inspect::net_dev(&net, &n).map(|c| {
                json!({"name": n, "rxBytes": c[1], "rxErrors": 0, "txBytes": c[3], "txErrors": 0})
            })
        })
        .collect();
    let mut pods = Vec::new();
    for p in src.pods {
        let cg = (src.pod_cgroup)(&p.uid);
        let Some(u) = usage(h, &cg) else { continue };
        let pod_rate = rate(cg.clone(), u.cpu_ns);
        let mut containers = Vec::new();
        let mut names: Vec<&String> = p.containers.keys().collect();
        names.sort();
        for name in names {
            let c = &p.containers[name];
            if !c.running {
                continue;
            }
            let ccg = (src.container_cgroup)(&p.uid, name);
            let Some(cu) = usage(h, &ccg) else { continue };
            let r = rate(ccg.clone(), cu.cpu_ns);
            let lim = limits(h, &ccg).memory_bytes;
            containers.push(json!({
                "name": name,
                "startTime": p.start_time,
                "cpu": cpu_json(&time, &cu, r),
                "memory": memory_json(&time, &cu, lim),
            }));
        }
        let mut pod = json!({
            "podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
            "startTime": p.start_time,
            "containers": containers,
            "cpu": cpu_json(&time, &u, pod_rate),
            "memory": memory_json(&time, &u, limits(h, &cg).memory_bytes),
        });
        if let Some(s) = p.sandbox
            && let Some(c) = std::fs::read_to_string(format!("/proc/{}/net/dev", s.pid))
                .ok()
                .and_then(|t| tinykube_net::inspect::net_dev(&t, "eth0"))
        {
            pod["network"] = network_json(&time, "eth0", c);
        }
        pods.push(pod);
    }
    rates.retain(&keys);
    let mut node = json!({
        "nodeName": src.node,
        "cpu": cpu_json(&time, &machine, node_rate),
        "memory": memory_json(&time, &machine, total),
        "network": {"time": time, "interfaces": node_ifaces},
    });
    if let Some(t) = total {
        node["memory"]["availableBytes"] = json!(t.saturating_sub(machine.working_set_bytes));
    }
    Collected {
        value: json!({"node": node, "pods": pods}),
        missing_rates: missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_files_are_read_by_key() {
        let stat = "cache 4096\nrss 1048576\ntotal_rss 2097152\ntotal_inactive_file 8192\n";
        assert_eq!(stat_field(stat, "total_rss"), Some(2_097_152));
        assert_eq!(stat_field(stat, "rss"), Some(1_048_576));
        assert_eq!(stat_field(stat, "total_inactive_file"), Some(8192));
        assert_eq!(stat_field(stat, "swap"), None);
    }

    #[test]
    fn busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 0 50 1000 30 0 5 0 0 0\ncpu0 50 0 25 500 15 0 2 0 0 0\n";
        assert_eq!(busy_ns(stat), Some(155 * 10_000_000));
        assert_eq!(busy_ns("intr 1 2 3\n"), None);
    }

    #[test]
    fn a_rate_needs_an_earlier_reading_that_is_not_stale() {
        let r = Rates::default();
        let t0 = Instant::now();
        assert_eq!(r.rate("a", t0, 1_000_000_000), None);
        // A second reading soon after the first still gives a rate.
        let r2 = Rates::default();
        assert_eq!(r2.rate("b", t0, 0), None);
        let soon = t0 + Duration::from_millis(250);
        assert_eq!(r2.rate("b", soon, 125_000_000), Some(500_000_000));
        // Half a core over two seconds.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(r.rate("a", t1, 2_000_000_000), Some(500_000_000));
        // Asked again at once: the same rate, not a rate over a tiny window.
        assert_eq!(
            r.rate("a", t1 + Duration::from_millis(10), 2_000_000_001),
            Some(500_000_000)
        );
        let late = t1 + STALE + Duration::from_secs(1);
        assert_eq!(r.rate("a", late, 3_000_000_000), None);
        r.retain(&Default::default());
        assert_eq!(r.rate("a", late, 3_000_000_000), None);
    }

    #[test]
    fn v1_puts_each_controller_in_its_own_tree() {
        let d = Hierarchy::V1.dir("memory", "/tinykube/w1/podX/app");
        assert_eq!(
            d,
            PathBuf::from("/sys/fs/cgroup/memory/tinykube/w1/podX/app")
        );
        let d = Hierarchy::V2.dir("memory", "/tinykube/w1/podX/app");
        assert_eq!(d, PathBuf::from("/sys/fs/cgroup/tinykube/w1/podX/app"));
    }
}
