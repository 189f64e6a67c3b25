//! The node agent: pods through containerd with a shared pause sandbox per pod, the
//! node's registration and heartbeat, its side of the overlay; and hollow nodes, kubelets that only speak the
//! API (what Kubernetes calls kubemark), for tests and benchmarks.

pub mod hollow;
pub mod network;
pub mod node;
pub mod pods;
pub mod runtime;
pub mod server;

pub use tinykube_api::error_chain;
pub mod agent;
pub mod pause;
pub mod toolbox;
