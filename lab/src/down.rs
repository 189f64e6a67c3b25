//! `tinykube down`: every trace of a lab removed, also what a crashed `up` left.

use super::*;

impl Lab {
    /// Removes cluster `name` and everything it left: its processes (by pid, checked),
    /// pods and the nodes' containerd namespaces, network namespaces, bridge and veths,
    /// the containerd it started, the kubeconfig it wrote, and its data unless `keep`.
    /// Returns false if there was nothing to remove.
    pub async fn down(name: &str, dir: &Path, keep: bool) -> Result<bool, LabError> {
        check_name(name)?;
        let state = read_state(dir);
        let mut found = state.is_some();
        let dir_marker = dir.display().to_string();
        // 1. Node processes: recorded pids, and any tinykube still running with this
        // lab's data dir (a crashed `up` may not have recorded it).
        let mut pids: Vec<u32> = state
            .iter()
            .flat_map(|s| s.nodes.iter().filter_map(|n| n.pid))
            .collect();
        pids.extend(
            processes_mentioning(&format!("{dir_marker}/"))
                .into_iter()
                .filter(|p| {
                    let c = cmdline(*p);
                    c.contains(" master ") || c.contains(" worker ")
                }),
        );
        pids.sort_unstable();
        pids.dedup();
        let stops: Vec<_> = pids
            .iter()
            .map(|p| stop_process(*p, &dir_marker, Duration::from_secs(10)))
            .collect();
        found |= !stops.is_empty();
        for s in stops {
            s.await;
        }
        // 2. Pods and containerd namespaces of the nodes.
        let mut node_names: Vec<String> = state
            .iter()
            .flat_map(|s| s.nodes.iter().map(|n| n.name.clone()))
            .collect();
        for ns in leftover_netns(name) {
            found = true;
            let suffix = ns.trim_start_matches(&netns_prefix(name)).to_string();
            let n = if name == DEFAULT_NAME {
                suffix
            } else {
                format!("{name}-{suffix}")
            };
            if !node_names.contains(&n) {
                node_names.push(n);
            }
        }
        let own_socket = dir.join("containerd").join("containerd.sock");
        let socket = state
            .as_ref()
            .map(|s| s.containerd_socket.clone())
            .filter(|s| !s.as_os_str().is_empty())
            .unwrap_or_else(|| {
                if own_socket.exists() {
                    own_socket.clone()
                } else {
                    PathBuf::from(tinykube_kubelet::runtime::daemon::CONTAINERD_SOCKET)
                }
            });
        let mut pod_uids: Vec<String> = Vec::new();
        // A namespace containerd will not remove yet does not stop the rest: the network
        // goes regardless (a leftover bridge on the lab's subnet would break the next
        // cluster), and the data stays, so `down` again can finish the job.
        let mut purge_failed = None;
        if containerd_answers(&socket).await {
            for n in &node_names {
                let rt =
                    Runtime::connect(&socket, &format!("tinykube-{n}"), Duration::from_secs(2))
                        .await?;
                if rt.namespace_exists().await? {
                    found = true;
                    for c in rt.list_containers().await? {
                        if let Some(uid) = c.labels.get(tinykube_kubelet::pods::LABEL_POD_UID) {
                            pod_uids.push(uid.clone());
                        }
                    }
                    if let Err(e) = rt.purge().await {
                        purge_failed.get_or_insert(e);
                    }
                }
            }
        }
        pod_uids.extend(ipam_owners(dir));
        for uid in pod_uids {
            if let Ok(ns) = NetNs::open(&format!("tk-{uid}")) {
                let _ = ns.delete();
            }
        }
        // 3. The containerd the lab started.
        if let Some(pid) = state.as_ref().and_then(|s| s.containerd_pid) {
            stop_process(pid, &dir_marker, Duration::from_secs(10)).await;
        }
        for pid in processes_mentioning(&format!("{dir_marker}/containerd/config.toml")) {
            stop_process(pid, &dir_marker, Duration::from_secs(10)).await;
        }
        // 4. Network: node namespaces (their veth ends and cni0 go with them), bridge.
        for ns in leftover_netns(name).collect::<Vec<_>>() {
            if let Ok(n) = NetNs::open(&ns) {
                n.delete()?;
            }
        }
        let h = link::connect()?;
        let bridge = bridge_name(name);
        if link::link_index(&h, &bridge).await?.is_some() {
            found = true;
            link::delete_link(&h, &bridge).await?;
        }
        if let Some(st) = &state {
            for n in &st.nodes {
                link::delete_link(&h, &n.veth).await?;
            }
            // 5. The default kubeconfig, if it is still the one `up` wrote.
            if let Some(p) = &st.wrote_default_kubeconfig
                && std::fs::read(p).ok() == std::fs::read(&st.kubeconfig).ok()
            {
                let _ = std::fs::remove_file(p);
            }
        }
        if let Some(e) = purge_failed {
            return Err(e.into());
        }
        // 6. Data.
        if dir.exists() {
            found = true;
            if !keep {
                // Mounts under the data dir (a lab containerd's) are gone with it.
                std::fs::remove_dir_all(dir)
                    .map_err(io(format!("cannot remove {}", dir.display())))?;
            } else {
                let _ = std::fs::remove_file(dir.join(STATE_FILE));
            }
        }
        Ok(found)
    }
}

pub(crate) async fn link_exists_root(name: &str) -> Result<bool, LabError> {
    let h = link::connect()?;
    Ok(link::link_index(&h, name).await?.is_some())
}

/// Node namespaces of cluster `name` under /var/run/netns.
pub(crate) fn leftover_netns(name: &str) -> impl Iterator<Item = String> {
    let prefix = netns_prefix(name);
    std::fs::read_dir(tinykube_net::netns::NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(move |n| n.starts_with(&prefix))
}

/// Pod UIDs with addresses in any node's allocations under `dir`.
pub(crate) fn ipam_owners(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir()
                && !p.ends_with("containerd")
                && !p.ends_with("pods")
                && !p.ends_with("db")
            {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "allocations.json")
                && let Ok(b) = std::fs::read(&p)
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
                && let Some(owners) = v["owners"].as_object()
            {
                out.extend(owners.values().filter_map(|o| o.as_str().map(String::from)));
            }
        }
    }
    out
}
