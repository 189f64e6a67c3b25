//! The node agent. For now: hollow nodes, kubelets that only speak the API (what
//! Kubernetes calls kubemark), for tests, benchmarks and demos of the control plane.

pub mod hollow;
