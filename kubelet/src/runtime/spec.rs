//! The OCI runtime spec of sandboxes and containers, with containerd's defaults
//! (capabilities, mounts, masked paths) so a container behaves as under Kubernetes.

use serde_json::{Value, json};

/// A bind or special mount in a container.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub destination: String,
    pub source: String,
    pub kind: String,
    pub options: Vec<String>,
}

impl Mount {
    pub fn bind(source: &str, destination: &str, read_only: bool) -> Self {
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        options.push(if read_only { "ro" } else { "rw" }.to_string());
        Self {
            destination: destination.to_string(),
            source: source.to_string(),
            kind: "bind".to_string(),
            options,
        }
    }
}

/// Everything that varies between containers.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    /// Network namespace to join (a path): the sandbox's pinned netns or the pause's;
    /// empty makes a new one.
    pub netns: String,
    /// ipc and uts namespaces to join; None makes new ones (the sandbox does).
    pub ipc: Option<String>,
    pub uts: Option<String>,
    pub mounts: Vec<Mount>,
    pub memory_limit: Option<i64>,
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cgroups_path: String,
    pub oom_score_adj: Option<i32>,
    /// Containers with the same group share one shim (one per pod, as CRI does).
    pub shim_group: Option<String>,
}

const CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// cgroup CPU shares and CFS quota for a CPU request and limit in millicores, as the
/// kubelet computes them (shares 1024 per core, minimum 2; quota per 100 ms period).
pub fn cpu_shares(milli_request: i64) -> u64 {
    ((milli_request.max(0) as u64) * 1024 / 1000).max(2)
}

pub fn cpu_quota(milli_limit: i64) -> i64 {
    (milli_limit * 100_000 / 1000).max(1000)
}

impl ContainerSpec {
    pub fn to_json(&self) -> Value {
        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
            json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
            json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        ];
        for m in &self.mounts {
            mounts.push(json!({"destination": m.destination, "type": m.kind, "source": m.source, "options": m.options}));
        }
        // No cgroup namespace: these hosts are cgroup v1 hybrids, where runc cannot
        // make one.
        let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "mount"})];
        namespaces.push(if self.netns.is_empty() {
            json!({"type": "network"})
        } else {
            json!({"type": "network", "path": self.netns})
        });
        namespaces.push(match &self.ipc {
            Some(p) => json!({"type": "ipc", "path": p}),
            None => json!({"type": "ipc"}),
        });
        namespaces.push(match &self.uts {
            Some(p) => json!({"type": "uts", "path": p}),
            None => json!({"type": "uts"}),
        });
        let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
        if let Some(m) = self.memory_limit {
            // Memory plus swap capped at the same value: no swapping past the limit
            // (what the kubelet asks of cgroup v1).
            resources["memory"] = json!({"limit": m, "swap": m});
        }
        let mut cpu = serde_json::Map::new();
        if let Some(s) = self.cpu_shares {
            cpu.insert("shares".into(), json!(s));
        }
        if let Some(q) = self.cpu_quota {
            cpu.insert("quota".into(), json!(q));
            cpu.insert("period".into(), json!(100_000));
        }
        if !cpu.is_empty() {
            resources["cpu"] = Value::Object(cpu);
        }
        let caps = json!(CAPS);
        let mut process = json!({
            "terminal": false,
            "user": {"uid": self.uid, "gid": self.gid},
            "args": self.args,
            "env": self.env,
            "cwd": if self.cwd.is_empty() { "/" } else { &self.cwd },
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": false,
        });
        if let Some(a) = self.oom_score_adj {
            process["oomScoreAdj"] = json!(a);
        }
        let mut annotations = serde_json::Map::new();
        if let Some(g) = &self.shim_group {
            annotations.insert("io.containerd.runc.v2.group".into(), json!(g));
        }
        json!({
            "ociVersion": "1.0.2",
            "annotations": annotations,
            "process": process,
            "root": {"path": "rootfs", "readonly": false},
            "hostname": self.hostname,
            "mounts": mounts,
            "linux": {
                "resources": resources,
                "cgroupsPath": self.cgroups_path,
                "namespaces": namespaces,
                "maskedPaths": [
                    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                    "/proc/scsi",
                ],
                "readonlyPaths": [
                    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
                ],
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_containers_join_the_sandbox_namespaces() {
        let s = ContainerSpec {
            args: vec!["/app".into()],
            netns: "/proc/42/ns/net".into(),
            ipc: Some("/proc/42/ns/ipc".into()),
            uts: Some("/proc/42/ns/uts".into()),
            memory_limit: Some(64 << 20),
            cpu_shares: Some(cpu_shares(250)),
            cpu_quota: Some(cpu_quota(500)),
            mounts: vec![Mount::bind("/h", "/etc/hosts", true)],
            ..Default::default()
        };
        let v = s.to_json();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "network", "path": "/proc/42/ns/net"})));
        assert!(ns.contains(&json!({"type": "ipc", "path": "/proc/42/ns/ipc"})));
        assert!(!ns.iter().any(|n| n["type"] == "cgroup"));
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 256);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["process"]["cwd"], "/");
        assert!(
            v["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["destination"] == "/etc/hosts")
        );
    }
}
