//! A running lab changed the way the end-to-end tests need: a node crashed and started
//! again, containerd restarted, a worker added or taken out for good.

use super::*;

impl Lab {
    /// Kills node `name`'s process with SIGKILL (a crash), leaving its pods running.
    pub async fn kill_node(&mut self, name: &str) -> Result<(), LabError> {
        let n = self
            .state
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::Failed(format!("no node {name}")))?;
        if let Some(pid) = n.pid.take()
            && alive(pid)
            && cmdline(pid).contains(&self.dir.display().to_string())
        {
            // SAFETY: kill(2) on the node process this lab started, checked by cmdline.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            while alive(pid) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        write_state(&self.dir, &self.state)
    }

    /// Stops the containerd the lab started and starts it again (its pods' shims keep
    /// running, as they do when a node's containerd restarts).
    pub async fn restart_containerd(&mut self) -> Result<(), LabError> {
        let pid = self.state.containerd_pid.ok_or_else(|| {
            LabError::Failed("this lab uses a containerd it did not start".into())
        })?;
        stop_process(
            pid,
            &self.dir.display().to_string(),
            Duration::from_secs(10),
        )
        .await;
        let dir = self.dir.join("containerd");
        let config = dir.join("config.toml");
        let pid = spawn_containerd(&config, &dir.join("containerd.restarted.log"))?;
        self.state.containerd_pid = Some(pid);
        write_state(&self.dir, &self.state)?;
        Runtime::connect(
            &self.state.containerd_socket,
            "default",
            Duration::from_secs(20),
        )
        .await?;
        Ok(())
    }

    /// Starts node `name`'s process again, as `up` started it.
    pub fn start_node(&mut self, name: &str) -> Result<(), LabError> {
        let n = self
            .state
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::Failed(format!("no node {name}")))?;
        let ns = NetNs::open(&n.netns)?;
        let env: Vec<(&str, &str)> = n
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let log = n.log.with_extension("restarted.log");
        n.pid = Some(spawn_in(Some(&ns), &self.binary, &n.args, &env, &log)?);
        write_state(&self.dir, &self.state)
    }

    /// Adds a worker to the running lab (the next name and address, the same flags as
    /// the first worker) and starts it; returns its name. The caller waits for Ready.
    pub async fn add_worker(&mut self) -> Result<String, LabError> {
        let template = self
            .state
            .nodes
            .get(1)
            .cloned()
            .ok_or_else(|| LabError::Failed("the lab has no worker to copy".into()))?;
        let subnet: Ipv4Cidr = self
            .state
            .subnet
            .parse()
            .map_err(|e: tinykube_net::cidr::CidrError| LabError::Failed(e.to_string()))?;
        let i = self.state.nodes.len();
        let prefix = node_prefix(&self.state.name);
        let mut n = lab_node(
            &self.state.name,
            &self.dir,
            subnet,
            i,
            &format!("{prefix}worker-{i}"),
        );
        if i >= 245 || self.state.nodes.iter().any(|x| x.name == n.name) {
            return Err(LabError::Failed(format!("cannot add node {}", n.name)));
        }
        // The first worker's flags, with this node's name, address and data dir.
        let mut args = template.args.clone();
        for (flag, value) in [
            ("--node-name", n.name.clone()),
            ("--node-ip", n.ip.to_string()),
            ("--data-dir", n.data_dir.display().to_string()),
        ] {
            if let Some(k) = args.iter().position(|a| a == flag)
                && k + 1 < args.len()
            {
                args[k + 1] = value;
            }
        }
        n.args = args;
        n.env = template.env.clone();
        let h = link::connect()?;
        let bridge = link::link_index(&h, &self.state.bridge)
            .await?
            .ok_or_else(|| LabError::Failed(format!("bridge {} is gone", self.state.bridge)))?;
        let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let ns = NetNs::create(&n.netns)?;
        self.state.nodes.push(n.clone());
        write_state(&self.dir, &self.state)?;
        link::plug(&h, bridge, &ns, &n.veth, n.ip, 24, gateway, None).await?;
        std::fs::create_dir_all(&n.data_dir)
            .map_err(io(format!("cannot create {}", n.data_dir.display())))?;
        let env: Vec<(&str, &str)> = n
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let pid = spawn_in(Some(&ns), &self.binary, &n.args, &env, &n.log)?;
        self.state.nodes.last_mut().expect("just pushed").pid = Some(pid);
        write_state(&self.dir, &self.state)?;
        Ok(n.name)
    }

    /// Takes worker `name` out of the lab for good, as an admin drains and deletes a
    /// machine: stops its agent, deletes its Node, removes its pods' containers, its
    /// namespaces, veth and data.
    pub async fn remove_worker(&mut self, name: &str) -> Result<(), LabError> {
        let k = self
            .state
            .nodes
            .iter()
            .position(|n| n.name == name)
            .filter(|k| *k > 0)
            .ok_or_else(|| LabError::Failed(format!("no worker {name}")))?;
        let n = self.state.nodes[k].clone();
        if let Some(pid) = n.pid {
            stop_process(
                pid,
                &self.dir.display().to_string(),
                Duration::from_secs(10),
            )
            .await;
        }
        let nodes: Api<Node> = Api::all(self.client().await?);
        match nodes.delete(name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(LabError::Failed(format!("cannot delete node {name}: {e}"))),
        }
        let rt = Runtime::connect(
            &self.state.containerd_socket,
            &format!("tinykube-{name}"),
            Duration::from_secs(5),
        )
        .await?;
        if rt.namespace_exists().await? {
            rt.purge().await?;
        }
        for uid in ipam_owners(&n.data_dir) {
            if let Ok(ns) = NetNs::open(&format!("tk-{uid}")) {
                let _ = ns.delete();
            }
        }
        if let Ok(ns) = NetNs::open(&n.netns) {
            ns.delete()?;
        }
        link::delete_link(&link::connect()?, &n.veth).await?;
        let _ = std::fs::remove_dir_all(&n.data_dir);
        self.state.nodes.remove(k);
        write_state(&self.dir, &self.state)
    }
}
