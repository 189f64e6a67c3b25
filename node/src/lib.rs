//! The node agent (`tinykube worker`, and the master's own node): registration,
//! heartbeat and the Node's status (`registration`), the node's side of the overlay
//! (`network`), and the start and stop of the node's parts (`agent`): the kubelet, the
//! service proxy, and the overlay's peers. Hollow nodes (`hollow`), kubemark's
//! API-only kubelets for tests and benchmarks, share the registration code.

pub mod agent;
pub mod announce;
pub mod hollow;
pub mod network;
pub mod registration;

pub use agent::{AgentConfig, AgentError, run, run_in_master};
