//! The node agent: pods through containerd with a shared pause sandbox per pod, the
//! node's registration and heartbeat, its side of the overlay; and hollow nodes, kubelets that only speak the
//! API (what Kubernetes calls kubemark), for tests and benchmarks.

pub mod hollow;
pub mod network;
pub mod node;
pub mod pods;
pub mod runtime;
pub mod server;

/// An error and its sources on one line, as the CLI and status messages show them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
pub mod agent;
pub mod pause;
pub mod toolbox;
